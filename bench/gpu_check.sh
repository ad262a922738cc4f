#!/usr/bin/env bash
# The prepared GPU check: build fusedoptim on a CUDA machine with no network (its own python3
# with numpy, cython, scikit-build-core, cupy and torch already installed), run the CUDA tests
# and the bench's GPU columns.  Logs go to $OUT (or ./gpu-check-out).
#
#   bash bench/gpu_check.sh [pytest args...]      # default: the tests that need CuPy or a device
#
# Budget: ~1 min build (16 cores, one SIMD clone), a few minutes of tests, ~1 min of bench.
set -u -o pipefail
OUT=${OUT:-$PWD/gpu-check-out}
mkdir -p "$OUT"
PY=${PY:-python3}
export PYTHONUNBUFFERED=1 CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}
{
  date -u; nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,clocks.max.mem --format=csv
  $PY -c 'import sys, numpy, cupy; print(sys.version.split()[0], "numpy", numpy.__version__, "cupy", cupy.__version__, "cuda", cupy.cuda.runtime.runtimeGetVersion())'
  which nvcc && nvcc --version | tail -1
} 2>&1 | tee "$OUT/env.txt"

t0=$(date +%s)
$PY -m pip install -q --no-build-isolation --no-deps --no-index --no-cache-dir \
    -Ccmake.define.FO_MULTIVERSION=OFF . > "$OUT/build.log" 2>&1
rc=$?; echo "build rc=$rc in $(( $(date +%s) - t0 )) s" | tee -a "$OUT/env.txt"
if [ $rc -ne 0 ]; then tail -60 "$OUT/build.log"; exit $rc; fi

t0=$(date +%s)
tests=("$@"); [ ${#tests[@]} -eq 0 ] && tests=(tests/test_cuda.py tests/test_bench_report.py tests/test_examples.py -k "test_gpu_ or nvrtc or real_cupy or cuda_bf16 or cuda_int8 or cuda_lowp")
timeout ${TEST_TIMEOUT:-400} $PY -m pytest -q -p no:cacheprovider -rfEs --tb=short --maxfail=30 \
    "${tests[@]}" 2>&1 | tee "$OUT/pytest.log" | grep -vE '^(tests/|\.)' | tail -80
echo "tests rc=${PIPESTATUS[0]} in $(( $(date +%s) - t0 )) s" | tee -a "$OUT/env.txt"
grep -E "passed|failed" "$OUT/pytest.log" | tail -2

t0=$(date +%s)
timeout ${BENCH_TIMEOUT:-100} $PY -m fusedoptim.bench --optimizers ${BENCH_OPTIMIZERS:-adam,sgd-momentum,lion} \
    --workloads ${BENCH_WORKLOADS:-resnet18,1x16M,100x10K} --contenders fusedoptim,gpu,gpu_stream,torch_cuda_fused \
    --repeat 5 --roofline-sizes none --gpu-roofline-sizes 16M,64M 2>&1 | tee "$OUT/bench.txt" | tail -40
echo "bench rc=${PIPESTATUS[0]} in $(( $(date +%s) - t0 )) s" | tee -a "$OUT/env.txt"

timeout 60 $PY bench/gpu_step_profile.py 2>&1 | tee "$OUT/profile.txt" | head -30
