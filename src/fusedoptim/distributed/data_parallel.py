"""Synchronous data parallelism (Horovod's DistributedOptimizer, tf MirroredStrategy).

Every rank holds the whole model and optimizer state.  At set-up rank 0's parameters and
optimizer state are broadcast, so all ranks start identical; each step sums the ranks'
gradients with Allreduce, divides by the world size and runs the same optimizer step on
the same bits everywhere, so the ranks stay bit-identical without further messages.
"""
from __future__ import annotations

import hashlib
import inspect
import logging
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from .. import _kernels
from .. import codec as _codec
from ..arena import GradArena, _ArenaBase
from ..optimizer import Optimizer
from ..pipeline import clip_decision, global_norm, scale_
from ..validate import check_bool, positive_or_none
from ._mpi import DEFAULT_TIMEOUT, StepAgreement, agree, hyperparameters, mpi, mpi_type, resolve_comm

__all__ = ["DistributedOptimizer", "broadcast_parameters", "broadcast_optimizer_state",
           "allreduce_gradients", "params_digest", "assert_synchronized", "DEFAULT_BUCKET_BYTES"]

log = logging.getLogger("fusedoptim.distributed")

# torch DDP's default bucket (bucket_cap_mb=25): large enough to amortise per-message
# latency, small enough that the staging buffer is a small fraction of the model.
DEFAULT_BUCKET_BYTES = 25 * 1024 * 1024


def _param_list(params) -> List[np.ndarray]:
    if isinstance(params, _ArenaBase):
        return [params.flat]
    if isinstance(params, Optimizer):
        return list(params.params)
    if isinstance(params, np.ndarray):
        return [params]
    if isinstance(params, dict):
        return list(params.values())
    return list(params)


def _signature(arrays: Sequence[np.ndarray]) -> List[Tuple[Tuple[int, ...], str]]:
    return [(tuple(a.shape), np.dtype(a.dtype).str) for a in arrays]


def broadcast_parameters(params, comm=None, root: int = 0) -> None:
    """Overwrite every rank's parameters with ``root``'s, in place (collective).

    ``params``: a ParamArena (one Bcast of ``flat``), an optimizer (its parameters), a
    dict or a list of writeable C-contiguous float32/float64 arrays.  Shapes and dtypes
    are compared across ranks first; a mismatch raises the same error on every rank."""
    comm = resolve_comm(comm)
    arrays = _param_list(params)
    err = None
    for i, a in enumerate(arrays):
        if not isinstance(a, np.ndarray):
            err = f"params[{i}] is a {type(a).__name__}, not a numpy.ndarray"
        elif not (a.flags.c_contiguous and a.flags.writeable):
            err = f"params[{i}] must be writeable and C-contiguous to be overwritten in place"
        elif a.dtype not in (np.float32, np.float64):
            err = f"params[{i}] has dtype {a.dtype}; float32 or float64 expected"
        if err:
            break
    sigs = comm.allgather(None if err else _signature(arrays))
    if err is None and sigs[root] is not None and sigs[comm.rank] != sigs[root]:
        err = f"parameter shapes/dtypes differ from rank {root}'s"
    agree(comm, err, "broadcast_parameters")
    for a in arrays:
        if a.size:
            comm.Bcast([a, mpi_type(a.dtype)], root=root)


def broadcast_optimizer_state(optimizer: Optimizer, comm=None, root: int = 0) -> None:
    """Make every rank's optimizer state, hyperparameters and ``iterations`` equal to
    ``root``'s (collective).  Callable hyperparameters (an ``lr`` schedule) are not sent:
    each rank keeps its own, which must be the same function.

    The state travels in the checkpoint encoding (``fusedoptim.codec``): root's metadata
    in one ``bcast``, then each state buffer as raw bytes; every rank checks the metadata
    against its own optimizer before any buffer is sent."""
    comm = resolve_comm(comm)
    meta, arrays = _codec.encode(optimizer, skip_callables=True) if comm.rank == root else (None, {})
    meta = comm.bcast(meta, root=root)
    src = f"rank {root}'s state"
    err = None
    if comm.rank != root:
        try:
            _codec.check_optimizer_entry({k: v for k, v in meta.items() if k != "arrays"}, optimizer, src)
            arrays = {k: np.empty(shape, dtype) for k, (dtype, shape) in _codec.read_array_table(meta["arrays"]).items()}
        except ValueError as e:
            err = str(e)
    agree(comm, err, "broadcast_optimizer_state")
    for k in sorted(arrays):
        if arrays[k].size:  # as raw bytes: any dtype a state buffer may have
            comm.Bcast([np.ascontiguousarray(arrays[k]).reshape(-1).view(np.uint8), mpi().BYTE], root=root)
    err = None
    if comm.rank != root:
        try:  # load_state_dict validates everything before changing anything
            optimizer.load_state_dict(_codec.decode(meta, arrays, optimizer, src))
        except (ValueError, TypeError, KeyError, ArithmeticError) as e:
            err = f"{type(e).__name__}: {e}"
    agree(comm, err, "broadcast_optimizer_state (loading rank {}'s state)".format(root))


# --------------------------------------------------------------------- allreduce
class _Plan:
    """How one list of gradients is reduced: consecutive small arrays are packed into a
    reused staging buffer, in buckets of at most ``bucket_bytes``; an array that fills a
    bucket alone (large, or the only one) is reduced in place when writeable."""

    def __init__(self, grads: Sequence[Optional[np.ndarray]], bucket_bytes: int):
        groups: List[List[int]] = []
        cur: List[int] = []
        used = 0
        dtype = None
        for i, g in enumerate(grads):
            if g is None or g.size == 0:
                continue
            dtype = g.dtype
            if g.nbytes >= bucket_bytes:
                groups.append([i])
                continue
            if cur and used + g.nbytes > bucket_bytes:
                groups.append(cur)
                cur, used = [], 0
            cur.append(i)
            used += g.nbytes
        if cur:
            groups.append(cur)
        self.inplace: List[int] = []
        self.buckets: List[List[Tuple[int, int, int]]] = []  # [(index, offset, size)]
        cap = 0
        for grp in groups:
            if len(grp) == 1 and grads[grp[0]].flags.writeable and grads[grp[0]].flags.c_contiguous:
                self.inplace.append(grp[0])
                continue
            off, bucket = 0, []
            for i in grp:
                bucket.append((i, off, grads[i].size))
                off += grads[i].size
            self.buckets.append(bucket)
            cap = max(cap, off)
        self.staging = np.empty(cap, dtype=dtype) if cap else None


def _reduce_list(comm, grads: List[Optional[np.ndarray]], divisor: Optional[int],
                 plan: _Plan) -> List[Optional[np.ndarray]]:
    """Allreduce-sum every gradient in place (divided by ``divisor`` unless None)."""
    MPI = mpi()
    out = list(grads)
    for i in plan.inplace:
        g = grads[i]
        comm.Allreduce(MPI.IN_PLACE, [g, mpi_type(g.dtype)], op=MPI.SUM)
        if divisor is not None:
            np.divide(g, g.dtype.type(divisor), out=g)
    buf = plan.staging
    for bucket in plan.buckets:
        n = bucket[-1][1] + bucket[-1][2]
        for i, off, size in bucket:
            buf[off:off + size] = grads[i].reshape(-1)
        comm.Allreduce(MPI.IN_PLACE, [buf[:n], mpi_type(buf.dtype)], op=MPI.SUM)
        for i, off, size in bucket:
            g = grads[i]
            src = buf[off:off + size].reshape(g.shape)
            if not (g.flags.writeable and g.flags.c_contiguous):
                g = out[i] = np.empty(g.shape, dtype=g.dtype)
            if divisor is not None:
                np.divide(src, g.dtype.type(divisor), out=g)
            else:
                g[...] = src
    return out


def allreduce_gradients(grads, comm=None, average: bool = True,
                        bucket_bytes: int = DEFAULT_BUCKET_BYTES) -> List[Optional[np.ndarray]]:
    """Sum (``average``: then divide by the world size) gradients across ranks, in place.

    ``grads``: a GradArena (one Allreduce of ``flat``), one array, or a list of arrays
    (``None`` entries skipped; every rank must pass the same shapes and the same Nones).
    Arrays of at least ``bucket_bytes`` are reduced in place one by one; smaller ones are
    packed into buckets of ``bucket_bytes``.  Returns the list of reduced arrays: the
    arrays passed, except read-only ones, which are replaced by new arrays."""
    comm = resolve_comm(comm)
    divisor = comm.size if average and comm.size > 1 else None
    if isinstance(grads, GradArena):
        _reduce_list(comm, [grads.flat], divisor, _Plan([grads.flat], 1))
        return [grads.flat]
    lst = [grads] if isinstance(grads, np.ndarray) else list(grads)
    return _reduce_list(comm, lst, divisor, _Plan(lst, bucket_bytes))


def _takes_grad_scale(optimizer: Optimizer) -> bool:
    """Whether ``optimizer.step`` applies a ``grad_scale`` inside its kernel."""
    try:
        return "grad_scale" in inspect.signature(optimizer.step).parameters
    except (TypeError, ValueError):  # pragma: no cover
        return False


def _check_clip_options(global_clipnorm, skip_nonfinite) -> None:
    positive_or_none(global_clipnorm, "global_clipnorm")
    check_bool(skip_nonfinite, "skip_nonfinite")


def _clip_decision(owner, norm: float, scale: float) -> Optional[float]:
    """Record ``norm`` on ``owner``; return the gradient scale for the step (the
    pipeline's Keras clip factor), or None when the step is skipped (non-finite norm with
    ``skip_nonfinite``)."""
    owner.last_grad_norm = norm
    out = clip_decision(norm, scale, owner.global_clipnorm, owner.skip_nonfinite)
    if out is None:
        owner.nonfinite_count += 1
        owner.last_step_skipped = True
        log.warning("non-finite gradient norm (%s) at iteration %d: step skipped on every rank",
                    norm, owner.optimizer.iterations)
    return out


# ------------------------------------------------------------------- consistency
def params_digest(params) -> str:
    """SHA-256 of the parameters' bytes (shapes and dtypes included)."""
    h = hashlib.sha256()
    for a in _param_list(params):
        h.update(repr((a.shape, a.dtype.str)).encode())
        h.update(np.ascontiguousarray(a).view(np.uint8).reshape(-1).data)
    return h.hexdigest()


def assert_synchronized(params, comm=None) -> str:
    """Collective: raise on every rank unless all ranks' parameters are bit-identical.
    Returns the common digest."""
    comm = resolve_comm(comm)
    digests = comm.allgather(params_digest(params))
    if len(set(digests)) != 1:
        differ = [r for r, d in enumerate(digests) if d != digests[0]]
        raise AssertionError(f"parameters differ from rank 0's on ranks {differ}")
    return digests[0]


# -------------------------------------------------------------------- the wrapper
class DistributedOptimizer:
    """Synchronous data-parallel wrapper around any fusedoptim optimizer.

    ``DistributedOptimizer(opt, comm=None, average=True, bucket_bytes=25 MiB)`` broadcasts
    rank 0's parameters and optimizer state (``broadcast=False`` skips it), then each
    ``step(grads)`` sums the gradients across ranks (in place), and calls
    ``opt.step(grads, grad_scale=1/world)``: the averaging is fused into the update.
    Every rank must call ``step`` the same number of times with gradients of the same
    shapes (collective).  Each ``step`` / ``allreduce`` first checks that they do, with
    one small allgather: which gradients are present, their shapes and dtypes, the
    iteration, and the settings and hyperparameters (callables excepted) must agree, and
    a rank that refuses its input makes every rank fail; otherwise every rank raises the
    same ``RanksDisagreeError`` naming what differs on which ranks.  A rank that does
    not reach the step within ``timeout`` seconds (it skipped a step or left; default
    600, None: wait forever) makes the others raise ``CollectiveTimeoutError``.

    ``grads`` is what ``opt.step`` takes (a list, one per parameter); for an optimizer over
    ``[arena.flat]`` pass ``[garena.flat]`` or the GradArena itself: one Allreduce.  A
    GradArena also works for an optimizer over ``arena.params()`` (still one Allreduce).
    After ``step`` the arrays hold the sum over ranks; ``allreduce(grads)`` averages
    without stepping.

    ``global_clipnorm`` (clip the averaged gradient to this global L2 norm, factor
    ``c / max(norm, c)``) and ``skip_nonfinite`` (skip the step on every rank when the
    averaged gradient holds an inf or nan) are decided on the reduced gradient, which has
    the same bits on every rank, so every rank agrees.  The wrapped optimizer's own
    ``global_clipnorm`` / ``skip_nonfinite`` options see the reduced gradient too and are
    equally safe.  ``last_grad_norm``, ``nonfinite_count`` and ``last_step_skipped`` report.

    Attribute access falls through to the wrapped optimizer (``param_groups``, ``state``,
    ``iterations``, ``state_dict``, ``load_state_dict``); after loading a checkpoint on one
    rank only, call ``broadcast()``.
    """

    def __init__(self, optimizer: Optimizer, comm=None, average: bool = True,
                 bucket_bytes: int = DEFAULT_BUCKET_BYTES, *, broadcast: bool = True, root: int = 0,
                 global_clipnorm: Optional[float] = None, skip_nonfinite: bool = False,
                 timeout: Optional[float] = DEFAULT_TIMEOUT):
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"DistributedOptimizer wraps a fusedoptim Optimizer, got {type(optimizer).__name__}")
        if isinstance(bucket_bytes, bool) or not isinstance(bucket_bytes, int) or bucket_bytes <= 0:
            raise ValueError(f"bucket_bytes must be a positive int, got {bucket_bytes!r}")
        _check_clip_options(global_clipnorm, skip_nonfinite)
        self.optimizer = optimizer
        self.comm = resolve_comm(comm)
        self.average = bool(average)
        self.bucket_bytes = bucket_bytes
        self.global_clipnorm = None if global_clipnorm is None else float(global_clipnorm)
        self.skip_nonfinite = bool(skip_nonfinite)
        self._norm: Optional[float] = None
        self._skips = 0
        self._skipped = False
        self._plans: Dict[tuple, _Plan] = {}
        self._fused_scale = _takes_grad_scale(optimizer)
        self._agreement = StepAgreement(self.comm, "DistributedOptimizer", timeout)
        if broadcast:
            self.broadcast(root)

    def __getattr__(self, name):
        if name == "optimizer":  # not yet set: don't recurse
            raise AttributeError(name)
        return getattr(self.optimizer, name)

    @property
    def rank(self) -> int:
        return self.comm.rank

    @property
    def world_size(self) -> int:
        return self.comm.size

    @property
    def nonfinite_count(self) -> int:
        """Steps skipped for a non-finite gradient, by this wrapper or the optimizer's own guard."""
        return self._skips + getattr(self.optimizer, "nonfinite_count", 0)

    @nonfinite_count.setter
    def nonfinite_count(self, value: int) -> None:
        self._skips = value - getattr(self.optimizer, "nonfinite_count", 0)

    @property
    def last_step_skipped(self) -> bool:
        return self._skipped or bool(getattr(self.optimizer, "last_step_skipped", False))

    @last_step_skipped.setter
    def last_step_skipped(self, value: bool) -> None:
        self._skipped = bool(value)

    @property
    def last_grad_norm(self) -> Optional[float]:
        """The averaged gradient's global norm of the last step (this wrapper's, else the optimizer's)."""
        return self._norm if self._norm is not None else getattr(self.optimizer, "last_grad_norm", None)

    @last_grad_norm.setter
    def last_grad_norm(self, value: Optional[float]) -> None:
        self._norm = value

    def _as_list(self, grads, params: List[np.ndarray]) -> List[Optional[np.ndarray]]:
        if isinstance(grads, GradArena):
            if len(params) == 1 and params[0].shape == grads.flat.shape:
                return [grads.flat]
            if len(params) == len(grads):
                return grads.grads()
            raise ValueError(f"the optimizer has {len(params)} parameters; a GradArena of {len(grads)} "
                             f"tensors fits an optimizer over [arena.flat] or arena.params()")
        if isinstance(grads, np.ndarray):
            return [grads]
        if isinstance(grads, Mapping):      # {name: gradient} of an optimizer with named parameters
            return self.optimizer.registry.grads_by_name(grads)
        return list(grads)

    def _settings(self, arena: bool) -> tuple:
        """What every rank must have alike besides the gradients (the agreement check);
        a GradArena is reduced as one buffer, a list in buckets."""
        return (("optimizer", type(self.optimizer).__name__), ("average", self.average),
                ("bucket_bytes", self.bucket_bytes), ("global_clipnorm", self.global_clipnorm),
                ("skip_nonfinite", self.skip_nonfinite), ("gradients passed as", "GradArena" if arena else "list"),
                *hyperparameters(self.optimizer))

    def _reduce(self, grads, divisor: Optional[int], op: str) -> List[Optional[np.ndarray]]:
        opt = self.optimizer
        params = opt.params
        lst: List[Optional[np.ndarray]] = []
        key = err = None
        try:
            lst = self._as_list(grads, params)
            if len(lst) != len(params):
                raise ValueError(f"expected {len(params)} gradients, one per parameter, got {len(lst)}")
            _kernels.check_grads(params, lst, opt.labels)
            # what the ranks must agree on (shape, dtype) and the plan's key (+ writeable)
            key = tuple(None if g is None else (g.shape, g.dtype, g.flags.writeable) for g in lst)
        except (ValueError, TypeError) as e:
            err = e
        arena = isinstance(grads, GradArena)
        self._agreement(op, opt.iterations, key, self._settings(arena), err, lambda: opt.labels)
        if arena:  # one Allreduce of the whole buffer, whatever the optimizer
            _reduce_list(self.comm, [grads.flat], divisor, _Plan([grads.flat], 1))
            return lst
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = _Plan(lst, self.bucket_bytes)
        return _reduce_list(self.comm, lst, divisor, plan)

    def allreduce(self, grads) -> List[Optional[np.ndarray]]:
        """Sum (and, with ``average``, divide by the world size) ``grads`` across ranks in
        place, without stepping (collective).  Returns the list the optimizer takes."""
        world = self.comm.size
        return self._reduce(grads, world if self.average and world > 1 else None, "allreduce")

    def step(self, grads, closure: Optional[Callable] = None):
        """Sum ``grads`` across ranks (in place), then step with the average (and the
        clip factor) applied inside the kernel (collective).  Returns ``closure()``."""
        loss = closure() if closure is not None else None
        world = self.comm.size
        scale = 1.0 / world if self.average and world > 1 else 1.0
        self._skipped = False
        if self._fused_scale:
            reduced = self._reduce(grads, None, "step")
        else:  # an optimizer without grad_scale: divide in place
            reduced = self._reduce(grads, world if scale != 1.0 else None, "step")
            scale = 1.0
        if self.global_clipnorm is not None or self.skip_nonfinite:
            scale = _clip_decision(self, global_norm(reduced) * scale, scale)
            if scale is None:
                return loss
        if self._fused_scale:
            self.optimizer.step(reduced, grad_scale=scale)
        else:
            scale_(reduced, scale)
            self.optimizer.step(reduced)
        return loss

    def apply_gradients(self, grads_and_vars) -> None:
        """Keras spelling of ``step`` (collective).  The wrapped optimizer must already
        hold every variable (build it with its parameters), so all ranks agree on them."""
        grads, _ = self.optimizer.registry.gradients_of_pairs(list(grads_and_vars), adopt=False)
        self.step(grads)

    def broadcast(self, root: int = 0) -> None:
        """Broadcast parameters and optimizer state from ``root`` (at start-up, and after
        loading a checkpoint on one rank) (collective)."""
        broadcast_parameters(self.optimizer, self.comm, root)
        broadcast_optimizer_state(self.optimizer, self.comm, root)

    def __repr__(self) -> str:
        return f"DistributedOptimizer(rank {self.comm.rank}/{self.comm.size}, {self.optimizer!r})"
