"""Distributed training over MPI (mpi4py): synchronous data parallelism, ZeRO-1 optimizer
state sharding and an asynchronous parameter server.

Install the extra (``pip install 'fusedoptim[mpi]'``: mpi4py and the mpich wheel) and
launch with ``mpiexec -n 2 python -m mpi4py train.py`` (``-m mpi4py`` aborts every rank
when one raises, instead of leaving the others waiting in a collective).  This package
imports without mpi4py; the MPI calls import it on first use, and
``consolidate_checkpoint`` needs no MPI at all.

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
from .clip import clip_by_global_norm, global_norm
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
    "DEFAULT_BUCKET_BYTES",
]
