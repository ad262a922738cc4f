"""``fusedoptim demo --distributed``: the demo's data parallelism over MPI.

Launched as ``mpiexec -n N python -m fusedoptim demo --distributed``.  Every rank builds
the same model from the same seed and loads the same data set; each global batch (the one
a single process would take) is cut into N contiguous slices, rank r backpropagates slice
r, and ``fusedoptim.distributed.DistributedOptimizer.allreduce`` averages the gradients
(one Allreduce) before every rank takes the same step.  Rank 0 alone prints and writes
files.  mpi4py is imported only here, only with ``--distributed``.
"""
from __future__ import annotations

import os
import sys
import traceback
from typing import List, Tuple

import numpy as np

from ._util import DemoError

__all__ = ["MPI_HINT", "World", "connect", "launched_size", "bounds", "slice_sizes", "slice_weight"]

MPI_HINT = "pip install 'fusedoptim[mpi]'"

# set by the launchers for each process they start: MPICH/Hydra and Intel MPI, Open MPI
_LAUNCHER_SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE")


def launched_size() -> int:
    """How many processes an MPI launcher started this one with (1 when not under one)."""
    for var in _LAUNCHER_SIZE_VARS:
        try:
            return max(1, int(os.environ[var]))
        except (KeyError, ValueError):
            continue
    return 1


def connect() -> "World":
    """MPI.COMM_WORLD as a World, or a DemoError naming the extra to install."""
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise DemoError(f"--distributed needs mpi4py and an MPI library, which are not installed ({e}); "
                        f"install them with: {MPI_HINT} (mpi4py and the mpich wheel, which provides "
                        f"mpiexec), then run: mpiexec -n 2 python -m fusedoptim demo --distributed") from None
    return World(MPI.COMM_WORLD, MPI)


def bounds(rank: int, world: int, m: int) -> Tuple[int, int]:
    """Rank ``rank``'s contiguous slice ``[lo, hi)`` of a global batch of ``m`` samples;
    slice sizes differ by at most one (a rank gets none when ``m < world``)."""
    return rank * m // world, (rank + 1) * m // world


def slice_sizes(m: int, world: int) -> List[int]:
    """Every rank's slice size of a global batch of ``m`` samples, in rank order."""
    return [hi - lo for lo, hi in (bounds(r, world, m) for r in range(world))]


def slice_weight(m_local: int, m_global: int, world: int) -> float:
    """Factor for a rank's mean gradient over ``m_local`` of ``m_global`` samples so that the
    average over ``world`` ranks is the mean gradient over the global batch:
    ``(1/world) sum_r world m_r/m mean_r = (1/m) sum_r sum_{i in r} g_i``.
    Exactly 1.0 when the batch splits evenly (then the gradient is not touched)."""
    if m_global == 0 or m_local * world == m_global:
        return 1.0
    return world * m_local / m_global


class World:
    """This process's place in the job and the few collectives the demo needs besides the
    gradient Allreduce (which DistributedOptimizer does)."""

    def __init__(self, comm, MPI):
        self.comm = comm
        self.MPI = MPI
        self.rank = comm.Get_rank()
        self.size = comm.Get_size()

    @property
    def root(self) -> bool:
        return self.rank == 0

    def bounds(self, m: int) -> Tuple[int, int]:
        """This rank's slice ``[lo, hi)`` of a global batch of ``m`` samples (see ``bounds``)."""
        return bounds(self.rank, self.size, m)

    def sum(self, *values: float) -> Tuple[float, ...]:
        """Element-wise sum over ranks of a few float64 numbers (collective)."""
        buf = np.array(values, dtype=np.float64)
        self.comm.Allreduce(self.MPI.IN_PLACE, [buf, self.MPI.DOUBLE], op=self.MPI.SUM)
        return tuple(buf.tolist())

    def gather(self, obj) -> List:
        """Every rank's ``obj``, in rank order, on every rank (collective)."""
        return self.comm.allgather(obj)

    def local_size(self) -> int:
        """Ranks on this machine (sharing its cores), collective."""
        node = self.comm.Split_type(self.MPI.COMM_TYPE_SHARED)
        try:
            return node.Get_size()
        finally:
            node.Free()

    def library(self) -> str:
        """First line of the MPI library's version string (e.g. ``MPICH Version: 4.2.0``)."""
        try:
            text = self.MPI.Get_library_version()
        except Exception:  # pragma: no cover - very old MPI
            return "MPI"
        return " ".join(text.strip().splitlines()[0].split()) if text.strip() else "MPI"

    def abort(self, code: int = 1) -> None:
        """After an error on this rank: print it and end every rank (the others would wait
        forever in the next collective).  Does not return."""
        sys.stdout.flush()
        print(f"fusedoptim demo: rank {self.rank} of {self.size} failed; aborting every rank",
              file=sys.stderr)
        traceback.print_exc()
        sys.stderr.flush()
        self.comm.Abort(code)
