"""Every script in examples/ runs to completion (each takes about a second).

Scripts that need an optional package are skipped, with the reason, when it is missing;
the script itself must then exit with a message naming what to install.
"""
import importlib
import os
import subprocess
import sys

import pytest

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")

# script -> (modules it needs, text its output must contain)
CASES = {
    "linear_regression_sgd.py": ((), "SGD (batch 16)"),
    "custom_optimizer.py": ((), "Lion: f(w)"),
    "large_batch_lamb_lars.py": ((), "NovoGrad  training loss"),
    "autograd_gradients.py": (("autograd",), "accuracy"),
    "mlp_adam_cosine_clip.py": (("sklearn", "fusedoptim.schedules", "fusedoptim:clip_grad_norm"), "test acc"),
    "torch_cpu_loop.py": (("torch",), "train accuracy"),
    "lowprec_state.py": (("ml_dtypes",), "bfloat16 params, float32 state"),
    "int8_state.py": ((), "int8    state"),
    "cuda_lowp_state.py": (("cupy", "ml_dtypes", "cuda-device"), "GPU int8 state: loss"),
}


def _missing(requirements):
    out = []
    for req in requirements:
        if req == "cuda-device":     # CuPy with a driver and at least one GPU
            try:
                import cupy
                if cupy.cuda.runtime.getDeviceCount() < 1:
                    raise RuntimeError
            except Exception:
                out.append("a CUDA device")
            continue
        module, _, attr = req.partition(":")
        try:
            mod = importlib.import_module(module)
        except ImportError:
            out.append(module)
            continue
        if attr and not hasattr(mod, attr):
            out.append(f"{module}.{attr}")
    return out


def _run(script):
    return subprocess.run([sys.executable, os.path.join(EXAMPLES, script)], capture_output=True, text=True,
                          timeout=300, cwd=EXAMPLES)


def test_every_example_is_listed():
    assert sorted(f for f in os.listdir(EXAMPLES) if f.endswith(".py")) == sorted(CASES)


@pytest.mark.parametrize("script", sorted(CASES))
def test_example_runs(script):
    needs, expect = CASES[script]
    missing = _missing(needs)
    proc = _run(script)
    if missing:
        # the script must say what is missing instead of failing with a traceback
        assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
        assert "needs" in proc.stderr
        pytest.skip(f"{script} needs {', '.join(missing)}, not available here")
    assert proc.returncode == 0, proc.stderr
    assert expect in proc.stdout
    assert "Traceback" not in proc.stderr
