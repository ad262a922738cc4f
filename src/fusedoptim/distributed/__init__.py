"""Distributed training over MPI (mpi4py): synchronous data parallelism, ZeRO-1 optimizer
state sharding and an asynchronous parameter server.

Install the extra (``pip install 'fusedoptim[mpi]'``: mpi4py and the mpich wheel) and
launch with ``mpiexec -n 2 python train.py`` (or ``python -m mpi4py train.py``).  This
package imports without mpi4py; the MPI calls import it on first use, and
``consolidate_checkpoint`` needs no MPI at all.

Failures end the job instead of hanging it: on first use the package wraps
``sys.excepthook`` so an uncaught exception on any rank aborts every rank
(``abort_on_error(False)`` or ``FUSEDOPTIM_MPI_ABORT=0`` to opt out); every step of
DistributedOptimizer and ZeroOptimizer checks with one small allgather that the ranks
agree (gradients present, shapes, dtypes, iteration, settings) and raises the same
``RanksDisagreeError`` everywhere when not, or ``CollectiveTimeoutError`` when a rank
does not arrive within ``timeout`` seconds; the parameter server refuses a worker whose
layout or gradient does not match its own.

=================================  ==========================================================
``DistributedOptimizer(opt)``      synchronous DP: one Allreduce (or bucketed ones) + step
``ZeroOptimizer(Adam, arena)``     ZeRO-1: reduce-scatter, step own 1/world shard, allgather
``ParameterServer`` / ``PSWorker``  asynchronous: rank 0 applies gradients as they arrive
``broadcast_parameters``           rank 0's parameters to every rank
``broadcast_optimizer_state``      rank 0's optimizer state to every rank
``allreduce_gradients``            average gradients in place
``assert_synchronized``            check that every rank holds the same parameter bits
=================================  ==========================================================
"""
from ._mpi import CollectiveTimeoutError, RanksDisagreeError, abort_on_error
from ..pipeline import clip_by_global_norm, global_norm
from .data_parallel import (DEFAULT_BUCKET_BYTES, DistributedOptimizer, allreduce_gradients,
                            assert_synchronized, broadcast_optimizer_state, broadcast_parameters,
                            params_digest)
from .param_server import ParameterServer, PSWorker, ServerTimeoutError, WorkerLostError, run_worker
from .zero import ZeroOptimizer, consolidate_checkpoint, shard_bounds

__all__ = [
    "DistributedOptimizer", "ZeroOptimizer", "ParameterServer", "PSWorker", "run_worker",
    "broadcast_parameters", "broadcast_optimizer_state", "allreduce_gradients",
    "assert_synchronized", "params_digest", "clip_by_global_norm", "global_norm",
    "consolidate_checkpoint", "shard_bounds", "WorkerLostError", "ServerTimeoutError",
    "DEFAULT_BUCKET_BYTES", "RanksDisagreeError", "CollectiveTimeoutError", "abort_on_error",
]
