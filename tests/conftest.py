"""Shared fixtures.  The case table and helpers live in cases.py, the NumPy references in
reference.py; this directory is put on sys.path so test modules import them by name."""
import os
import re
import sys

# Keras 3 (an oracle of the parity tests) picks its backend once, at its first import: JAX,
# which the `parity` extra installs (TensorFlow, Keras's own default, is not installed).
os.environ.setdefault("KERAS_BACKEND", "jax")

import pytest  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))

import fusedoptim  # noqa: E402
from fusedoptim import _kernels  # noqa: E402


@pytest.fixture(autouse=True)
def _restore_threading():
    """Every test leaves the thread count and the grain size as it found them."""
    grain = _kernels.get_grain_size()
    yield
    fusedoptim.set_num_threads(0)
    _kernels.set_grain_size(grain)


@pytest.fixture(params=["float32", "float64"])
def dtype(request):
    import numpy as np
    return np.dtype(request.param)


if os.environ.get("FO_REQUIRE_ORACLES"):
    # CI sets this: the torch.optim oracle tests must run, not skip for a missing torch.
    import torch  # noqa: F401,E402


def _in_test_cuda(item) -> bool:
    return item.nodeid.split("::")[0].endswith("test_cuda.py")


def pytest_collection_modifyitems(config, items):
    """test_cuda.py's tests run last (their compiles, started once collection ends, then
    overlap the other modules' tests); with FO_REQUIRE_ORACLES set, a torch-oracle test that
    would skip is an error."""
    items.sort(key=_in_test_cuda)   # stable: the order within each part is kept
    if not os.environ.get("FO_REQUIRE_ORACLES"):
        return
    oracle = [it for it in items if "torch_oracle" in it.nodeid]
    if not oracle:
        raise pytest.UsageError("FO_REQUIRE_ORACLES is set but no torch oracle test was collected")


def pytest_collection_finish(session):
    """Start test_cuda.py's compiles (nvcc, the host emulation: minutes of CPU on one core
    each) in the background for the tests selected there."""
    if session.config.option.collectonly:
        return
    cuda = [it for it in session.items if _in_test_cuda(it)]
    if cuda:
        cuda[0].module.start_builds(cuda)


# What installs each optional module the suite imports.  The README's test command installs
# all of them but CuPy, so on a machine without a GPU only the GPU tests skip.
TEST_COMMAND = "pip install '.[test,demo,mpi,lowp,parity]' torch==2.13.0"
_INSTALLED_BY = {
    "torch": "torch==2.13.0", "keras": "the parity extra", "jax": "the parity extra",
    "optax": "the parity extra", "pytorch_optimizer": "the parity extra", "schedulefree": "the parity extra",
    "bitsandbytes": "the parity extra",
    "ml_dtypes": "the lowp extra", "mpi4py": "the mpi extra", "sklearn": "the demo extra",
    "matplotlib": "the demo extra", "autograd": "the demo extra", "tqdm": "the demo extra",
    "threadpoolctl": "the test extra", "hypothesis": "the test extra", "pytest_benchmark": "the test extra",
}
# hint only: the GPU tests need CuPy and a CUDA device, which the test command does not bring
_GPU_ONLY = {"cupy": "CuPy, for the GPU tests on a machine with an NVIDIA GPU: pip install '.[cuda]'"}
_NOT_IMPORTABLE = re.compile(r"could not import '([\w.]+)'")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A skip for a missing optional package says what installs it (`-ra` prints it in
    the summary); with FO_REQUIRE_ORACLES (CI) such a skip is a failure, since CI runs
    the README's command, which installs every one of them."""
    outcome = yield
    rep = outcome.get_result()
    if not (rep.skipped and isinstance(rep.longrepr, tuple) and len(rep.longrepr) == 3):
        return
    path, lineno, reason = rep.longrepr
    m = _NOT_IMPORTABLE.search(reason)
    if m is None:
        return
    top = m.group(1).split(".")[0]
    if top in _GPU_ONLY:
        rep.longrepr = (path, lineno, f"{reason} ({_GPU_ONLY[top]})")
        return
    if top not in _INSTALLED_BY:
        return
    hint = f"{reason} ({_INSTALLED_BY[top]}; the README's test command installs it: {TEST_COMMAND})"
    if os.environ.get("FO_REQUIRE_ORACLES") and not hasattr(rep, "wasxfail"):
        rep.outcome = "failed"
        rep.longrepr = f"{path}:{lineno}: FO_REQUIRE_ORACLES is set but the test skipped: {hint}"
    else:
        rep.longrepr = (path, lineno, hint)
