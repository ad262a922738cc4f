"""mpi4py plumbing shared by the distributed strategies: lazy import, datatypes, waits
with timeouts, and "agree on errors" so one rank's bad input raises on every rank
instead of leaving the others blocked in the next collective."""
from __future__ import annotations

import time
from typing import Optional, Sequence

import numpy as np


def mpi():
    """The ``mpi4py.MPI`` module, imported on first use (``import fusedoptim`` never needs it)."""
    try:
        from mpi4py import MPI
    except ImportError as e:  # pragma: no cover - exercised only without the extra
        raise ImportError("fusedoptim.distributed needs mpi4py and an MPI library: "
                          "pip install 'fusedoptim[mpi]' (installs mpi4py and the mpich wheel), "
                          "then launch with `mpiexec -n 2 python train.py`") from e
    return MPI


def resolve_comm(comm):
    """``comm`` or ``MPI.COMM_WORLD`` when None."""
    return mpi().COMM_WORLD if comm is None else comm


def mpi_type(dtype):
    """The MPI datatype of a float32/float64 numpy dtype."""
    MPI = mpi()
    dt = np.dtype(dtype)
    if dt == np.float32:
        return MPI.FLOAT
    if dt == np.float64:
        return MPI.DOUBLE
    raise TypeError(f"fusedoptim.distributed communicates float32 or float64 arrays, got {dt}")


def agree(comm, error: Optional[str], what: str) -> None:
    """Collective: raise the same ValueError on every rank if any rank reports an error.

    Every rank must call it; ``error`` is this rank's message or None.  Costs one small
    allgather, so it is used at set-up and checkpoint time, not in ``step``."""
    errors = comm.allgather(error)
    bad = [(r, e) for r, e in enumerate(errors) if e is not None]
    if bad:
        lines = "; ".join(f"rank {r}: {e}" for r, e in bad)
        raise ValueError(f"{what} failed on {len(bad)} of {len(errors)} ranks: {lines}")


def wait_all(reqs: Sequence, timeout: Optional[float], what: str, exc=TimeoutError) -> None:
    """Wait for MPI requests, polling with a growing sleep (an MPI blocking wait spins,
    which starves the other ranks when processes outnumber cores); raise ``exc`` after
    ``timeout`` seconds (None: wait forever)."""
    MPI = mpi()
    pending = [r for r in reqs if r is not None]
    if not pending:
        return
    if MPI.Request.Testall(pending):
        return
    start = time.monotonic()
    nap = 0.0
    while True:
        if MPI.Request.Testall(pending):
            return
        if timeout is not None and time.monotonic() - start > timeout:
            raise exc(f"{what}: no progress after {timeout:.3g} s")
        if nap:
            time.sleep(nap)
        nap = min(2e-3, nap * 2 if nap else 2e-5)


def cancel(req) -> None:
    """Cancel a pending request and release it, ignoring errors (used on timeouts)."""
    try:
        req.Cancel()
        if not req.Test():
            req.Free()
    except Exception:  # pragma: no cover - best effort after a peer vanished
        pass
