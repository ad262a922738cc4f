"""The CUDA backend: kernels.cu compiles, runs the very rules the CPU runs, and (on a GPU)
matches the CPU path.

What runs where:

- nvcc on PATH (this machine, CI): kernels.cu compiles to PTX for sm_80 and sm_90, alone
  (``-I csrc/fusedoptim``) and as the single ``code`` string that _cuda.py hands to
  NVRTC; the PTX of every update kernel inlines exactly the rule instantiations
  (``fo_<algo>_rule<T, flags...>``, same mangled names) that the CPU segment of the same
  algorithm and dtype inlines, and no floating-point instruction of an update kernel
  comes from anywhere but rules.h except the two gradient-scale multiplies (the clip
  coefficients); the same audit on the CPU object code.
- a C++ compiler: kernels.cu is compiled for the host with the CUDA qualifiers defined
  away (the threads of a block = fibers on one thread, ``__syncthreads`` = a switch back
  to the block's scheduler, the thread order reversed at every barrier) and driven
  through _cuda.py's own table builder; every optimizer case must then reproduce the CPU
  backend bit for bit (same compiler rounding, no FMA contraction on either side), for
  any grid and block size, with misaligned buffers, EMA, per-tensor and global clipping,
  and the skip flag; with state_dtype="bfloat16" (the _lp4 kernels: uint16 bits of
  bfloat16 state) and state_dtype="int8" (the _q8 kernels: uint8 codes and a float32
  absmax per block, a block per CUDA block with its barrier-synchronised absmax) every
  optimizer, both roundings, bit for bit too.  This checks the chunking, the binary search, the 16-byte pack path,
  the flag dispatch and the reductions without a GPU.
- always: _cuda.py itself (checks, pointer tables, upload cache, launch arguments checked
  against the C signatures in kernels.cu) on a fake CuPy whose launches run the host
  emulation, bit-identical to the CPU backend.
- CuPy and a CUDA device: the real kernels against the CPU path, 200 steps (bfloat16
  and int8 state: 20 steps, bits), and the Optimizer on cupy arrays; without them these tests
  skip with the reason.  CuPy alone
  (no device): NVRTC compiles the code string.
"""
from __future__ import annotations

import atexit
import ctypes
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import pytest

import fusedoptim
from fusedoptim import _cuda, _kernels
from fusedoptim._backends import CPU
from fusedoptim.pipeline import keras_clip_coef
from cases import (RICH_CASES, SHAPES, build, case_params, draw_hparams, grad_stream, make_params,
                   seed_for)

NVCC = shutil.which("nvcc")
CXX = shutil.which("g++") or shutil.which("c++")
OBJDUMP = shutil.which("objdump")
SRC = _cuda._source_dir()
KERNELS_CU = os.path.join(SRC, "kernels.cu")
K = _cuda._consts()
ALGOS = sorted(_cuda._ALGOS.values())
ADAM = _kernels.ALGORITHMS["adam"].id

needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc is not on PATH")
needs_cxx = pytest.mark.skipif(CXX is None, reason="no C++ compiler (g++/c++) on PATH")
needs_objdump = pytest.mark.skipif(OBJDUMP is None, reason="objdump is not on PATH")

# the options _cuda.py gives NVRTC (CuPy adds -ftz=true and the architecture)
NVCC_OPTS = ["--std=c++17", "-fmad=false"]
assert tuple(o.replace("--fmad", "-fmad") for o in _cuda.NVRTC_OPTIONS) == tuple(NVCC_OPTS)


def _run(cmd, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    assert r.returncode == 0, f"{' '.join(cmd)}\n{r.stdout}\n{r.stderr}"
    return r


# ============================================================== PTX and object analysis
_PTX_HEADER = re.compile(r"^(?:\.visible\s+|\.weak\s+|\.extern\s+)*\.(entry|func)\s+(?:\([^)]*\)\s*)?([A-Za-z_$][\w$]*)")
_PTX_FARITH = re.compile(r"^\s*(add|sub|mul|div|sqrt|fma|neg|abs|min|max|rcp|mad)(\.[a-z0-9]+)*\.(f32|f64)\b")
_RULE = re.compile(r"^_Z\d+fo_\w+_rule")


def _ptx_functions(ptx: str) -> dict:
    """name -> body text of every defined .entry / .func."""
    funcs, lines, i = {}, ptx.splitlines(), 0
    while i < len(lines):
        m = _PTX_HEADER.match(lines[i])
        if not m:
            i += 1
            continue
        j = i
        while j < len(lines) and lines[j].strip() != "{" and not lines[j].rstrip().endswith(";"):
            j += 1
        if j >= len(lines) or lines[j].strip() != "{":
            i = j + 1  # a declaration
            continue
        k = j
        while lines[k] != "}":
            k += 1
        funcs[m.group(2)] = "\n".join(lines[j:k])
        i = k + 1
    return funcs


def _ptx_files(ptx: str) -> dict:
    return {int(a): os.path.basename(b) for a, b in re.findall(r'^\s*\.file\s+(\d+)\s+"([^"]+)"', ptx, flags=re.M)}


def _ptx_inlined_names(ptx: str) -> dict:
    """entry -> names of the functions inlined into it (-lineinfo: .loc ... function_name)."""
    strings = {}
    for m in re.finditer(r"(\$L__info_string\d+):\s*\n((?:\s*\.b8 [0-9,]+\s*\n)+)", ptx):
        nums = [int(x) for x in re.findall(r"\d+", m.group(2).replace(".b8", ""))]
        strings[m.group(1)] = bytes(nums).rstrip(b"\0").decode()
    out = {}
    for name, body in _ptx_functions(ptx).items():
        refs = re.findall(r"function_name\s+(\$L__info_string\d+)", body)
        out[name] = {strings[r] for r in refs}
    return out


def _ptx_foreign_arith(ptx: str, entry: str, funcs: dict, files: dict) -> dict:
    """Floating-point arithmetic reachable from ``entry`` whose source line is not in
    rules.h: {(function, file, line): count}.  Library functions without line info (the
    CUDA math library's sqrtf/fabs, called by rules.h's fo_sqrt/fo_abs) are reported
    with file None."""
    calls = {n: set(re.findall(r"call(?:\.uni)?\s*(?:\(\s*[\w$]+\s*\)\s*,\s*)?\s*([A-Za-z_$][\w$]*)\s*,", b))
             for n, b in funcs.items()}
    seen, todo = set(), [entry]
    while todo:
        f = todo.pop()
        if f not in seen and f in funcs:
            seen.add(f)
            todo.extend(calls[f])
    out = {}
    for f in seen:
        loc = (None, None)
        for line in funcs[f].splitlines():
            lm = re.match(r"\s*\.loc\s+(\d+)\s+(\d+)", line)
            if lm:
                loc = (files[int(lm.group(1))], int(lm.group(2)))
            elif _PTX_FARITH.match(line) and loc[0] != "rules.h":
                key = (f, loc[0], loc[1])
                out[key] = out.get(key, 0) + 1
    return out


_OBJ_TOP = re.compile(r"^[0-9a-f]+ <([^>]+)>:$")
_OBJ_MARK = re.compile(r"^([A-Za-z_][\w.$]*)\(\):$")
_OBJ_LINE = re.compile(r"^(\S+):(\d+)(?: \(discriminator \d+\))?$")
_OBJ_INS = re.compile(r"^\s+[0-9a-f]+:\s+(\S+)")
_X86_FARITH = re.compile(r"^v?(add|sub|mul|div|sqrt|min|max)(ss|sd|ps|pd)$|^vf(n)?m(add|sub)\w*$")


def _objdump_functions(text: str) -> dict:
    """top-level function -> (inlined function names, [(file, mnemonic) of float arithmetic])."""
    out, cur, file = {}, None, None
    for line in text.splitlines():
        m = _OBJ_TOP.match(line)
        if m:
            cur = (set(), [])
            out[m.group(1)] = cur
            file = None
            continue
        if cur is None:
            continue
        m = _OBJ_MARK.match(line)
        if m:
            cur[0].add(m.group(1))
            continue
        m = _OBJ_LINE.match(line)
        if m:
            file = os.path.basename(m.group(1))
            continue
        m = _OBJ_INS.match(line)
        if m and _X86_FARITH.match(m.group(1)):
            cur[1].append((file, m.group(1)))
    return out


# ================================================================ fixtures (compiles)
# The module's compiles (kernels.cu to PTX three ways, the host emulation, the CPU segments
# for objdump) are minutes of CPU, each on one core.  They run as jobs on a pool of two
# threads in a temporary directory; conftest.py starts the ones the selected tests need as
# soon as collection ends (start_builds) and runs this module last, so in a full run they
# overlap the other modules' tests.  A test waits for the job it needs (started on demand
# if it was not).
_BUILD_ROOT: list = []
_JOBS: dict = {}
_POOL: list = []


def build_root() -> str:
    if not _BUILD_ROOT:
        _BUILD_ROOT.append(tempfile.mkdtemp(prefix="fo_cuda_"))
        atexit.register(shutil.rmtree, _BUILD_ROOT[0], True)
    return _BUILD_ROOT[0]


def _job(key, fn) -> Future:
    if key not in _JOBS:
        if not _POOL:
            _POOL.append(ThreadPoolExecutor(max_workers=2, thread_name_prefix="fo-cuda-build"))
        _JOBS[key] = _POOL[0].submit(fn)
    return _JOBS[key]


@pytest.fixture(scope="session")
def build_dir():
    return build_root()


def _nvrtc_code_file() -> str:
    """The code string _cuda.py gives NVRTC, in a file (written once)."""
    src = os.path.join(build_root(), "fo_nvrtc_code.cu")
    if not os.path.exists(src):
        with open(src + ".tmp", "w") as f:
            f.write(_cuda.kernel_source())
        os.replace(src + ".tmp", src)
    return src


def _ptx_job(arch: str, extra=(), nvrtc=False) -> Future:
    """nvcc -ptx of kernels.cu (with the include path), or with nvrtc=True of the NVRTC code
    string (no include path at all), with NVRTC's options and `extra`."""
    key = ("ptx", arch, tuple(extra), nvrtc)

    def run():
        out = os.path.join(build_root(), "k_{}_{}_{}.ptx".format(arch, "nvrtc" if nvrtc else "cu",
                                                                  "".join(extra).replace("-", "")))
        cmd = [NVCC, "-ptx", f"-arch={arch}", *NVCC_OPTS, *extra]
        cmd += [_nvrtc_code_file()] if nvrtc else ["-I", SRC, KERNELS_CU]
        _run(cmd + ["-o", out])
        with open(out) as f:
            return f.read()
    return _job(key, run)


def _nvcc_ptx(arch: str, extra=(), nvrtc=False) -> str:
    return _ptx_job(arch, extra, nvrtc).result()


def _objdump_job() -> Future:
    """objdump -dl of the CPU segments (cpu.h) at -O0 -g: inlined functions keep their names
    and every instruction its source line."""
    def run():
        src = os.path.join(build_root(), "cpu_segments.cpp")
        with open(src, "w") as f:
            f.write('#include "cpu.h"\nvoid *fo_keep(int a, int d) { return (void *)fo_cpu_seg(a, d); }\n')
        obj = os.path.join(build_root(), "cpu_segments.o")
        _run([CXX, "-std=c++17", "-O0", "-g", "-DFO_NO_MULTIVERSION", "-w", "-I", SRC, "-c", src, "-o", obj])
        return _run([OBJDUMP, "-d", "-l", "--no-show-raw-insn", obj]).stdout
    return _job("objdump", run)


def _emu_job() -> Future:
    """kernels.cu compiled for the host with the CPU build's floating-point flags (EMU_CPP)."""
    def run():
        src = os.path.join(build_root(), "emu.cpp")
        with open(src, "w") as f:
            f.write(EMU_CPP)
        lib = os.path.join(build_root(), "fo_emu.so")
        _run([CXX, "-std=c++17", "-O2", "-fno-math-errno", "-fno-trapping-math", "-ffp-contract=off",
              "-Wno-unknown-pragmas", "-fPIC", "-shared", "-I", SRC, src, "-o", lib])
        return lib
    return _job("emu", run)


def start_builds(items) -> None:
    """Start the compiles that the selected tests of this module (``items``) will need."""
    names = {it.originalname for it in items}
    fixtures = set().union(*(it.fixturenames for it in items))
    arches = {it.callspec.params.get("arch") for it in items if it.originalname == "test_kernels_compile_to_ptx"}
    if NVCC:
        if "sm_80" in arches or "test_gpu_kernels_and_cpu_segments_inline_the_same_rules" in names:
            _ptx_job("sm_80", ["-lineinfo"])
        if "sm_90" in arches or "test_nvrtc_code_string_is_self_contained" in names:
            _ptx_job("sm_90", ["-lineinfo"], nvrtc=True)
        if "test_gpu_update_kernels_have_no_arithmetic_of_their_own" in names:
            _ptx_job("sm_80", ["-G"])
    if CXX and OBJDUMP and "cpu_objdump" in fixtures:
        _objdump_job()
    if CXX and "emu" in fixtures:
        _emu_job()


@pytest.fixture(scope="session")
def cpu_objdump():
    if CXX is None or OBJDUMP is None:
        pytest.skip("needs a C++ compiler and objdump")
    return _objdump_functions(_objdump_job().result())


def _cpu_segment(objfuncs: dict, algo: str, suffix: str):
    for name, v in objfuncs.items():
        if re.fullmatch(rf"_ZL\d+fo_{algo}_{suffix}PKdjPPcl", name):
            return v
    raise AssertionError(f"CPU segment fo_{algo}_{suffix} not found in the object code")


# ===================================================================== (a) compile
@needs_nvcc
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_kernels_compile_to_ptx(arch):
    """Every kernel is there; the 16-byte pack path is compiled (v4.f32 / v2.f64 loads);
    --fmad=false leaves no fused multiply-add, so products round like the CPU build's
    -ffp-contract=off.  sm_80: kernels.cu with the include path; sm_90 (an H100/H200): the
    code string NVRTC compiles at run time, as it is."""
    ptx = _nvcc_ptx(arch, ["-lineinfo"], nvrtc=arch == "sm_90")
    entries = set(re.findall(r"^\.visible \.entry (\w+)\(", ptx, flags=re.M))
    want = {f"fo_{a}_kernel_{s}" for a in ALGOS for s in ("f32", "f64", "lp4", "q8")}
    want |= {"fo_sumsq_kernel_f32", "fo_sumsq_kernel_f64", "fo_grad_control_kernel", "fo_bf16_round_kernel",
             "fo_q8_quantize_kernel"}
    assert want <= entries, sorted(want - entries)
    funcs = _ptx_functions(ptx)
    for a in ALGOS:
        assert "ld.global.v4.f32" in funcs[f"fo_{a}_kernel_f32"], a
        # generic ld.v2.f64 where a call the compiler does not inline (libdevice's double pow,
        # __internal_accurate_pow, in Ftrl) hides the address space: still a 16-byte load
        assert re.search(r"ld(\.global)?\.v2\.f64", funcs[f"fo_{a}_kernel_f64"]), a
    # the CUDA math library's pow (Ftrl's n^-p for p != -1/2) computes with fma internally:
    # Ftrl's GPU results match its CPU ones within tolerance, not bit for bit
    with_fma = {n for n, body in funcs.items() if "fma.rn" in body}
    assert with_fma <= {"fo_ftrl_kernel_f32", "fo_ftrl_kernel_f64", "fo_ftrl_kernel_lp4", "fo_ftrl_kernel_q8",
                        "__internal_accurate_pow"}, sorted(with_fma)
    # the 8-bit kernels synchronise their blocks (the absmax tree) and read the code tables
    for a in ALGOS:
        assert "bar.sync" in funcs[f"fo_{a}_kernel_q8"], a


@needs_nvcc
def test_nvrtc_code_string_is_self_contained():
    """The ``code`` given to NVRTC (rules.h text + kernels.cu text) compiles with no include
    path at all: the guarded #include of rules.h is skipped, nothing else is included."""
    code = _cuda.kernel_source()
    assert code.count("#define FUSEDOPTIM_RULES_H") == 1 and code.count("#define FUSEDOPTIM_LOWP_H") == 1
    assert code.count("#define FUSEDOPTIM_Q8_H") == 1 and "#include \"cpu.h\"" in code  # q8.h's host branch
    with open(_nvrtc_code_file()) as f:
        assert f.read() == code
    ptx = _nvcc_ptx("sm_90", ["-lineinfo"], nvrtc=True)
    assert "fo_adam_kernel_f32" in ptx and "fo_bf16_round_kernel" in ptx and "fo_adam_kernel_q8" in ptx


@needs_nvcc
@needs_cxx
@needs_objdump
def test_gpu_kernels_and_cpu_segments_inline_the_same_rules(cpu_objdump):
    """For every algorithm and dtype, the rule instantiations inlined into the CUDA kernel
    and into the CPU segment are the same templates with the same flags and signature
    from the one rules.h, EMA rule included.  The CPU loops also instantiate compile-time
    MODEs of the same rules (FO_PLAIN, a fixed lerp form, rules.h), the last template
    argument; the GPU uses the run-time MODE 0.  That every MODE computes the same bits is
    tested by the host emulation of kernels.cu against the CPU backend below."""
    def template(name):   # the rule with its MODE argument (last template int) erased
        return re.sub(r"Li\d+EEv", "LiMODEEEv", name)

    inl = _ptx_inlined_names(_nvcc_ptx("sm_80", ["-lineinfo"]))
    for algo in ALGOS:
        for suffix in ("f32", "f64"):
            gpu = {n for n in inl[f"fo_{algo}_kernel_{suffix}"] if _RULE.match(n)}
            cpu = {n for n in _cpu_segment(cpu_objdump, algo, suffix)[0] if _RULE.match(n)}
            assert gpu, f"no rule found in fo_{algo}_kernel_{suffix}"
            assert any(f"fo_{algo}_rule" in n for n in gpu)
            assert {template(n) for n in gpu} == {template(n) for n in cpu}, \
                f"{algo} {suffix}: GPU {sorted(gpu)} != CPU {sorted(cpu)}"


def _kernels_cu_line(text: str) -> int:
    lines = open(KERNELS_CU).read().splitlines()
    hits = [i + 1 for i, l in enumerate(lines) if text in l]
    assert len(hits) == 1, (text, hits)
    return hits[0]


@needs_nvcc
def test_gpu_update_kernels_have_no_arithmetic_of_their_own():
    """Device-debug PTX (-G keeps every instruction on its source line): each floating-point
    instruction of an update kernel comes from rules.h, except the gradient-scale
    multiplies of the named gscale by the device clip coefficients (ctrl[2], tscale[t]) and the CUDA math
    library's sqrt/fabs that rules.h's fo_sqrt/fo_abs call."""
    ptx = _nvcc_ptx("sm_80", ["-G"])
    funcs, files = _ptx_functions(ptx), _ptx_files(ptx)
    allowed = {_kernels_cu_line("cs.gscale = cs.gscale * ctrl[2];"),
               _kernels_cu_line("if (tscale) ct.gscale = cs.gscale * tscale[t];")}
    for algo in ALGOS:
        # lp4: lowp.h's conversions are integer work; q8: the codes' arithmetic is q8.h's
        # per-element functions, the CPU loop's own (fo_q8_value, fo_q8_inv, fo_q8_*_code)
        for suffix in ("f32", "f64", "lp4", "q8"):
            entry = f"fo_{algo}_kernel_{suffix}"
            foreign = _ptx_foreign_arith(ptx, entry, funcs, files)
            for (fn, file, line), n in foreign.items():
                if suffix == "q8" and file == "q8.h":
                    continue
                if file is None:
                    assert fn in ("sqrtf", "sqrt", "fabsf", "fabs") or \
                        (algo == "ftrl" and fn in ("powf", "pow", "__internal_accurate_pow")) or \
                        (algo == "yogi" and fn in ("copysignf", "copysign")), (entry, fn)
                else:
                    assert file == "kernels.cu" and line in allowed, (entry, fn, file, line, n)


@needs_cxx
@needs_objdump
def test_cpu_segments_have_no_arithmetic_of_their_own(cpu_objdump):
    """The same audit on the CPU object code: every SSE/AVX arithmetic instruction of a
    segment comes from rules.h (the roofline loop fo_stream, which is not an optimizer,
    shows the audit does see cpu.h's own arithmetic)."""
    for algo in ALGOS:
        for suffix in ("f32", "f64"):
            names, arith = _cpu_segment(cpu_objdump, algo, suffix)
            assert arith, (algo, suffix)
            foreign = [a for a in arith if a[0] != "rules.h"]
            assert not foreign, (algo, suffix, foreign[:5])
    _, stream_arith = _cpu_segment(cpu_objdump, "stream", "f32")
    assert any(f == "cpu.h" for f, _ in stream_arith)


@needs_cxx
def test_rules_header_is_valid_host_cxx(build_dir):
    """rules.h alone, without __CUDACC__, compiles warning-free as C++14 and C++17 and
    every algorithm of FO_ALGOS runs through its descriptor for float and double, under
    every flag combination (the GPU build is checked by the nvcc tests)."""
    src = os.path.join(build_dir, "rules_host.cpp")
    with open(src, "w") as f:
        f.write(textwrap.dedent("""\
            #include "rules.h"
            #include <stdio.h>
            #include <string.h>
            template <class A, typename T, unsigned F> static int run_flags(T &p) {
                double raw[FO_MAXSCALARS];
                for (int k = 0; k < FO_MAXSCALARS; k++) raw[k] = 0.5 / (k + 1);
                fo_common_scalars cs;
                memcpy(&cs, raw, sizeof cs);
                cs.clip_value = 1e300;
                typename A::scalars as;
                memcpy(&as, raw + FO_NCOMMON, sizeof as);
                const fo_common<T> c = fo_common<T>::load(cs);
                T s[A::MAXSTATE + 1] = {};
                T e = T(1);
                A::template rule<T, F, 0>(p, T(0.5), s, c, A::template hp<T>::load(as));
                fo_ema_rule<T>(e, p, c);
                if constexpr (F + 1 < (1u << A::NFLAGS)) return run_flags<A, T, F + 1>(p) + (e == e ? 0 : 1);
                return e == e ? 0 : 1;
            }
            template <typename T> static int run() {
                T p = T(1);
                int bad = 0;
            #define FO_RUN(a, P) bad += run_flags<fo_##a, T, 0>(p);
                FO_ALGOS(FO_RUN)
                printf("%.17g\\n", (double)p);
                return bad + (p == p ? 0 : 1);
            }
            int main() { return run<float>() + run<double>(); }
            """))
    for std in ("c++17",):
        exe = os.path.join(build_dir, f"rules_host_{std}")
        _run([CXX, f"-std={std}", "-Wall", "-Wextra", "-Werror", "-pedantic", "-I", SRC, src, "-o", exe])
        out = _run([exe]).stdout.split()
        assert len(out) == 2 and all(math.isfinite(float(x)) for x in out)
    # the header itself (no if constexpr in it) is C++14
    hdr = os.path.join(build_dir, "rules_only.cpp")
    with open(hdr, "w") as f:
        f.write('#include "rules.h"\nint main() { return fo_adam::mask(1) == 7u ? 0 : 1; }\n')
    exe = os.path.join(build_dir, "rules_only")
    _run([CXX, "-std=c++14", "-Wall", "-Wextra", "-Werror", "-pedantic", "-I", SRC, hdr, "-o", exe])
    _run([exe])


# ====================================================== host emulation of kernels.cu
EMU_CPP = r"""
// kernels.cu on the host: CUDA qualifiers defined away.  The kernels with a barrier run each
// CUDA block as cooperative fibers (ucontext) on the calling thread: __syncthreads() hands
// control back to the block's scheduler, which resumes every fiber once all of them have
// arrived, alternating forward and reverse thread order from one barrier phase to the next,
// so a missing barrier shows as a different result.  The others run thread after thread.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <ucontext.h>
#include <vector>
#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static
struct fo_emu_dim { unsigned x, y, z; };
static fo_emu_dim threadIdx, blockIdx;   // the running fiber's: set before every switch to it
static fo_emu_dim blockDim, gridDim;
static ucontext_t fo_emu_sched, *fo_emu_cur = nullptr;
static inline void __syncthreads() { swapcontext(fo_emu_cur, &fo_emu_sched); }
#include "kernels.cu"

template <class F> static void emu_serial(int grid, int block, F f) {
    gridDim = {(unsigned)grid, 1, 1};
    blockDim = {(unsigned)block, 1, 1};
    for (int b = 0; b < grid; b++)
        for (int t = 0; t < block; t++) {
            blockIdx = {(unsigned)b, 0, 0};
            threadIdx = {(unsigned)t, 0, 0};
            f();
        }
}

static const size_t FO_EMU_STACK = 1 << 17;
static std::vector<ucontext_t> fo_emu_ctx;
static std::vector<std::unique_ptr<char[]>> fo_emu_stacks;
static std::vector<char> fo_emu_done;
static const std::function<void()> *fo_emu_body = nullptr;
static void fo_emu_entry(int t) {
    (*fo_emu_body)();
    fo_emu_done[t] = 1;          // returning resumes the scheduler (uc_link)
}

// one block of `block` fibers, phase after phase until every fiber has returned; every
// thread must pass the same barriers (else CUDA's behaviour is undefined: abort)
static void emu_block(int b, int block, const std::function<void()> &f) {
    while ((int)fo_emu_stacks.size() < block) fo_emu_stacks.emplace_back(new char[FO_EMU_STACK]);
    fo_emu_ctx.resize(block);
    fo_emu_done.assign(block, 0);
    fo_emu_body = &f;
    blockIdx = {(unsigned)b, 0, 0};
    for (int t = 0; t < block; t++) {
        ucontext_t &c = fo_emu_ctx[t];
        getcontext(&c);
        c.uc_stack.ss_sp = fo_emu_stacks[t].get();
        c.uc_stack.ss_size = FO_EMU_STACK;
        c.uc_link = &fo_emu_sched;
        makecontext(&c, (void (*)())fo_emu_entry, 1, t);
    }
    for (int phase = 0;; phase++) {
        int done = 0;
        for (int i = 0; i < block; i++) {
            const int t = phase & 1 ? block - 1 - i : i;
            threadIdx = {(unsigned)t, 0, 0};
            fo_emu_cur = &fo_emu_ctx[t];
            swapcontext(&fo_emu_sched, fo_emu_cur);
            done += fo_emu_done[t];
        }
        if (done == block) return;
        if (done) {
            std::fprintf(stderr, "emulation: %d of %d threads of block %d returned while the others wait at a "
                         "__syncthreads() of phase %d\n", done, block, b, phase);
            std::abort();
        }
    }
}

template <class F> static void emu_threads(int grid, int block, F f) {
    gridDim = {(unsigned)grid, 1, 1};
    blockDim = {(unsigned)block, 1, 1};
    const std::function<void()> body = f;
    for (int b = 0; b < grid; b++) emu_block(b, block, body);
}
// the kernels with a barrier and shared memory (static storage here): one block at a time
template <class F> static void emu_pool(int grid, int block, F f) { emu_threads(grid, block, f); }

typedef void (*fo_emu_update)(const fo_hparams, const fo_i64 *, int, int, int, unsigned, const double *,
                              const double *);
typedef void (*fo_emu_update_lp)(const fo_hparams, const fo_i64 *, int, int, int, unsigned, const double *,
                                 const double *, unsigned long long, unsigned long long, int);
#define FO_EMU(a, P) {"fo_" #a "_kernel_f32", fo_##a##_kernel_f32}, {"fo_" #a "_kernel_f64", fo_##a##_kernel_f64},
static const struct { const char *name; fo_emu_update fn; } fo_emu_table[] = {FO_ALGOS(FO_EMU)};
#define FO_EMU_LP(a, P) {"fo_" #a "_kernel_lp4", fo_##a##_kernel_lp4},
static const struct { const char *name; fo_emu_update_lp fn; } fo_emu_lp_table[] = {FO_ALGOS(FO_EMU_LP)};
typedef void (*fo_emu_update_q8)(const fo_hparams, const fo_i64 *, int, int, int, unsigned, const double *,
                                 const double *, unsigned long long, unsigned long long, int, fo_i64,
                                 const fo_q8_table *);
#define FO_EMU_Q8(a, P) {"fo_" #a "_kernel_q8", fo_##a##_kernel_q8},
static const struct { const char *name; fo_emu_update_q8 fn; } fo_emu_q8_table[] = {FO_ALGOS(FO_EMU_Q8)};

extern "C" int emu_update_q8(const char *name, int grid, int block, const double *h, const fo_i64 *meta,
                             int ntens, int nbuf, int ema, unsigned flags, const double *tscale, const double *ctrl,
                             unsigned long long seed, unsigned long long step, int stochastic, fo_i64 qblock,
                             const fo_q8_table *tables) {
    fo_hparams hp;
    std::memcpy(hp.h, h, sizeof hp.h);
    for (const auto &e : fo_emu_q8_table)
        if (!std::strcmp(e.name, name)) {
            emu_pool(grid, block, [&] {
                e.fn(hp, meta, ntens, nbuf, ema, flags, tscale, ctrl, seed, step, stochastic, qblock, tables);
            });
            return 0;
        }
    return -1;
}
extern "C" void emu_q8_quantize(int grid, int block, const float *x, unsigned char *codes, float *amax, fo_i64 n,
                                fo_i64 qblock, int sgn, const fo_q8_table *tables) {
    emu_pool(grid, block, [&] { fo_q8_quantize_kernel(x, codes, amax, n, qblock, sgn, tables); });
}
extern "C" long long emu_q8_table_size(void) { return (long long)sizeof(fo_q8_table); }

extern "C" int emu_update_lp(const char *name, int grid, int block, const double *h, const fo_i64 *meta,
                             int ntens, int nbuf, int ema, unsigned flags, const double *tscale, const double *ctrl,
                             unsigned long long seed, unsigned long long step, int stochastic) {
    fo_hparams hp;
    std::memcpy(hp.h, h, sizeof hp.h);
    for (const auto &e : fo_emu_lp_table)
        if (!std::strcmp(e.name, name)) {
            emu_serial(grid, block, [&] { e.fn(hp, meta, ntens, nbuf, ema, flags, tscale, ctrl, seed, step, stochastic); });
            return 0;
        }
    return -1;
}

extern "C" int emu_update(const char *name, int grid, int block, const double *h, const fo_i64 *meta,
                          int ntens, int nbuf, int ema, unsigned flags, const double *tscale, const double *ctrl) {
    fo_hparams hp;
    std::memcpy(hp.h, h, sizeof hp.h);
    for (const auto &e : fo_emu_table)
        if (!std::strcmp(e.name, name)) {
            emu_serial(grid, block, [&] { e.fn(hp, meta, ntens, nbuf, ema, flags, tscale, ctrl); });
            return 0;
        }
    return -1;
}
extern "C" void emu_sumsq(int f64, int grid, const fo_i64 *rmeta, int ntens, double *partial) {
    emu_threads(grid, FO_RED_THREADS, [&] {
        if (f64) fo_sumsq_kernel_f64(rmeta, ntens, partial);
        else fo_sumsq_kernel_f32(rmeta, ntens, partial);
    });
}
extern "C" void emu_control(const fo_i64 *rmeta, int ntens, const double *partial, double gscale,
                            double gclip, double pclip, int skip, double *ctrl, double *tscale, double *per) {
    emu_threads(1, FO_RED_THREADS, [&] {
        fo_grad_control_kernel(rmeta, ntens, partial, gscale, gclip, pclip, skip, ctrl, tscale, per);
    });
}
extern "C" void emu_bf16_round(int grid, int block, const float *x, unsigned short *out, fo_i64 n,
                               unsigned long long seed, unsigned long long step, unsigned long long tensor,
                               int buffer, int stochastic) {
    emu_serial(grid, block, [&] { fo_bf16_round_kernel(x, out, n, seed, step, tensor, buffer, stochastic); });
}
"""


@pytest.fixture(scope="session")
def emu():
    """kernels.cu compiled for the host with the CPU build's floating-point flags."""
    if CXX is None:
        pytest.skip("no C++ compiler on PATH")
    lib = _emu_job().result()
    so = ctypes.CDLL(lib)
    P = ctypes.c_void_p
    so.emu_update.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.c_int, P, P, ctypes.c_int, ctypes.c_int,
                              ctypes.c_int, ctypes.c_uint, P, P]
    so.emu_update.restype = ctypes.c_int
    so.emu_update_lp.argtypes = so.emu_update.argtypes + [ctypes.c_ulonglong, ctypes.c_ulonglong, ctypes.c_int]
    so.emu_update_lp.restype = ctypes.c_int
    so.emu_sumsq.argtypes = [ctypes.c_int, ctypes.c_int, P, ctypes.c_int, P]
    so.emu_control.argtypes = [P, ctypes.c_int, P, ctypes.c_double, ctypes.c_double, ctypes.c_double,
                               ctypes.c_int, P, P, P]
    so.emu_bf16_round.argtypes = [ctypes.c_int, ctypes.c_int, P, P, ctypes.c_longlong, ctypes.c_ulonglong,
                                  ctypes.c_ulonglong, ctypes.c_ulonglong, ctypes.c_int, ctypes.c_int]
    so.emu_update_q8.argtypes = so.emu_update_lp.argtypes + [ctypes.c_longlong, P]
    so.emu_update_q8.restype = ctypes.c_int
    so.emu_q8_quantize.argtypes = [ctypes.c_int, ctypes.c_int, P, P, P, ctypes.c_longlong, ctypes.c_longlong,
                                   ctypes.c_int, P]
    so.emu_q8_table_size.restype = ctypes.c_longlong
    return so


def _addr(a) -> int:
    return a.__array_interface__["data"][0]


def _optr(a):
    return None if a is None else _addr(a)


def emu_fused_step(emu, algo, common, scalars, flags, params, grads, states, emas=None, tscale=None, ctrl=None,
                   grid=2, block=32, rounding=None):
    """_cuda.fused_step with the launch replaced by the host emulation (same table builder)."""
    if not params:
        return
    name, hps, meta, nbuf, ema, extra = _cuda._prepare(algo, common, scalars, flags, params, grads, states, emas,
                                                       _addr, rounding)
    ts = None if tscale is None else np.ascontiguousarray(tscale, dtype=np.float64)
    args = (name.encode(), grid, block, _addr(hps), _addr(meta), len(params), nbuf, ema, flags, _optr(ts), _optr(ctrl))
    if extra:
        rc = emu.emu_update_lp(*args, *(x.item() for x in extra))
    else:
        rc = emu.emu_update(*args)
    assert rc == 0, name


_Q8_TABLES = []


def q8_tables_host() -> np.ndarray:
    """The host's code tables as the CUDA backend uploads them (``_kernels.q8_table_bytes``),
    in an aligned array."""
    if not _Q8_TABLES:
        raw = np.frombuffer(_kernels.q8_table_bytes(), dtype=np.uint8)
        t = np.empty(raw.size // 4 + 16, dtype=np.float32).view(np.uint8)[:raw.size]
        t[...] = raw
        _Q8_TABLES.append(t)
    return _Q8_TABLES[0]


def emu_fused_step_q8(emu, algo, common, scalars, flags, params, grads, states, absmax, emas=None, tscale=None,
                      ctrl=None, rounding=None, block=256, grid=3, threads=None):
    """_cuda.fused_step_q8 with the launch replaced by the host emulation (same table builder);
    ``threads`` per block (default: the backend's choice, one element per thread)."""
    if not params:
        return
    name, hps, meta, nbuf, ema, nblk, extra = _cuda._prepare_q8(algo, common, scalars, flags, params, grads, states,
                                                                absmax, emas, _addr, rounding, block)
    if nblk == 0:
        return
    threads = _cuda._q8_threads(block) if threads is None else threads
    assert threads <= K.Q8_THREADS and threads * K.Q8_PER >= block
    ts = None if tscale is None else np.ascontiguousarray(tscale, dtype=np.float64)
    rc = emu.emu_update_q8(name.encode(), grid, threads, _addr(hps), _addr(meta), len(params), nbuf, ema, flags,
                           _optr(ts), _optr(ctrl), *(x.item() for x in extra), _addr(q8_tables_host()))
    assert rc == 0, name


def emu_grad_control(emu, grads, grid=3, grad_scale=1.0, global_clipnorm=None, clipnorm=None,
                     skip_nonfinite=False):
    """_cuda.grad_control with the two launches replaced by the host emulation."""
    sizes = [0 if g is None else g.size for g in grads]
    meta = _cuda._reduction_meta(sizes, [0 if g is None else _addr(g) for g in grads], K.RED_CHUNK)
    n = len(grads)
    nblk = int(meta[2 * n + 1]) if n else 0
    partial = np.full(max(1, 2 * nblk), np.nan)
    f64 = any(g is not None and g.dtype == np.float64 for g in grads)
    if nblk:
        emu.emu_sumsq(int(f64), grid, _addr(meta), n, _addr(partial))
    ctrl, tscale, per = np.full(K.CTRL, np.nan), np.full(max(1, n), np.nan), np.full(max(1, n), np.nan)
    emu.emu_control(_addr(meta), n, _addr(partial), grad_scale, global_clipnorm or 0.0, clipnorm or 0.0,
                    int(skip_nonfinite), _addr(ctrl), _addr(tscale) if clipnorm else None, _addr(per))
    return ctrl, (tscale[:n] if clipnorm else None), per[:n]


class _Mirror:
    """A stand-in for the CPU backend's fused_step: every call runs on the CPU backend AND, on
    mirror copies of every array taken just before, on another backend (``run``).  The
    optimizer itself is untouched, so the second backend sees exactly the CPU's
    per-step scalars, state buffers and bucketing."""

    def __init__(self, copy, run, offsets=False, run_q8=None):
        self._copy, self._run, self._offsets, self.run_q8 = copy, run, offsets, run_q8
        self.pairs = {}   # id(array) -> (array, mirror) for params, state and EMA buffers
        self.calls = 0

    def _mirror(self, a):
        hit = self.pairs.get(id(a))
        if hit is None or hit[0] is not a:
            hit = (a, self._copy(a, len(self.pairs) % 3 if self._offsets else 0))
            self.pairs[id(a)] = hit
        return hit[1]

    def fused_step(self, algo, common, scalars, flags, params, grads, states, emas=None, tscale=None, control=None,
                   rounding=None):
        mp = [self._mirror(p) for p in params]
        ms = [[self._mirror(a) for a in col] for col in states]
        me = None if emas is None else [self._mirror(e) for e in emas]
        mg = [self._copy(g, (i % 2) if self._offsets else 0) for i, g in enumerate(grads)]
        _kernels.fused_step(algo, common, scalars, flags, params, grads, states, emas, tscale, None, rounding)
        if rounding is None:
            self._run(algo, common, scalars, flags, mp, mg, ms, me, tscale)
        else:
            self._run(algo, common, scalars, flags, mp, mg, ms, me, tscale, rounding=rounding)
        self.calls += 1

    def fused_step_q8(self, algo, common, scalars, flags, params, grads, states, absmax, emas=None, tscale=None,
                      control=None, rounding=None, block=256):
        """The CPU backend's 8-bit step and ``run_q8`` (given at construction) on the mirrors of
        the parameters, codes (or float32 state), absmax arrays and EMA buffers."""
        mp = [self._mirror(p) for p in params]
        ms = [[self._mirror(a) for a in col] for col in states]
        ma = [[None if a is None else self._mirror(a) for a in col] for col in absmax]
        me = None if emas is None else [self._mirror(e) for e in emas]
        mg = [self._copy(g, (i % 2) if self._offsets else 0) for i, g in enumerate(grads)]
        _kernels.fused_step_q8(algo, common, scalars, flags, params, grads, states, absmax, emas, tscale, None,
                               rounding, block)
        self.run_q8(algo, common, scalars, flags, mp, mg, ms, ma, me, tscale, rounding=rounding, block=block)
        self.calls += 1


def _host_copy(a, shift):
    """A C-contiguous copy whose data starts ``shift`` elements past a 64-byte boundary
    (an odd float32 shift is not 16-byte aligned: the kernel takes the element path).
    A bfloat16 array is copied as the CUDA backend holds it: uint16 bits."""
    if a.dtype.kind == "V" or a.dtype.name == "bfloat16":
        a = a.view(np.uint16)
    base = np.empty(a.size + 64, dtype=a.dtype)
    off = (-(_addr(base) // a.itemsize)) % (64 // a.itemsize) + shift
    out = base[off:off + a.size].reshape(a.shape)
    out[...] = a
    return out


EMU_SHAPES = SHAPES + ((2 * K.CHUNK + 5,), (33,))
EMU_STEPS = 12


def _emu_compare(mirror: _Mirror):
    assert mirror.calls > 0
    for i, (a, m) in enumerate(mirror.pairs.values()):
        if a.dtype.name == "bfloat16":          # bfloat16 state: the same bits
            assert m.dtype == np.uint16
            a, m = a.view(np.uint16), m
        assert a.shape == m.shape and a.dtype == m.dtype
        assert np.array_equal(a, m, equal_nan=True), f"array {i} differs: max |d| = {np.nanmax(np.abs(a - m))}"


def _run_mirrored(monkeypatch, mirror, name, hp, dtype, shapes, steps, data_seed, step_kw=None, **opt_kw):
    params = make_params(data_seed, shapes, dtype)
    opt = build(name, params, **hp, **opt_kw)
    with monkeypatch.context() as m:
        m.setattr(CPU, "fused_step", mirror.fused_step)
        m.setattr(CPU, "fused_step_q8", mirror.fused_step_q8)
        for grads in grad_stream(data_seed + 1, shapes, dtype, steps):
            opt.step(grads, **(step_kw or {}))
    return opt


@pytest.mark.parametrize("name,kwargs", case_params())
def test_emulated_kernels_reproduce_cpu_bit_for_bit(emu, monkeypatch, name, kwargs, dtype):
    """Every case of the table, both dtypes, sizes 0..2*FO_CHUNK+5 (chunks cut tensors),
    a grid smaller than the chunk count (grid-stride), buffers at 16-byte and odd offsets
    (pack path and element path): the CUDA kernel code gives the CPU's bits."""
    seed = seed_for("cuda-emu", name, kwargs, dtype.name)
    hp = draw_hparams(name, kwargs, seed)
    run = lambda *a: emu_fused_step(emu, *a, grid=2, block=32)  # noqa: E731
    mirror = _Mirror(_host_copy, run, offsets=True)
    _run_mirrored(monkeypatch, mirror, name, hp, dtype, EMU_SHAPES, EMU_STEPS, seed)
    _emu_compare(mirror)


OPTION_VARIANTS = [
    pytest.param(dict(ema_decay=0.9), None, id="ema"),
    pytest.param(dict(clipnorm=0.5), None, id="clipnorm-tscale"),
    pytest.param(dict(global_clipnorm=1.0, ema_decay=0.5), dict(grad_scale=0.5), id="global_clipnorm-grad_scale"),
    pytest.param(dict(clipvalue=0.3), dict(grad_scale=2.0), id="clipvalue"),
]


@pytest.mark.parametrize("opt_kw,step_kw", OPTION_VARIANTS)
@pytest.mark.parametrize("name,kwargs", case_params(RICH_CASES))
def test_emulated_kernels_with_options(emu, monkeypatch, name, kwargs, opt_kw, step_kw):
    """EMA epilogue, per-tensor scales (tscale), the common block's scale and clip value."""
    dtype = np.dtype(np.float32)
    seed = seed_for("cuda-emu-opt", name, kwargs, sorted(opt_kw))
    hp = draw_hparams(name, kwargs, seed)
    mirror = _Mirror(_host_copy, lambda *a: emu_fused_step(emu, *a), offsets=True)
    _run_mirrored(monkeypatch, mirror, name, hp, dtype, EMU_SHAPES, EMU_STEPS, seed, step_kw, **opt_kw)
    _emu_compare(mirror)


@pytest.mark.parametrize("rounding", ["stochastic", "nearest"])
@pytest.mark.parametrize("name,kwargs", case_params())
def test_emulated_bf16_state_reproduces_cpu_bit_for_bit(emu, monkeypatch, name, kwargs, rounding):
    """state_dtype="bfloat16": the _lp4 kernels (uint16 bits of bfloat16 state, float32
    arithmetic, lowp.h's rounding with the CPU loop's counter hash) give the CPU
    backend's bits, every optimizer of the table, both roundings, the sizes, offsets and
    chunking of the float32 test (packs of 8 bytes of bfloat16 beside 16 of float32)."""
    pytest.importorskip("ml_dtypes", reason="bfloat16 needs ml_dtypes (pip install '.[lowp]')")
    dtype = np.dtype(np.float32)
    seed = seed_for("cuda-emu-bf16", name, kwargs, rounding)
    hp = draw_hparams(name, kwargs, seed)
    mirror = _Mirror(_host_copy, lambda *a, **kw: emu_fused_step(emu, *a, grid=2, block=32, **kw), offsets=True)
    opt = _run_mirrored(monkeypatch, mirror, name, hp, dtype, EMU_SHAPES, EMU_STEPS, seed,
                        state_dtype="bfloat16", rounding=rounding, seed=seed)
    kept = [v for p in opt.params for v in opt.state[p].values() if getattr(v, "shape", None) == p.shape]
    assert all(v.dtype.name == "bfloat16" for v in kept)
    _emu_compare(mirror)


def test_emulated_bf16_state_bits_follow_the_key(emu):
    """The comparison above can fail: the emulated _lp4 kernel equals the CPU loop for the
    same (seed, step, tensor ids) and differs from it, in about half of the stochastically
    rounded elements, when any part of the key differs; nearest rounding ignores the key."""
    ml = pytest.importorskip("ml_dtypes", reason="bfloat16 needs ml_dtypes (pip install '.[lowp]')")
    rng = np.random.default_rng(9)
    shapes = [(4099,), (K.CHUNK + 5,)]
    p0 = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    g = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    m0 = [(rng.standard_normal(s) * 0.1).astype(ml.bfloat16) for s in shapes]
    v0 = [(rng.random(s) * 0.01).astype(ml.bfloat16) for s in shapes]
    hp = _adam_hp(step=4)

    def run(rounding, device):
        p, m, v = [a.copy() for a in p0], [a.copy() for a in m0], [a.copy() for a in v0]
        if device:
            m, v = [a.view(np.uint16) for a in m], [a.view(np.uint16) for a in v]
            emu_fused_step(emu, ADAM, *hp, [x.copy() for x in p0], g, [m, v], rounding=rounding, grid=3, block=8)
            return np.concatenate([a.ravel() for a in m + v])
        _kernels.fused_step(ADAM, *hp, p, g, [m, v], None, None, None, rounding)
        return np.concatenate([a.view(np.uint16).ravel() for a in m + v])

    key = (5, 4, np.array([3, 8], np.uint64), True)
    cpu = run(key, False)
    assert np.array_equal(run(key, True), cpu)
    for other in [(6, 4, key[2], True), (5, 5, key[2], True), (5, 4, np.array([8, 3], np.uint64), True)]:
        same = np.mean(run(other, True) == cpu)
        assert 0.2 < same < 0.8, (other, same)
    near = run((5, 4, key[2], False), False)
    assert np.array_equal(run((6, 9, None, False), True), near) and not np.array_equal(near, cpu)


@pytest.mark.parametrize("opt_kw,step_kw", OPTION_VARIANTS)
def test_emulated_bf16_state_with_options(emu, monkeypatch, opt_kw, step_kw):
    """bfloat16 state with the EMA epilogue, per-tensor and global clipping, clip value:
    still the CPU's bits (AdamW with amsgrad keeps 3 state buffers: both random words)."""
    pytest.importorskip("ml_dtypes", reason="bfloat16 needs ml_dtypes (pip install '.[lowp]')")
    mirror = _Mirror(_host_copy, lambda *a, **kw: emu_fused_step(emu, *a, grid=3, block=16, **kw), offsets=True)
    _run_mirrored(monkeypatch, mirror, "AdamW", dict(lr=1e-2, amsgrad=True, weight_decay=0.1), np.dtype(np.float32),
                  EMU_SHAPES, EMU_STEPS, 8, step_kw, state_dtype="bfloat16", seed=8, **opt_kw)
    _emu_compare(mirror)


@pytest.mark.parametrize("grid,block", [(1, 1), (1, 256), (3, 7), (64, 32)])
def test_emulated_result_does_not_depend_on_launch_config(emu, grid, block):
    """Element-wise: any grid (more or fewer blocks than chunks) and block size give the
    same bits, equal to the CPU's."""
    rng = np.random.default_rng(7)
    shapes = [(5,), (K.CHUNK + 3,), (0,), (2 * K.CHUNK,), (1,)]
    p0 = [rng.standard_normal(s) for s in shapes]
    g = [rng.standard_normal(s) for s in shapes]
    st0 = [[rng.random(s) for s in shapes] for _ in range(3)]
    e0 = [rng.standard_normal(s) for s in shapes]
    hp = _adam_hp(amsgrad=True, ema_decay=0.9, weight_decay=0.01, step=3)
    cpu = [a.copy() for a in p0], [[a.copy() for a in c] for c in st0], [a.copy() for a in e0]
    _kernels.fused_step(ADAM, *hp, cpu[0], g, cpu[1], cpu[2])
    gpu = [a.copy() for a in p0], [[a.copy() for a in c] for c in st0], [a.copy() for a in e0]
    emu_fused_step(emu, ADAM, *hp, gpu[0], g, gpu[1], gpu[2], grid=grid, block=block)
    for x, y in zip(cpu[0] + sum(cpu[1], []) + cpu[2], gpu[0] + sum(gpu[1], []) + gpu[2]):
        assert np.array_equal(x, y)


def _adam_hp(amsgrad=False, ema_decay=None, weight_decay=0.0, step=0):
    """Adam's per-step scalars as the Optimizer builds them: (common block, Adam's named
    scalars, flag bits)."""
    opt = fusedoptim.Adam([np.zeros(1)], lr=1e-2, betas=(0.8, 0.99), weight_decay=weight_decay,
                          amsgrad=amsgrad, ema_decay=ema_decay)
    g = dict(opt.param_groups[0])
    scal = opt.init_scalars(g)
    scal["step"] = step
    return (opt.common_scalars(g), opt.kernel_scalars(g, scal, frozenset()),
            opt.spec.flag_bits(opt.kernel_flags(g)))


def _adam_arrays(seed=3, shapes=((7,), (4099,), (K.CHUNK + 1,))):
    rng = np.random.default_rng(seed)
    p = [rng.standard_normal(s) for s in shapes]
    g = [rng.standard_normal(s) for s in shapes]
    st = [[np.zeros(s) for s in shapes] for _ in range(2)]
    return p, g, st, _adam_hp()


def test_emulated_control_block_skip_and_scale(emu):
    """ctrl[3] != 0 leaves every buffer untouched; ctrl[2] multiplies the gradient scale
    exactly as the CPU path's folded h[0] does."""
    p, g, st, hp = _adam_arrays()
    before = [a.copy() for a in p + st[0] + st[1]]
    emu_fused_step(emu, ADAM, *hp, p, g, st, ctrl=np.array([0.0, 1.0, 0.25, 1.0]))
    assert all(np.array_equal(a, b) for a, b in zip(before, p + st[0] + st[1]))
    emu_fused_step(emu, ADAM, *hp, p, g, st, ctrl=np.array([0.0, 0.0, 0.25, 0.0]))
    q, _, sq, _ = _adam_arrays()
    common, scalars, flags = hp
    _kernels.fused_step(ADAM, dict(common, gscale=common["gscale"] * 0.25), scalars, flags, q, g, sq)
    assert all(np.array_equal(a, b) for a, b in zip(q + sq[0] + sq[1], p + st[0] + st[1]))


def test_emulated_accumulate_matches_cpu(emu):
    rng = np.random.default_rng(5)
    shapes = [(3,), (K.CHUNK + 9,)]
    acc0 = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    g = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    a, b = [x.copy() for x in acc0], [x.copy() for x in acc0]
    _kernels.accumulate(a, g)
    emu_fused_step(emu, _kernels.ALGORITHMS["sgd"].id, _kernels.ACCUMULATE_COMMON, _kernels.ACCUMULATE_SCALARS, 0,
                   b, g, [])
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert np.array_equal(a[1], acc0[1] + g[1])


@pytest.mark.parametrize("dt", ["float32", "float64"])
def test_emulated_grad_control(emu, dt):
    """Sums of squares in float64 over fixed blocks: equal to a float64 NumPy sum to
    rounding, bit-identical for any grid; per-tensor and global Keras clip coefficients
    equal the Optimizer's formulas evaluated on those sums; None and empty gradients
    count as empty."""
    rng = np.random.default_rng(11)
    grads = [None, np.zeros(0, dt), rng.standard_normal(1).astype(dt), rng.standard_normal(4097).astype(dt),
             rng.standard_normal(3 * K.RED_CHUNK + 5).astype(dt) * 3, rng.standard_normal(7).astype(dt)]
    gs = 0.5
    res = [emu_grad_control(emu, grads, grid=grid, grad_scale=gs, clipnorm=20.0) for grid in (1, 2, 5)]
    for r in res[1:]:
        for x, y in zip(res[0], r):
            assert np.array_equal(x, y)
    ctrl, tscale, per = res[0]
    want = [0.0 if g is None else float(np.sum(g.astype(np.float64) ** 2)) for g in grads]
    np.testing.assert_allclose(per, want, rtol=1e-13)
    np.testing.assert_allclose(ctrl[0], sum(want), rtol=1e-13)
    assert ctrl[1] == 0.0 and ctrl[2] == 1.0 and ctrl[3] == 0.0
    assert np.array_equal(tscale, [keras_clip_coef(math.sqrt(s) * gs, 20.0) for s in per])
    assert 0 < tscale.min() < 1.0 and tscale[0] == 1.0
    cpu_sumsq, _, cpu_per = _kernels.grad_stats(grads, per_tensor=True)
    np.testing.assert_allclose(per, cpu_per, rtol=1e-5 if dt == "float32" else 1e-12)
    ctrl, _, _ = emu_grad_control(emu, grads, grad_scale=gs, global_clipnorm=10.0)
    norm = math.sqrt(ctrl[0]) * gs
    assert ctrl[2] == 10.0 / max(norm, 10.0) and ctrl[2] < 1.0


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_emulated_grad_control_flags_nonfinite(emu, bad):
    rng = np.random.default_rng(12)
    grads = [rng.standard_normal(5000), rng.standard_normal(9)]
    grads[0][4321] = bad
    ctrl, tscale, _ = emu_grad_control(emu, grads, global_clipnorm=1.0, clipnorm=1.0, skip_nonfinite=True)
    assert ctrl[1] == 1.0 and ctrl[3] == 1.0 and math.isnan(ctrl[2])
    assert math.isnan(tscale[0]) and not math.isnan(tscale[1])
    ctrl, _, _ = emu_grad_control(emu, grads)
    assert ctrl[1] == 1.0 and ctrl[3] == 0.0 and ctrl[2] == 1.0


# ---- 8-bit state (the _q8 kernels) --------------------------------------------------
# block 64: tensors of 4099, 16389 and 33 elements are 8-bit (none a multiple of the block),
# those of 0, 1, 7 and 15 below min_8bit_size stay float32: both kinds in every launch
Q8_KW = dict(state_dtype="int8", block_size=64, min_8bit_size=16)


def _q8_mirror(emu, grid=3, threads=8, offsets=True):
    run_q8 = lambda *a, **kw: emu_fused_step_q8(emu, *a, grid=grid, threads=threads, **kw)  # noqa: E731
    return _Mirror(_host_copy, lambda *a, **kw: emu_fused_step(emu, *a, **kw), offsets=offsets, run_q8=run_q8)


def _q8_kept(opt):
    """Every 8-bit buffer of the optimizer's state (uint8 codes next to their absmax)."""
    return [v for p in opt.params for k, v in opt.state[p].items()
            if getattr(v, "dtype", None) == np.uint8 and k + "_absmax" in opt.state[p]]


@pytest.mark.parametrize("rounding", ["stochastic", "nearest"])
@pytest.mark.parametrize("name,kwargs", case_params())
def test_emulated_int8_state_reproduces_cpu_bit_for_bit(emu, monkeypatch, name, kwargs, rounding):
    """state_dtype="int8": the _q8 kernels (one CUDA block per quantization block, 8 threads
    of 8 elements each here, the absmax by the block's barrier tree, q8.h's per-element
    code functions) give the CPU loop's codes, absmax arrays, float32 state and parameters
    bit for bit: every optimizer of the table, both roundings, 8-bit tensors whose size is
    no multiple of the block beside float32-state ones below min_8bit_size, misaligned
    buffers, a grid smaller than the block count."""
    dtype = np.dtype(np.float32)
    seed = seed_for("cuda-emu-q8", name, kwargs, rounding)
    hp = draw_hparams(name, kwargs, seed)
    mirror = _q8_mirror(emu)
    opt = _run_mirrored(monkeypatch, mirror, name, hp, dtype, EMU_SHAPES, EMU_STEPS, seed, rounding=rounding,
                        seed=seed, **Q8_KW)
    assert all(c.dtype == np.uint8 for c in _q8_kept(opt))
    _emu_compare(mirror)


def test_emulated_int8_state_is_not_vacuous(emu, monkeypatch):
    """The comparison above sees 8-bit state: codes that change from step to step, absmax
    arrays, float32 state beside them; and a wrong key changes the stochastic codes."""
    dtype = np.dtype(np.float32)
    mirror = _q8_mirror(emu)
    opt = _run_mirrored(monkeypatch, mirror, "Adam", dict(lr=1e-2, amsgrad=True), dtype, EMU_SHAPES, 3, 4,
                        rounding="stochastic", seed=4, **Q8_KW)
    codes = _q8_kept(opt)
    assert len(codes) == 3 * 3 and all(len(np.unique(c)) > 20 for c in codes)
    assert any(v.dtype == np.float32 and v.size == 7 for p in opt.params for v in opt.state[p].values()
               if hasattr(v, "dtype"))
    _emu_compare(mirror)
    p = opt.params[3]
    assert p.size == 4099 and opt.state[p]["exp_avg_absmax"].shape == (65,)
    # the same step with another seed: about half the stochastic codes differ from the CPU's
    rng = np.random.default_rng(0)
    st = opt.state[p]
    bufs = [st[k].copy() for k in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")]
    ams = [st[k + "_absmax"].copy() for k in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")]
    g = rng.standard_normal(p.shape).astype(np.float32)
    common, scalars, flags = _adam_hp(amsgrad=True, step=3)
    outs = []
    for key in ((4, 3), (4, 3), (5, 3)):
        b, a, q = [x.copy() for x in bufs], [x.copy() for x in ams], p.copy()
        if not outs:
            _kernels.fused_step_q8(ADAM, common, scalars, flags, [q], [g], [[x] for x in b], [[x] for x in a],
                                   None, None, None, (*key, np.array([3], np.uint64), True), 64)
        else:
            emu_fused_step_q8(emu, ADAM, common, scalars, flags, [q], [g], [[x] for x in b], [[x] for x in a],
                              rounding=(*key, np.array([3], np.uint64), True), block=64, threads=16)
        outs.append(np.concatenate(b))
    assert np.array_equal(outs[0], outs[1])
    assert 0.1 < np.mean(outs[0] != outs[2]) < 0.8


@pytest.mark.parametrize("opt_kw,step_kw", OPTION_VARIANTS)
def test_emulated_int8_state_with_options(emu, monkeypatch, opt_kw, step_kw):
    """int8 state with the EMA epilogue, per-tensor and global clipping, clip value, the
    default block of 256: still the CPU's bits (AdamW with amsgrad keeps 3 state buffers:
    both random words)."""
    mirror = _q8_mirror(emu, grid=2, threads=32)
    _run_mirrored(monkeypatch, mirror, "AdamW", dict(lr=1e-2, amsgrad=True, weight_decay=0.1), np.dtype(np.float32),
                  EMU_SHAPES + ((300,),), EMU_STEPS, 8, step_kw, state_dtype="int8", min_8bit_size=300,
                  rounding="stochastic", seed=8, **opt_kw)
    _emu_compare(mirror)


@pytest.mark.parametrize("block,grid,threads", [(64, 1, 4), (64, 7, 64), (256, 2, 16), (256, 64, 256),
                                                (4096, 3, 256), (128, 5, 96)])
def test_emulated_int8_result_does_not_depend_on_launch_config(emu, block, grid, threads):
    """Any grid and any thread count that covers a block (threads * FO_Q8_PER >= block, not
    only powers of two) give the CPU's bits, for every block size from 64 to 4096."""
    rng = np.random.default_rng(block + grid)
    shapes = [(5,), (3 * block + 7,), (0,), (2 * block,), (block + 1,)]
    p0 = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    g = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    quant = [s[0] >= block for s in shapes]
    st0 = [[(rng.standard_normal(s) * 0.1).astype(np.float32) if i == 0 else
            (rng.random(s) * 0.01).astype(np.float32) for s in shapes] for i in range(3)]
    cols, ams = [], []
    for i, col in enumerate(st0):
        cc, aa = [], []
        for x, q in zip(col, quant):
            if q:
                c, a = _kernels.q8_quantize(x, i == 0, block)
                cc.append(c)
                aa.append(a)
            else:
                cc.append(x)
                aa.append(None)
        cols.append(cc)
        ams.append(aa)
    e0 = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    hp = _adam_hp(amsgrad=True, ema_decay=0.9, weight_decay=0.01, step=3)
    key = (11, 3, np.arange(5, dtype=np.uint64) + 2, True)
    runs = []
    for device in (False, True):
        p = [a.copy() for a in p0]
        c = [[a.copy() for a in col] for col in cols]
        a = [[None if x is None else x.copy() for x in col] for col in ams]
        e = [x.copy() for x in e0]
        if device:
            emu_fused_step_q8(emu, ADAM, *hp, p, g, c, a, e, rounding=key, block=block, grid=grid, threads=threads)
        else:
            _kernels.fused_step_q8(ADAM, *hp, p, g, c, a, e, None, None, key, block)
        runs.append(p + sum(c, []) + [x for col in a for x in col if x is not None] + e)
    for x, y in zip(*runs):
        assert x.dtype == y.dtype and np.array_equal(x, y, equal_nan=True)


@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("block,grid,threads", [(64, 3, 4), (256, 2, 256), (4096, 1, 256)])
def test_emulated_int8_quantize_kernel_matches_cpu(emu, signed, block, grid, threads):
    """fo_q8_quantize_kernel (a new buffer's codes on the device) equals the CPU's
    q8_quantize bit for bit: values over 60 decades, zeros, a block of zeros, an Inf block,
    a NaN block, a short last block."""
    rng = np.random.default_rng(block)
    n = 5 * block + 3
    x = (rng.standard_normal(n) * 10.0 ** rng.integers(-30, 30, n)).astype(np.float32)
    x[:block] = 0.0
    x[block + 3] = np.inf
    x[2 * block + 5] = np.nan
    x[3 * block:3 * block + 9] = [0.0, -0.0, 1e-45, -1e-45, 3.4e38, -3.4e38, 1.0, -1.0, 0.5]
    if not signed:
        x = np.abs(x)
    codes, amax = np.full(n, 0xAD, np.uint8), np.full(-(-n // block), np.nan, np.float32)
    emu.emu_q8_quantize(grid, threads, _addr(x), _addr(codes), _addr(amax), n, block, int(signed),
                        _addr(q8_tables_host()))
    want_c, want_a = _kernels.q8_quantize(x, signed, block)
    np.testing.assert_array_equal(codes, want_c)
    np.testing.assert_array_equal(amax.view(np.uint32), want_a.view(np.uint32))
    assert amax[0] == 0 and np.isinf(amax[1]) and np.isnan(amax[2])


def test_emulated_q8_table_layout_is_the_extensions(emu):
    """The bytes the backend uploads are two fo_q8_table as kernels.cu's build of q8.h lays
    them out, unsigned then signed, each starting with its code map."""
    raw = q8_tables_host()
    size = emu.emu_q8_table_size()
    assert raw.size == 2 * size
    for sgn in (0, 1):
        m = raw[sgn * size:sgn * size + 1024].view(np.float32)
        np.testing.assert_array_equal(m, _kernels.q8_code_map(bool(sgn)))


def _bf16_rounding_case():
    """Awkward float32 values and the CPU loop's bfloat16 storage of them: one SGD-momentum
    step from a fresh buffer stores buf = g, rounded by cpu.h/lowp.h (test_lowprec.py
    checks those bits against its NumPy reference)."""
    ml = pytest.importorskip("ml_dtypes", reason="bfloat16 needs ml_dtypes (pip install '.[lowp]')")
    rng = np.random.default_rng(12)
    x = (rng.standard_normal(5000) * 10.0 ** rng.integers(-30, 30, 5000)).astype(np.float32)
    x[:8] = [0.0, -0.0, np.inf, -np.inf, np.nan, 3.4e38, 1e-45, 1.0 + 2 ** -9]
    out = {}
    for rounding in ("stochastic", "nearest"):
        p = np.zeros_like(x)
        opt = fusedoptim.SGD([p], lr=0.0, momentum=0.9, state_dtype="bfloat16", seed=77, rounding=rounding)
        opt.step([x])
        out[rounding] = opt.state[p]["momentum_buffer"].view(np.uint16)
    assert opt.state[p]["momentum_buffer"].dtype == np.dtype(ml.bfloat16)
    return x, out


@pytest.mark.parametrize("grid,block", [(1, 1), (3, 64)])
def test_emulated_bf16_rounding_kernel_matches_cpu_storage(emu, grid, block):
    """kernels.cu's device compile of lowp.h's storage rules (fo_bf16s, the counter hash)
    rounds exactly as the CPU loop stores: same bits, any launch shape."""
    x, cpu = _bf16_rounding_case()
    for rounding, stochastic in (("stochastic", 1), ("nearest", 0)):
        got = np.full(x.size, 0xDEAD, np.uint16)
        # SGD's momentum_buffer is state buffer 0 of tensor 0; step 1
        emu.emu_bf16_round(grid, block, _addr(x), _addr(got), x.size, 77, 1, 0, 0, stochastic)
        np.testing.assert_array_equal(got, cpu[rounding], err_msg=rounding)


# ============================================ _cuda.py end to end on a fake CuPy
def _kernel_signatures() -> dict:
    """C parameter types of every extern "C" kernel, parsed from kernels.cu."""
    text = open(KERNELS_CU).read().replace("\\\n", " ")
    text = text.replace("FO_KERNEL_ARGS_", re.search(r"#define FO_KERNEL_ARGS_ ([^\n]*)", text).group(1))
    sigs = {}
    for name, params in re.findall(r'extern "C" __global__ void ([\w#]+)\(([^)]*)\)', text):
        types = [re.sub(r"\s*\b\w+$", "", p.strip()) for p in params.split(",")]
        if "##" in name:
            for a in ALGOS:
                for sfx in ("f32", "f64", "lp4", "q8"):
                    if name.endswith(sfx):
                        sigs[f"fo_{a}_kernel_{sfx}"] = types
        else:
            sigs[name] = types
    return sigs


class _FakeCuPy:
    """Just the CuPy surface _cuda.py uses, over host memory; a kernel launch checks every
    argument against the C signature in kernels.cu (CuPy passes a numpy scalar by its
    byte width and a size-1 numpy array by value) and runs the host emulation."""

    def __init__(self, emu):
        fake = self
        self.emu, self.sigs, self.launches = emu, _kernel_signatures(), []

        class Device:
            def __init__(self, i=0):
                self.id = i
                self.attributes = {"MultiProcessorCount": 2}

            def __enter__(self):
                return self

            def __exit__(self, *a):
                return False

        class Ptr:
            def __init__(self, a):
                self.ptr = _addr(a)
                self.device_id = 0

        class ndarray:
            def __init__(self, a):
                self.a = a

            dtype = property(lambda self: self.a.dtype)
            shape = property(lambda self: self.a.shape)
            size = property(lambda self: self.a.size)
            nbytes = property(lambda self: self.a.nbytes)
            flags = property(lambda self: self.a.flags)
            data = property(lambda self: Ptr(self.a))
            device = property(lambda self: Device(0))
            T = property(lambda self: ndarray(self.a.T))

            def __getitem__(self, k):
                return ndarray(self.a[k])

            def __float__(self):
                return float(self.a)

            def astype(self, dtype):
                return ndarray(self.a.astype(dtype))

        class RawModule:
            def __init__(self, code, options=()):
                assert code == _cuda.kernel_source() and tuple(options) == _cuda.NVRTC_OPTIONS

            def get_function(self, name):
                return lambda grid, block, args: fake._launch(name, grid, block, args)

        class cuda:
            pass

        cuda.Device = Device
        self.cuda, self.ndarray, self.RawModule = cuda, ndarray, RawModule

    def asarray(self, a):
        return self.ndarray(np.array(a, order="C", copy=True))

    def array(self, a, dtype=None, order="C", copy=True):
        return self.ndarray(np.array(a.a if isinstance(a, self.ndarray) else a, dtype=dtype, order=order, copy=True))

    def empty(self, shape, dtype):   # garbage that shows: NaN, or 0xDEAD (0xAD in bytes) in integer arrays
        dt = np.dtype(dtype)
        return self.ndarray(np.full(shape, np.nan if dt.kind == "f" else (0xAD if dt.itemsize == 1 else 0xDEAD),
                                    dtype=dt))

    def zeros(self, shape, dtype):
        return self.ndarray(np.zeros(shape, dtype=dtype))

    def full(self, shape, v, dtype):
        return self.ndarray(np.full(shape, v, dtype=dtype))

    def asnumpy(self, a):
        return a.a.copy()

    def take(self, a, idx):
        return self.ndarray(np.take(a.a, idx.a))

    def _arg(self, ctype, v, name, i):
        where = f"{name} argument {i} ({ctype})"
        if ctype == "const fo_hparams":
            assert isinstance(v, np.ndarray) and v.size == 1 and v.itemsize == 8 * K.MAXHP, where
            return _addr(v)
        if ctype.endswith("*"):
            if isinstance(v, self.ndarray):
                return _addr(v.a)
            assert type(v) is np.uint64 and v == 0, where   # NULL, 8 bytes
            return None
        want = {"int": np.int32, "unsigned": np.uint32, "fo_i64": np.int64, "double": np.float64,
                "unsigned long long": np.uint64}[ctype]
        assert type(v) is want, f"{where}: got {type(v).__name__}"
        return v.item()

    def _launch(self, name, grid, block, args):
        sig = self.sigs[name]
        assert len(args) == len(sig), name
        a = [self._arg(t, v, name, i) for i, (t, v) in enumerate(zip(sig, args))]
        self.launches.append(name)
        if name.startswith("fo_sumsq_kernel"):
            assert block == (K.RED_THREADS,)
            self.emu.emu_sumsq(int(name.endswith("f64")), grid[0], *a)
        elif name == "fo_grad_control_kernel":
            assert grid == (1,) and block == (K.RED_THREADS,)
            self.emu.emu_control(*a)
        elif name == "fo_bf16_round_kernel":
            self.emu.emu_bf16_round(grid[0], block[0], *a)
        elif name == "fo_q8_quantize_kernel":
            assert block[0] <= K.Q8_THREADS and block[0] * K.Q8_PER >= a[4]
            self.emu.emu_q8_quantize(grid[0], block[0], *a)
        elif name.endswith("_q8"):
            assert block[0] <= K.Q8_THREADS and block[0] * K.Q8_PER >= a[-2]
            assert self.emu.emu_update_q8(name.encode(), grid[0], block[0], *a) == 0
        elif name.endswith("_lp4"):
            assert self.emu.emu_update_lp(name.encode(), grid[0], block[0], *a) == 0
        else:
            assert self.emu.emu_update(name.encode(), grid[0], block[0], *a) == 0


@pytest.fixture
def fake_cupy(emu, monkeypatch):
    fake = _FakeCuPy(emu)
    monkeypatch.setitem(sys.modules, "cupy", fake)
    monkeypatch.setattr(_cuda, "_cupy", fake)
    monkeypatch.setattr(_cuda, "_module", None)
    monkeypatch.setattr(_cuda, "_functions", {})
    monkeypatch.setattr(_cuda, "_sm_count", {})
    monkeypatch.setattr(_cuda, "_meta_cache", type(_cuda._meta_cache)())
    monkeypatch.setattr(_cuda, "_q8_tables_dev", {})
    return fake


@pytest.mark.parametrize("name,kwargs", case_params(RICH_CASES))
def test_cuda_backend_end_to_end_on_fake_cupy(fake_cupy, monkeypatch, name, kwargs):
    """_cuda.fused_step itself (checks, tables, the upload cache, grid, the launch ABI)
    with the kernels emulated: bit-identical to the CPU backend."""
    dtype = np.dtype(np.float64)
    seed = seed_for("cuda-fake", name, kwargs)
    hp = draw_hparams(name, kwargs, seed)
    mirror = _Mirror(lambda a, shift: fake_cupy.asarray(a), lambda *args: _cuda.fused_step(*args))
    _run_mirrored(monkeypatch, mirror, name, hp, dtype, EMU_SHAPES, 5, seed, None, clipnorm=1.0)
    assert fake_cupy.launches and len(_cuda._meta_cache) >= 1
    for a, m in mirror.pairs.values():
        assert np.array_equal(a, m.a)


@pytest.mark.parametrize("rounding", ["stochastic", "nearest"])
@pytest.mark.parametrize("name", ["Adam", "Adagrad", "RMSprop"])
def test_optimizer_bf16_state_on_fake_cupy(fake_cupy, name, rounding):
    """The Optimizer on (fake) CuPy arrays with state_dtype="bfloat16": new buffers rounded
    on the device (fo_bf16_round_kernel; Adagrad's start from a non-zero value), uint16
    state, the _lp4 kernel, per-parameter clipping on the device; parameters and state
    bits equal the CPU optimizer's; state_dict holds ml_dtypes.bfloat16 arrays equal to
    the CPU's and load_state_dict puts them back as device bits (the run continues
    identically)."""
    ml = pytest.importorskip("ml_dtypes", reason="bfloat16 needs ml_dtypes (pip install '.[lowp]')")
    fk = fake_cupy
    shapes = [(7,), (K.CHUNK + 3,), (3, 5)]
    host = make_params(3, shapes, np.dtype(np.float32))
    dev = [fk.asarray(p) for p in host]
    kw = dict(lr=1e-2, state_dtype="bfloat16", rounding=rounding, seed=11, clipnorm=2.0)
    if name == "Adagrad":
        kw["initial_accumulator_value"] = 0.1
    a, b = getattr(fusedoptim, name)(host, **kw), getattr(fusedoptim, name)(dev, **kw)
    grads = list(grad_stream(4, shapes, np.dtype(np.float32), 6))
    for g in grads[:3]:
        a.step(g)
        b.step([fk.asarray(x) for x in g])
    assert "fo_bf16_round_kernel" in fk.launches and any(n.endswith("_lp4") for n in fk.launches)
    for x, y in zip(host, dev):
        assert np.array_equal(x, y.a)
    for x, y in zip(host, dev):
        for k, v in a.state[x].items():
            if isinstance(v, np.ndarray):
                w = b.state[y][k]
                assert w.dtype == np.uint16 and np.array_equal(v.view(np.uint16), w.a), k
    sa, sb = a.state_dict(), b.state_dict()
    for i, st in sa["state"].items():
        for k, v in st.items():
            if isinstance(v, np.ndarray):
                assert sb["state"][i][k].dtype == np.dtype(ml.bfloat16)
                assert np.array_equal(v.view(np.uint16), sb["state"][i][k].view(np.uint16))
    dev2 = [fk.asarray(p.a) for p in dev]
    c = getattr(fusedoptim, name)(dev2, **kw)
    c.load_state_dict(sb)
    assert all(v.dtype == np.uint16 for p in dev2 for v in c.state[p].values() if hasattr(v, "dtype"))
    for g in grads[3:]:
        a.step(g)
        c.step([fk.asarray(x) for x in g])
    for x, y in zip(host, dev2):
        assert np.array_equal(x, y.a)


def _same_q8_state(a, host, b, dev):
    """Parameters and every state entry of a CPU optimizer ``a`` and a (fake) CuPy one ``b``
    are the same bits (codes, absmax arrays, float32 state, scalars)."""
    for x, y in zip(host, dev):
        assert np.array_equal(x.view(np.uint32), y.a.view(np.uint32))
        sa, sb = a.state[x], b.state[y]
        assert sa.keys() == sb.keys()
        for k, v in sa.items():
            if isinstance(v, np.ndarray):
                w = sb[k]
                assert v.dtype == w.dtype and np.array_equal(v.view(np.uint8), w.a.view(np.uint8)), k
            else:
                assert v == sb[k], k


@pytest.mark.parametrize("rounding", ["stochastic", "nearest"])
@pytest.mark.parametrize("name", ["Adam", "Adagrad", "SGD", "Lion"])
def test_optimizer_int8_state_on_fake_cupy(fake_cupy, tmp_path, name, rounding):
    """The Optimizer on (fake) CuPy arrays with state_dtype="int8": new buffers quantized on
    the device (fo_q8_quantize_kernel; Adagrad's start from a non-zero value), uint8 codes
    and float32 absmax on the device, tensors below min_8bit_size in float32, the _q8
    kernel; parameters and state bits equal the CPU optimizer's.  state_dict holds host
    codes, absmax and the storage tag, equal to the CPU's; load_state_dict (and fo.save /
    fo.load) puts them back on the device and the run continues bit for bit; a CPU
    optimizer loads the device's state_dict too.  No norm clipping here: the device's clip
    factors come from its own fixed-order sums, equal to the CPU's only to rounding
    (test_emulated_grad_control), which moved 22 elements of one tensor after 7 steps;
    clipping with the CPU's factors is test_emulated_int8_state_with_options."""
    fk = fake_cupy
    shapes = [(7,), (K.CHUNK + 3,), (3, 700), (300,)]
    host = make_params(3, shapes, np.dtype(np.float32))
    dev = [fk.asarray(p) for p in host]
    kw = dict(lr=1e-2, state_dtype="int8", rounding=rounding, seed=11, block_size=128, min_8bit_size=300)
    if name == "Adagrad":
        kw["initial_accumulator_value"] = 0.1
    if name == "SGD":
        kw["momentum"] = 0.9
    opt = getattr(fusedoptim, name)
    a, b = opt(host, **kw), opt(dev, **kw)
    grads = list(grad_stream(4, shapes, np.dtype(np.float32), 7))
    for g in grads[:3]:
        a.step(g)
        b.step([fk.asarray(x) for x in g])
    assert "fo_q8_quantize_kernel" in fk.launches and any(n.endswith("_q8") for n in fk.launches)
    assert b.state[dev[1]][b.buffers[0]].dtype == np.uint8 and b.state[dev[0]][b.buffers[0]].dtype == np.float32
    _same_q8_state(a, host, b, dev)
    sa, sb = a.state_dict(), b.state_dict()
    assert sb["storage"] == sa["storage"] == {"state_dtype": "int8", "block_size": 128, "min_8bit_size": 300}
    for i, st in sa["state"].items():
        for k, v in st.items():
            if isinstance(v, np.ndarray):
                w = sb["state"][i][k]
                assert type(w) is np.ndarray and w.dtype == v.dtype and np.array_equal(w, v), k
    # resume on the device, from the state_dict and from a checkpoint file
    fusedoptim.save(tmp_path / "ck", optimizer=b)
    dev2, dev3 = [fk.asarray(p.a) for p in dev], [fk.asarray(p.a) for p in dev]
    c, d = opt(dev2, **kw), opt(dev3, **kw)
    c.load_state_dict(sb)
    fusedoptim.load(tmp_path / "ck", optimizer=d)
    assert c.state[dev2[1]][c.buffers[0]].dtype == np.uint8 and fk.launches
    host2 = [p.copy() for p in host]
    e = opt(host2, **kw)
    e.load_state_dict(sb)                  # the device's state_dict on the CPU
    for g in grads[3:]:
        a.step(g)
        e.step(g)
        c.step([fk.asarray(x) for x in g])
        d.step([fk.asarray(x) for x in g])
    _same_q8_state(a, host, c, dev2)
    _same_q8_state(a, host, d, dev3)
    for x, y in zip(host, host2):          # the CPU optimizer resumed from the device's state_dict
        assert np.array_equal(x, y)
        for k, v in a.state[x].items():
            w = e.state[y][k]
            assert np.array_equal(v, w) if isinstance(v, np.ndarray) else v == w, k


def test_cuda_int8_refusals_on_fake_cupy(fake_cupy):
    """bfloat16 parameters stay on the CPU backend; int8 state needs float32 parameters; a
    reducing optimizer has no CUDA kernel (int8 or not): each a clear error."""
    fk = fake_cupy
    with pytest.raises(TypeError, match="bfloat16 parameters run on the CPU backend only"):
        fusedoptim.Adam([fk.asarray(np.zeros(3, np.uint16))])
    with pytest.raises(TypeError, match="state_dtype='int8' needs float32"):
        fusedoptim.Adam([fk.asarray(np.zeros(5000))], state_dtype="int8")
    opt = fusedoptim.Lamb([fk.asarray(np.zeros(5000, np.float32))], state_dtype="int8")
    with pytest.raises(NotImplementedError, match="reduction stage"):
        opt.step([fk.asarray(np.ones(5000, np.float32))])


def test_cuda_reductions_and_helpers_on_fake_cupy(fake_cupy):
    fk = fake_cupy
    rng = np.random.default_rng(4)
    host = [rng.standard_normal(s).astype(np.float32) for s in [(5,), (K.RED_CHUNK + 3,)]]
    grads = [fk.asarray(host[0]), None, fk.asarray(host[1])]
    ctrl, tscale, per = _cuda.grad_control(grads, grad_scale=2.0, global_clipnorm=1.0, clipnorm=3.0,
                                           skip_nonfinite=True, per_tensor=True)
    want = [float(np.sum(host[0].astype(np.float64) ** 2)), 0.0, float(np.sum(host[1].astype(np.float64) ** 2))]
    np.testing.assert_allclose(per.a, want, rtol=1e-13)
    assert ctrl.a[1] == 0.0 and ctrl.a[3] == 0.0
    assert ctrl.a[2] == 1.0 / max(math.sqrt(ctrl.a[0]) * 2.0, 1.0)
    assert list(tscale.a) == [keras_clip_coef(math.sqrt(x) * 2.0, 3.0) for x in per.a]
    assert tscale.a[1] == 1.0 and tscale.a[0] < 1.0
    sumsq, none, per2 = _cuda.grad_stats(grads, per_tensor=True)
    assert none is None and float(sumsq) == ctrl.a[0] and np.array_equal(per2.a, per.a)
    assert float(_cuda.grad_norm_sq(grads)) == ctrl.a[0]
    with pytest.raises(NotImplementedError):
        _cuda.grad_stats(grads, want_max=True)
    with pytest.raises(ValueError, match="clipnorm"):
        _cuda.grad_control(grads, clipnorm=0.0)
    # accumulate, helpers
    acc = [fk.asarray(np.ones(5, np.float32)), fk.asarray(np.zeros(K.RED_CHUNK + 3, np.float32))]
    _cuda.accumulate(acc, [grads[0], grads[2]])
    assert np.array_equal(acc[0].a, 1 + host[0]) and np.array_equal(acc[1].a, host[1])
    p = fk.asarray(np.arange(6.0).reshape(2, 3))
    assert np.array_equal(_cuda.zeros_like(p).a, np.zeros((2, 3)))
    assert np.array_equal(_cuda.full_like(p, 0.5).a, np.full((2, 3), 0.5))
    h = _cuda.to_host(p)
    assert type(h) is np.ndarray and np.array_equal(h, p.a) and h is not p.a
    assert np.array_equal(_cuda.take(fk.asarray(np.arange(5.0)), [4, 0]).a, [4.0, 0.0])
    assert _cuda.address(p) == _addr(p.a)
    d = _cuda.from_host(np.ones((2, 3), np.float32), p)
    assert d.dtype == np.float64 and np.array_equal(d.a, np.ones((2, 3)))
    # control block and tscale consumed on the device
    prm = [fk.asarray(rng.standard_normal(s)) for s in [(7,), (9,)]]
    g64 = [fk.asarray(rng.standard_normal(s)) for s in [(7,), (9,)]]
    st = [[_cuda.zeros_like(x) for x in prm] for _ in range(2)]
    before = [x.a.copy() for x in prm]
    bad = fk.asarray(np.array([0.0, 1.0, 1.0, 1.0]))
    _cuda.fused_step(ADAM, *_adam_hp(), prm, g64, st, control=bad)
    assert all(np.array_equal(x.a, y) for x, y in zip(prm, before))
    with pytest.raises(TypeError, match="control"):
        _cuda.fused_step(ADAM, *_adam_hp(), prm, g64, st, control=fk.asarray(np.zeros(3)))
    with pytest.raises(ValueError, match="per-tensor scales"):
        _cuda.fused_step(ADAM, *_adam_hp(), prm, g64, st, tscale=[1.0])


def test_cuda_checks_on_fake_cupy(fake_cupy):
    fk = fake_cupy
    p = [fk.asarray(np.zeros(3, np.float32)), fk.asarray(np.zeros((2, 2), np.float32))]
    _cuda.check_params(p)
    assert _cuda.check_grads(p, [None, fk.asarray(np.zeros((2, 2), np.float32))]) == 1
    with pytest.raises(TypeError, match="numpy and cupy arrays can't be mixed"):
        _cuda.check_params(p + [np.zeros(3, np.float32)])
    with pytest.raises(TypeError, match="gradient of w: expected a cupy.ndarray, got numpy.ndarray"):
        _cuda.check_grads(p[:1], [np.zeros(3, np.float32)], ["w"])
    with pytest.raises(TypeError, match="float32 and float64 can't be mixed"):
        _cuda.check_params([p[0], fk.asarray(np.zeros(3))])
    with pytest.raises(TypeError, match="not supported"):
        _cuda.check_params([fk.asarray(np.zeros(3, np.int32))])
    with pytest.raises(ValueError, match="C-contiguous"):
        _cuda.check_params([p[1].T])
    with pytest.raises(ValueError, match="shape"):
        _cuda.check_grads(p[:1], [fk.asarray(np.zeros(4, np.float32))])
    with pytest.raises(TypeError, match="dtype"):
        _cuda.check_grads(p[:1], [fk.asarray(np.zeros(3))])
    with pytest.raises(ValueError, match="shares memory"):
        _cuda.check_grads(p[:1], [p[0]])
    with pytest.raises(ValueError, match="expected 2 gradients"):
        _cuda.check_grads(p, [None])
    assert _cuda.is_device_array(p[0]) and not _cuda.is_device_array(np.zeros(1))


# ====================================================== pure host logic of _cuda.py
def test_import_never_needs_cupy():
    code = ("import sys; sys.modules['cupy'] = None\n"   # makes `import cupy` fail
            "import numpy as np, fusedoptim, fusedoptim._cuda as c\n"
            "assert not c.is_device_array(np.zeros(1))\n"
            "try:\n    c.check_params([np.zeros(1)])\nexcept ImportError as e:\n"
            "    assert \"fusedoptim[cuda]\" in str(e)\nelse:\n    raise SystemExit('no ImportError')\n")
    _run([sys.executable, "-c", code])
    r = _run([sys.executable, "-c", "import sys, fusedoptim; print('cupy' in sys.modules)"])
    assert r.stdout.strip() == "False"


def test_sources_and_launch_constants():
    code = _cuda.kernel_source()
    assert code.index("#define FUSEDOPTIM_RULES_H") < code.index("FO_ALGOS(FO_KERNEL_)")
    assert K.RED_THREADS & (K.RED_THREADS - 1) == 0   # the tree reduction needs a power of two
    assert K.CHUNK % 4 == 0 and K.MAXHP == _kernels.MAX_SCALARS and K.CTRL == 4
    assert K.Q8_THREADS * K.Q8_PER >= _kernels.Q8_BLOCK_RANGE[1]   # every block size has its launch
    common, scalars, flags = _adam_hp()
    block = _kernels.pack_scalars(ADAM, common, scalars)
    hp = _cuda._hp_struct(block)
    names = _kernels.COMMON_SCALARS + _kernels.ALGORITHMS["adam"].scalars
    assert hp.itemsize == 8 * K.MAXHP and list(hp["h"][0][:len(names)]) == [{**common, **scalars}[n] for n in names]
    assert not hp["h"][0][len(names):].any()
    with pytest.raises(ValueError, match="doubles"):
        _cuda._hp_struct(np.zeros(K.MAXHP + 1))


def test_pointer_table_layout():
    meta = _cuda._pack_meta([3, 0, 5], [[1, 2, 0], [3, 4, 0], [2 ** 63 + 8, 6, 7]])
    assert list(meta[:4]) == [0, 3, 3, 8]
    assert list(meta[4:10]) == [1, 2, 0, 3, 4, 0]
    assert meta[10:].view(np.uint64)[0] == 2 ** 63 + 8
    r = _cuda._reduction_meta([0, 1, K.RED_CHUNK, K.RED_CHUNK + 1], [0, 10, 20, 30], K.RED_CHUNK)
    assert list(r[:5]) == [0, 0, 1, 1 + K.RED_CHUNK, 2 + 2 * K.RED_CHUNK]
    assert list(r[5:10]) == [0, 0, 1, 2, 4] and list(r[10:]) == [0, 10, 20, 30]


def test_prepare_checks_state_buffer_count_and_scalar_names():
    p, g, st, hp = _adam_arrays()
    with pytest.raises(ValueError, match="keeps 2 state buffer"):
        _cuda._prepare(ADAM, *hp, p, g, st[:1], None, _addr)
    with pytest.raises(ValueError, match="keeps 3 state buffer"):
        _cuda._prepare(ADAM, *_adam_hp(amsgrad=True), p, g, st, None, _addr)
    with pytest.raises(ValueError, match="no CUDA kernel"):
        _cuda._prepare(_kernels.STREAM, {}, {}, 6, p, g, [], None, _addr)
    common, scalars, flags = hp
    with pytest.raises(ValueError, match="'eps' is missing"):
        _cuda._prepare(ADAM, common, {k: v for k, v in scalars.items() if k != "eps"}, flags, p, g, st, None, _addr)


# ================================================================ (b) CuPy + device
def _cupy_or_skip(need_device=True):
    try:
        import cupy
    except ImportError:
        pytest.skip("cupy is not installed (pip install 'fusedoptim[cuda]')")
    if need_device:
        try:
            n = cupy.cuda.runtime.getDeviceCount()
        except Exception as e:  # no driver, or a driver too old for this CuPy
            pytest.skip(f"no CUDA device ({type(e).__name__}: {e})")
        if n < 1:
            pytest.skip("no CUDA device")
    return cupy


@pytest.fixture
def cp():
    return _cupy_or_skip()


def test_nvrtc_compiles_the_kernel_source():
    """NVRTC itself (CuPy's, no GPU needed) accepts the code string with the options
    _cuda.py passes, plus the ones CuPy adds."""
    _cupy_or_skip(need_device=False)
    try:
        from cupy.cuda.compiler import _NVRTCProgram
        prog = _NVRTCProgram(_cuda.kernel_source(), "kernels.cu", method="ptx")
    except Exception as e:
        pytest.skip(f"NVRTC is not usable here ({type(e).__name__}: {e})")
    ptx, _ = prog.compile(_cuda.NVRTC_OPTIONS + ("-ftz=true", "-arch=compute_80",
                                                 "--device-as-default-execution-space"))
    ptx = ptx.decode() if isinstance(ptx, bytes) else ptx
    assert "fo_radam_kernel_f64" in ptx and "fo_grad_control_kernel" in ptx


GPU_STEPS = 200
GPU_TOL = {np.dtype(np.float32): dict(rtol=1e-5, atol=1e-6), np.dtype(np.float64): dict(rtol=1e-6, atol=1e-6)}
# Ftrl with learning_rate_power != -0.5 calls powf (rules.h fo_pow).  CUDA's powf is not
# correctly rounded (CUDA C++ Programming Guide, "Mathematical Functions": powf up to 4 ulp;
# pow 2 ulp) and glibc's is within 1 ulp, so the two sides differ in the last bits of
# n^-p; Ftrl's linear state accumulates the difference (pn - po) / lr * p of two nearly
# equal powers, which turns those ulps into 4e-4 relative in z and 4e-5 in the
# parameters after 200 float32 steps (first H200 run, CUDA 13.0).  Making the bits agree
# would mean our own pow in rules.h on both sides (the CPU would give up libm's powf and
# its vectorized loop for a rarely used option), so float32 pow cases get a tolerance
# sized to that: float64 (pow within 2 ulp of 1e-16) keeps the default one.
POW_TOL = dict(rtol=2e-3, atol=1e-5)


def _gpu_tol(name, kwargs, dtype) -> dict:
    uses_pow = name == "Ftrl" and kwargs.get("learning_rate_power", -0.5) != -0.5
    return POW_TOL if uses_pow and dtype == np.float32 else GPU_TOL[dtype]


def _gpu_mirror(cupy):
    return _Mirror(lambda a, shift: cupy.asarray(a), lambda *args: _cuda.fused_step(*args))


def _gpu_compare(cupy, mirror, dtype, tol=None):
    cupy.cuda.runtime.deviceSynchronize()
    for i, (a, m) in enumerate(mirror.pairs.values()):
        np.testing.assert_allclose(cupy.asnumpy(m), a, **(tol or GPU_TOL[dtype]), err_msg=f"array {i}")


@pytest.mark.parametrize("name,kwargs", case_params())
def test_gpu_kernels_match_cpu(cp, monkeypatch, name, kwargs, dtype):
    """The real kernels, fed the CPU path's per-step scalars for 200 steps (see
    test_optimizers.py for why 200), against the CPU path.  float32 tolerances: NVRTC
    flushes float32 denormals (-ftz=true), and CUDA's powf is not libm's (POW_TOL); float64
    is IEEE on both sides."""
    seed = seed_for("cuda-gpu", name, kwargs, dtype.name)
    hp = draw_hparams(name, kwargs, seed)
    mirror = _gpu_mirror(cp)
    _run_mirrored(monkeypatch, mirror, name, hp, dtype, EMU_SHAPES, GPU_STEPS, seed)
    _gpu_compare(cp, mirror, dtype, _gpu_tol(name, hp, dtype))


@pytest.mark.parametrize("opt_kw,step_kw", OPTION_VARIANTS)
def test_gpu_kernels_match_cpu_with_options(cp, monkeypatch, opt_kw, step_kw):
    dtype = np.dtype(np.float64)
    mirror = _gpu_mirror(cp)
    _run_mirrored(monkeypatch, mirror, "Adam", dict(lr=1e-2, amsgrad=True), dtype, EMU_SHAPES, 50, 1,
                  step_kw, **opt_kw)
    _gpu_compare(cp, mirror, dtype)


def test_gpu_grad_control_and_skip(cp):
    rng = np.random.default_rng(21)
    host = [rng.standard_normal(s) for s in [(3,), (4097,), (3 * K.RED_CHUNK + 5,)]]
    grads = [cp.asarray(g) for g in host]
    ctrl, tscale, per = _cuda.grad_control(grads, grad_scale=0.5, clipnorm=20.0, per_tensor=True)
    want = [float(np.sum(g ** 2)) for g in host]
    np.testing.assert_allclose(cp.asnumpy(per), want, rtol=1e-12)
    np.testing.assert_allclose(float(_cuda.grad_norm_sq(grads)), sum(want), rtol=1e-12)
    again = _cuda.grad_control(grads, grad_scale=0.5, clipnorm=20.0, per_tensor=True)
    assert all(bool((x == y).all()) for x, y in zip((ctrl, tscale, per), again))
    np.testing.assert_allclose(cp.asnumpy(tscale), [keras_clip_coef(math.sqrt(s) * 0.5, 20.0) for s in want],
                               rtol=1e-12)
    host[1][17] = np.nan
    grads = [cp.asarray(g) for g in host]
    ctrl, _, _ = _cuda.grad_control(grads, skip_nonfinite=True)
    p = [cp.asarray(rng.standard_normal(g.shape)) for g in host]
    st = [[cp.zeros_like(x) for x in p] for _ in range(2)]
    before = [cp.asnumpy(x) for x in p]
    _, _, _, hp = _adam_arrays()
    _cuda.fused_step(ADAM, *hp, p, grads, st, control=ctrl)
    assert all(np.array_equal(cp.asnumpy(x), y) for x, y in zip(p, before))
    assert cp.asnumpy(ctrl)[3] == 1.0


def test_gpu_backend_rejects_numpy_arrays(cp):
    p = [cp.zeros(3, dtype=cp.float32)]
    with pytest.raises(TypeError, match="numpy and cupy"):
        _cuda.check_params(p + [np.zeros(3, np.float32)])
    with pytest.raises(TypeError, match="numpy and cupy"):
        _cuda.check_grads(p, [np.zeros(3, np.float32)])
    with pytest.raises(ValueError, match="shares memory"):
        _cuda.check_grads(p, [p[0]])
    with pytest.raises(ValueError, match="C-contiguous"):
        _cuda.check_params([cp.zeros((4, 4), cp.float32).T])


# The tests below need the Optimizer to pick this backend for cupy arrays (_backends).
@pytest.mark.parametrize("name,kwargs", case_params(RICH_CASES))
def test_gpu_optimizer_matches_cpu(cp, name, kwargs):
    dtype = np.dtype(np.float32)
    seed = seed_for("cuda-opt", name, kwargs)
    hp = draw_hparams(name, kwargs, seed)
    host = make_params(seed, SHAPES, dtype)
    dev = [cp.asarray(p) for p in host]
    a, b = build(name, host, **hp), build(name, dev, **hp)
    for grads in grad_stream(seed + 1, SHAPES, dtype, GPU_STEPS):
        a.step(grads)
        b.step([cp.asarray(g) for g in grads])
    tol = _gpu_tol(name, hp, dtype)
    for x, y in zip(host, dev):
        np.testing.assert_allclose(cp.asnumpy(y), x, **tol)
    sd = b.state_dict()
    arrays = [v for st in sd["state"].values() for v in st.values() if hasattr(v, "shape")]
    assert arrays and all(type(v) is np.ndarray for v in arrays), "state_dict must return host arrays"
    ref = a.state_dict()
    for i, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, np.ndarray):
                np.testing.assert_allclose(v, ref["state"][i][k], **tol)
    c = build(name, [cp.asarray(p) for p in host], **hp)
    c.load_state_dict(sd)
    assert all(isinstance(v, cp.ndarray) for st in c.state for v in st.values() if hasattr(v, "shape"))


def test_gpu_optimizer_rejects_mixed_arrays(cp):
    with pytest.raises(TypeError, match="numpy"):
        fusedoptim.Adam([cp.zeros(3, dtype=cp.float32), np.zeros(3, np.float32)])
    opt = fusedoptim.Adam([cp.zeros(3, dtype=cp.float32)])
    with pytest.raises(TypeError, match="numpy"):
        opt.step([np.zeros(3, np.float32)])
    cpu = fusedoptim.Adam([np.zeros(3, np.float32)])
    with pytest.raises(TypeError):
        cpu.step([cp.zeros(3, dtype=cp.float32)])


def test_gpu_bf16_rounding_kernel_matches_cpu_storage(cp):
    """On a device: NVRTC's build of lowp.h rounds float32 -> bfloat16 exactly as the CPU
    loop stores (integer arithmetic only, so bit for bit even with -ftz)."""
    x, _ = _bf16_rounding_case()
    x = np.where(np.abs(x) < np.finfo(np.float32).tiny, np.float32(0.0), x)   # -ftz: no denormal inputs
    for rounding, stochastic in (("stochastic", 1), ("nearest", 0)):
        p = np.zeros_like(x)
        opt = fusedoptim.SGD([p], lr=0.0, momentum=0.9, state_dtype="bfloat16", seed=77, rounding=rounding)
        opt.step([x])
        want = opt.state[p]["momentum_buffer"].view(np.uint16)
        dx, dout = cp.asarray(x), cp.zeros(x.size, dtype=cp.uint16)
        fn = _cuda._function(cp.cuda.Device().id, "fo_bf16_round_kernel")
        fn((4,), (128,), (dx, dout, np.int64(x.size), np.uint64(77), np.uint64(1), np.uint64(0), np.int32(0),
                          np.int32(stochastic)))
        np.testing.assert_array_equal(cp.asnumpy(dout), want, err_msg=rounding)


def _bits_agree(cupy, mirror, min_equal: float):
    """Every mirrored array: float32 arrays within bfloat16 precision; bfloat16 state as
    bits, equal in at least ``min_equal`` of the elements and otherwise within a few
    bfloat16 ulps (a float32 value that differs in its last bit -- a flushed denormal --
    may round to the other neighbour; the run then carries that difference)."""
    cupy.cuda.runtime.deviceSynchronize()
    for i, (a, m) in enumerate(mirror.pairs.values()):
        got = cupy.asnumpy(m)
        if a.dtype.name == "bfloat16":
            assert got.dtype == np.uint16
            same = np.mean(a.view(np.uint16) == got) if a.size else 1.0
            assert same >= min_equal, f"array {i}: only {same:.6f} of the bfloat16 bits agree"
            np.testing.assert_allclose(got.view(a.dtype).astype(np.float32), a.astype(np.float32), rtol=3e-2,
                                       atol=1e-6, err_msg=f"array {i}")
        else:   # float32: within bfloat16 precision, since a state word that rounded the other way feeds it
            np.testing.assert_allclose(got, a, rtol=3e-2, atol=1e-5, err_msg=f"array {i}")


GPU_BF16_STEPS = 20


@pytest.mark.parametrize("rounding", ["stochastic", "nearest"])
@pytest.mark.parametrize("name,kwargs", case_params(RICH_CASES))
def test_gpu_bf16_state_matches_cpu(cp, monkeypatch, name, kwargs, rounding):
    """The real _lp4 kernels (NVRTC, -ftz) against the CPU loop, fed the same scalars and
    rounding key for 20 steps: the bfloat16 state bits agree (all but a rare element a
    flushed float32 denormal pushes across a rounding boundary) and every value is within
    bfloat16 precision of the CPU's."""
    pytest.importorskip("ml_dtypes", reason="bfloat16 needs ml_dtypes (pip install '.[lowp]')")
    seed = seed_for("cuda-gpu-bf16", name, kwargs, rounding)
    hp = draw_hparams(name, kwargs, seed)
    copy = lambda a, shift: cp.asarray(a.view(np.uint16) if a.dtype.name == "bfloat16" else a)  # noqa: E731
    mirror = _Mirror(copy, lambda *args, **kw: _cuda.fused_step(*args, **kw))
    _run_mirrored(monkeypatch, mirror, name, hp, np.dtype(np.float32), EMU_SHAPES, GPU_BF16_STEPS, seed,
                  state_dtype="bfloat16", rounding=rounding, seed=seed)
    _bits_agree(cp, mirror, 0.999)


def test_gpu_optimizer_bf16_state(cp):
    """AdamW on CuPy arrays with bfloat16 state: uint16 device state, the CPU
    optimizer's results to bfloat16 precision, state_dict in ml_dtypes.bfloat16 that a CPU
    optimizer loads, and a device optimizer that loads it continues as the original."""
    ml = pytest.importorskip("ml_dtypes", reason="bfloat16 needs ml_dtypes (pip install '.[lowp]')")
    host = make_params(5, SHAPES, np.dtype(np.float32))
    dev = [cp.asarray(p) for p in host]
    kw = dict(lr=1e-2, weight_decay=0.1, state_dtype="bfloat16", seed=3, global_clipnorm=1.0)
    a, b = fusedoptim.AdamW(host, **kw), fusedoptim.AdamW(dev, **kw)
    grads = list(grad_stream(6, SHAPES, np.dtype(np.float32), 40))
    for g in grads[:20]:
        a.step(g)
        b.step([cp.asarray(x) for x in g])
    assert all(v.dtype == cp.uint16 for p in dev for k, v in b.state[p].items() if k.startswith("exp_avg"))
    for x, y in zip(host, dev):
        np.testing.assert_allclose(cp.asnumpy(y), x, rtol=1e-3, atol=1e-5)
    sd = b.state_dict()
    for i, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, np.ndarray):
                assert v.dtype == np.dtype(ml.bfloat16)
                ref = a.state_dict()["state"][i][k].astype(np.float32)
                np.testing.assert_allclose(v.astype(np.float32), ref, rtol=3e-2, atol=1e-6)
    fusedoptim.AdamW([p.copy() for p in host], **kw).load_state_dict(sd)     # interchangeable with the CPU's
    dev2 = [y.copy() for y in dev]
    c = fusedoptim.AdamW(dev2, **kw)
    c.load_state_dict(sd)
    for g in grads[20:]:
        gd = [cp.asarray(x) for x in g]
        b.step(gd)
        c.step(gd)
    for y, z in zip(dev, dev2):
        assert bool((y == z).all())
    for y, z in zip(dev, dev2):
        for k, v in b.state[y].items():
            if hasattr(v, "dtype"):
                assert bool((v == c.state[z][k]).all()), k


def test_gpu_refuses_uint16_params(cp):
    with pytest.raises(TypeError, match="bfloat16 parameters run on the CPU backend only"):
        fusedoptim.Adam([cp.zeros(3, dtype=cp.uint16)])


def test_gpu_int8_quantize_kernel_matches_cpu(cp):
    """On a device: NVRTC's build of fo_q8_quantize_kernel gives the CPU's codes and absmax
    bit for bit (normal float32 inputs: -ftz only touches denormals)."""
    rng = np.random.default_rng(3)
    for signed in (False, True):
        for block in (64, 256, 4096):
            n = 7 * block + 5
            x = (rng.standard_normal(n) * 10.0 ** rng.integers(-6, 6, n)).astype(np.float32)
            x[:block] = 0.0
            x[block + 1] = np.nan
            if not signed:
                x = np.abs(x)
            codes, amax = _cuda.quantize(cp.asarray(x), signed, block)
            want_c, want_a = _kernels.q8_quantize(x, signed, block)
            np.testing.assert_array_equal(cp.asnumpy(codes), want_c, err_msg=f"{signed} {block}")
            np.testing.assert_array_equal(cp.asnumpy(amax).view(np.uint32), want_a.view(np.uint32))


def _q8_agree(cupy, mirror, min_equal: float):
    """Every mirrored array: 8-bit codes and absmax equal in at least ``min_equal`` of the
    elements (a float32 value that differs in its last bit -- a flushed denormal -- may
    pick the neighbouring code; the run then carries that difference), float32 arrays
    within 8-bit precision of the CPU's."""
    cupy.cuda.runtime.deviceSynchronize()
    for i, (a, m) in enumerate(mirror.pairs.values()):
        got = cupy.asnumpy(m)
        assert got.dtype == a.dtype and got.shape == a.shape
        if a.dtype == np.uint8:
            same = np.mean(a == got) if a.size else 1.0
            assert same >= min_equal, f"array {i}: only {same:.6f} of the codes agree"
        else:
            same = np.mean(a.view(np.uint32) == got.view(np.uint32)) if a.size else 1.0
            assert same >= min_equal or np.allclose(got, a, rtol=5e-2, atol=1e-5, equal_nan=True), \
                f"array {i}: {same:.6f} of the float32 bits agree"


@pytest.mark.parametrize("rounding", ["stochastic", "nearest"])
@pytest.mark.parametrize("name,kwargs", case_params(RICH_CASES))
def test_gpu_int8_state_matches_cpu(cp, monkeypatch, name, kwargs, rounding):
    """The real _q8 kernels (NVRTC, -ftz) against the CPU loop, fed the same scalars and
    rounding key for 20 steps: codes, absmax and float32 state agree bit for bit but for a
    rare element a flushed denormal moves."""
    seed = seed_for("cuda-gpu-q8", name, kwargs, rounding)
    hp = draw_hparams(name, kwargs, seed)
    copy = lambda a, shift: cp.asarray(a)  # noqa: E731
    mirror = _Mirror(copy, lambda *args, **kw: _cuda.fused_step(*args, **kw),
                     run_q8=lambda *args, **kw: _cuda.fused_step_q8(*args, **kw))
    _run_mirrored(monkeypatch, mirror, name, hp, np.dtype(np.float32), EMU_SHAPES, GPU_BF16_STEPS, seed,
                  rounding=rounding, seed=seed, **Q8_KW)
    _q8_agree(cp, mirror, 0.999)


def test_gpu_optimizer_int8_state(cp, tmp_path):
    """AdamW on CuPy arrays with int8 state: uint8 codes and float32 absmax on the device,
    the CPU optimizer's results to 8-bit precision, a state_dict (host codes, absmax,
    storage tag) that a CPU optimizer loads, and device optimizers resumed from it and from
    fo.save / fo.load that continue exactly as the original."""
    host = make_params(5, SHAPES, np.dtype(np.float32))
    dev = [cp.asarray(p) for p in host]
    kw = dict(lr=1e-2, weight_decay=0.1, state_dtype="int8", seed=3, global_clipnorm=1.0, rounding="stochastic",
              min_8bit_size=1000)
    a, b = fusedoptim.AdamW(host, **kw), fusedoptim.AdamW(dev, **kw)
    grads = list(grad_stream(6, SHAPES, np.dtype(np.float32), 40))
    for g in grads[:20]:
        a.step(g)
        b.step([cp.asarray(x) for x in g])
    big = [p for p in dev if p.size >= 1000]
    assert big and all(b.state[p]["exp_avg"].dtype == cp.uint8 for p in big)
    for x, y in zip(host, dev):
        np.testing.assert_allclose(cp.asnumpy(y), x, rtol=1e-2, atol=1e-4)
    sd = b.state_dict()
    assert sd["storage"]["state_dtype"] == "int8"
    for i, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, np.ndarray):
                ref = a.state_dict()["state"][i][k]
                assert v.dtype == ref.dtype and v.shape == ref.shape
                if v.dtype == np.uint8:      # the clip factor is the CPU's to rounding: a code may move
                    assert v.size == 0 or np.mean(v == ref) > 0.95, k
                else:
                    np.testing.assert_allclose(v, ref, rtol=1e-2, atol=1e-6, err_msg=k)
    fusedoptim.AdamW([p.copy() for p in host], **kw).load_state_dict(sd)     # interchangeable with the CPU's
    fusedoptim.save(tmp_path / "ck", optimizer=b)
    dev2, dev3 = [y.copy() for y in dev], [y.copy() for y in dev]
    c, d = fusedoptim.AdamW(dev2, **kw), fusedoptim.AdamW(dev3, **kw)
    c.load_state_dict(sd)
    fusedoptim.load(tmp_path / "ck", optimizer=d)
    for g in grads[20:]:
        gd = [cp.asarray(x) for x in g]
        b.step(gd)
        c.step(gd)
        d.step(gd)
    for other, od in ((c, dev2), (d, dev3)):
        for y, z in zip(dev, od):
            assert bool((y == z).all())
            for k, v in b.state[y].items():
                if hasattr(v, "dtype"):
                    assert bool((v == other.state[z][k]).all()), k
