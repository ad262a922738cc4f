// Device STREAM kernel of fusedoptim.bench: the GPU roofline (contender "gpu_stream").
//
// A template, read at run time by fusedoptim.bench.gpu.gpu_stream_source(k, dtype), which
// drops these leading comment lines, substitutes
//   $NAME  the kernel name, fo_bench_stream_k<k>_<f32|f64>
//   $T     the element type (float, double)
//   $VT    its 16-byte vector type (float4, double2: CuPy's allocator aligns to 256 bytes)
//   $W     the components per vector (4, 2)
// and writes each line ending in "// per buffer" once for every written buffer b1 ..
// b<k-1> ($B: the buffer's name, $VADD: "v.x += m * gv.x;" for every component), without
// the marker.  The gradient g is only read, the k - 1 other buffers (parameter, state) are
// read and written: b[i] += m * g[i], launched with m = 0, so a call moves
// itemsize * (2k - 1) * n bytes, the traffic of an optimizer step with k - 2 state buffers.
// A grid-stride loop over 16-byte vectors, then the tail element by element.
extern "C" __global__ void $NAME(
    const $T* __restrict__ g,
    $T* __restrict__ $B,  // per buffer
    const $T m, const long long n) {
  const long long stride = (long long)gridDim.x * blockDim.x;
  const long long t0 = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  const long long nv = n / $W;
  for (long long i = t0; i < nv; i += stride) {
    const $VT gv = reinterpret_cast<const $VT*>(g)[i];
    { $VT v = reinterpret_cast<$VT*>($B)[i]; $VADD reinterpret_cast<$VT*>($B)[i] = v; }  // per buffer
  }
  for (long long i = nv * $W + t0; i < n; i += stride) {
    const $T gi = g[i];
    $B[i] += m * gi;  // per buffer
  }
}
