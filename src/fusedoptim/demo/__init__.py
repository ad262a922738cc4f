"""Demos of fusedoptim on NumPy models (``python -m fusedoptim demo``).

``fusedoptim demo [options]``        an MLP on handwritten digits (or ``--mnist DIR``) with
                                     every optimizer from the same start: time, time inside
                                     ``opt.step``, epochs to a target accuracy, curves
``fusedoptim demo --state-dtype float32,bfloat16,int8 [options]``
                                     the same, Adam (or ``--optimizers``) once per optimizer-state
                                     dtype, side by side (``python -m fusedoptim.bench.quality``
                                     asks the question over seeds)
``mpiexec -n N python -m fusedoptim demo --distributed [options]``
                                     the same, data parallel over MPI: each batch split
                                     across the ranks, gradients averaged by
                                     ``fusedoptim.distributed.DistributedOptimizer``
``fusedoptim demo toy2d [options]``  the tutorials' 2-11-1 network on a 2-D point cloud,
                                     with and without L2 regularization: decision boundaries

Optional packages (``pip install 'fusedoptim[demo]'``): scikit-learn (the digits),
matplotlib (the PNGs), tqdm (progress bars); ``pip install 'fusedoptim[mpi]'``
(mpi4py and MPICH) for ``--distributed``.
"""
from ._util import DemoError
from .cli import main

__all__ = ["main", "DemoError"]
