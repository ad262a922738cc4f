"""Shared fixtures.  The case table and helpers live in cases.py, the NumPy references in
reference.py; this directory is put on sys.path so test modules import them by name."""
import os
import sys

import pytest

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


def pytest_collection_modifyitems(config, items):
    """With FO_REQUIRE_ORACLES set, a torch-oracle test that would skip is an error."""
    if not os.environ.get("FO_REQUIRE_ORACLES"):
        return
    oracle = [it for it in items if "torch_oracle" in it.nodeid]
    if not oracle:
        raise pytest.UsageError("FO_REQUIRE_ORACLES is set but no torch oracle test was collected")
