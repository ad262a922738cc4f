"""ZeRO stage 1 (torch's ZeroRedundancyOptimizer): optimizer state sharded across ranks.

Every rank keeps the whole parameter vector (``arena.flat``) but optimizer state only for
its contiguous 1/world slice.  A step is::

    Reduce_scatter(sum) of the flat gradient -> each rank gets its slice, divides by world
    optimizer.step on the slice (the inner optimizer's one parameter is the slice view)
    Allgatherv of the slices, in place into arena.flat

The element-wise update rules make the result bit-identical to synchronous data
parallelism with the same optimizer over ``[arena.flat]``, with 1/world of the state
memory per rank.  Checkpoints are one ``.npz`` per rank plus a JSON manifest (no pickle);
``consolidate_checkpoint`` reassembles them in one process, ``load_checkpoint``
reshards them for any world size.

8-bit state (``state_dtype="int8"``, blocks of ``block_size`` elements with one absmax
each) is sharded at block boundaries: every shard but the last starts and ends at a
multiple of ``block_size``, so a shard's blocks are blocks of the whole flat vector, never
a piece of one.  Resharding such a checkpoint to another world size (or consolidating it)
regroups whole blocks (codes and absmax copied, nothing decoded or re-encoded): lossless,
and with nearest rounding (int8's default) the run continues with the same bits as one
that never changed its world size.  Stochastic rounding draws its bits from the element's
index in its shard, so a resharded stochastic run continues with other (equally valid)
random bits.
"""
from __future__ import annotations

import json
import logging
import math
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .. import codec as _codec
from ..archive import CheckpointError, read_archive, write_archive
from ..arena import GradArena, _aligned_empty, _ArenaBase
from ..lowp import ABSMAX_SUFFIX
from ..optimizer import Optimizer
from ..pipeline import scale_, sum_of_squares
from ._mpi import DEFAULT_TIMEOUT, StepAgreement, agree, hyperparameters, mpi, mpi_type, resolve_comm
from .data_parallel import _check_clip_options, _clip_decision, _takes_grad_scale

__all__ = ["ZeroOptimizer", "shard_bounds", "consolidate_checkpoint", "CHECKPOINT_FORMAT"]

log = logging.getLogger("fusedoptim.distributed")

CHECKPOINT_FORMAT = "fusedoptim-zero1-v1"   # the manifest's format
SHARD_FORMAT = "fusedoptim.zero1-shard"     # each rank's file: fusedoptim.archive + fusedoptim.codec
SHARD_VERSION = 2
_MANIFEST = "zero-manifest.json"


def shard_bounds(numel: int, world: int, align: int = 1) -> List[Tuple[int, int]]:
    """Contiguous ``[lo, hi)`` slices of ``range(numel)``, one per rank: equal lengths
    rounded up to a multiple of ``align`` elements (so each slice starts aligned), the
    last ones shorter or empty."""
    if world < 1 or align < 1 or numel < 0:
        raise ValueError(f"shard_bounds: need numel >= 0, world >= 1, align >= 1; got {numel}, {world}, {align}")
    per = -(-numel // world)
    per = -(-per // align) * align
    return [(min(r * per, numel), min((r + 1) * per, numel)) for r in range(world)]


def _shard_align(itemsize: int, hyper: dict) -> int:
    """The alignment of the shard bounds: 64 bytes, and whole 8-bit blocks for
    ``state_dtype="int8"`` (a block never spans two shards)."""
    align = max(1, 64 // itemsize)
    sdt = hyper.get("state_dtype", "float32")
    if (sdt if isinstance(sdt, str) else getattr(sdt, "name", getattr(sdt, "__name__", None))) == "int8":
        from .._kernels import q8_check_block
        align = math.lcm(align, q8_check_block(hyper.get("block_size", 256)))
    return align


def _block_of(sd: dict) -> Optional[int]:
    """The 8-bit block size of a shard's state_dict (None: not 8-bit state)."""
    storage = sd.get("storage")
    return storage.get("block_size") if isinstance(storage, dict) else None


def _shard_file(rank: int, world: int) -> str:
    return f"zero-rank{rank:05d}-of-{world:05d}.npz"


class ZeroOptimizer:
    """ZeRO-1 data parallelism over a flat parameter arena (collective).

    ``ZeroOptimizer(optimizer_class, arena, comm=None, **hyper)`` builds
    ``optimizer_class([shard], **hyper)`` on each rank, where ``shard`` is this rank's
    slice of ``arena.flat`` (``arena``: a ParamArena or a writeable contiguous 1-D
    float array).  Rank ``root``'s parameters are broadcast first (``broadcast=False``
    skips it).  ``step(grads)`` takes the GradArena, its ``flat`` or ``[flat]``.

    ``average``, ``global_clipnorm`` and ``skip_nonfinite`` behave as in
    DistributedOptimizer; the global norm is summed from per-rank partials with
    ``math.fsum`` after an Allgather, so every rank takes the same decision.  (The inner
    optimizer's own ``global_clipnorm`` / ``clipnorm`` / ``skip_nonfinite`` would only see
    one shard: these keywords go to ZeroOptimizer itself, and ``clipnorm`` is refused.)

    Each ``step`` / ``reduce_scatter`` first checks, with one small allgather, that every
    rank passes a valid gradient in the same iteration with the same settings and
    hyperparameters; if not, every rank raises the same ``RanksDisagreeError``, and a
    rank missing for ``timeout`` seconds (default 600, None: wait forever) makes the
    others raise ``CollectiveTimeoutError``, as in DistributedOptimizer.

    Attributes: ``optimizer`` (the shard's optimizer), ``shard`` (this rank's ``(lo, hi)``),
    ``bounds`` (all ranks'), ``param_groups`` and ``iterations`` (the inner optimizer's:
    change ``param_groups[0]["lr"]`` on every rank alike).
    """

    def __init__(self, optimizer_class, arena, comm=None, *, average: bool = True,
                 global_clipnorm: Optional[float] = None, skip_nonfinite: bool = False,
                 broadcast: bool = True, root: int = 0, timeout: Optional[float] = DEFAULT_TIMEOUT, **hyper):
        if not (isinstance(optimizer_class, type) and issubclass(optimizer_class, Optimizer)):
            raise TypeError(f"optimizer_class must be a fusedoptim Optimizer class (e.g. fusedoptim.Adam), "
                            f"got {optimizer_class!r}")
        _check_clip_options(global_clipnorm, skip_nonfinite)
        shard_only = sorted(k for k in ("clipnorm",) if hyper.get(k) is not None)
        if shard_only:
            raise ValueError("clipnorm would clip each rank's shard of the gradient separately; "
                             "pass global_clipnorm to ZeroOptimizer (it clips the whole gradient)")
        self.comm = comm = resolve_comm(comm)
        self._agreement = StepAgreement(comm, "ZeroOptimizer", timeout)
        self.arena = arena if isinstance(arena, _ArenaBase) else None
        flat = arena.flat if isinstance(arena, _ArenaBase) else arena
        err = None
        if not isinstance(flat, np.ndarray) or flat.ndim != 1:
            err = "arena must be a ParamArena or a 1-D numpy array"
        elif flat.dtype not in (np.float32, np.float64):
            err = f"parameters have dtype {flat.dtype}; float32 or float64 expected"
        elif not (flat.flags.c_contiguous and flat.flags.writeable):
            err = "the flat parameter array must be writeable and C-contiguous"
        info = None if err else (int(flat.size), flat.dtype.str)
        infos = comm.allgather(info)
        if err is None and infos[root] is not None and info != infos[root]:
            err = f"flat parameters {info} differ from rank {root}'s {infos[root]} (size, dtype)"
        agree(comm, err, "ZeroOptimizer")
        self.flat = flat
        self.average = bool(average)
        self.global_clipnorm = None if global_clipnorm is None else float(global_clipnorm)
        self.skip_nonfinite = bool(skip_nonfinite)
        self.last_grad_norm: Optional[float] = None
        self.nonfinite_count = 0
        self.last_step_skipped = False
        self._mpitype = mpi_type(flat.dtype)
        world, rank = comm.size, comm.rank
        self.bounds = shard_bounds(flat.size, world, align=_shard_align(flat.itemsize, hyper))
        self.shard = self.bounds[rank]
        self._counts = [hi - lo for lo, hi in self.bounds]
        self._displs = [lo for lo, _ in self.bounds]
        lo, hi = self.shard
        if broadcast and flat.size:
            comm.Bcast([flat, self._mpitype], root=root)
        self.shard_param = flat[lo:hi]
        self.grad_shard = _aligned_empty(hi - lo, flat.dtype, 64)
        self.grad_shard[...] = 0
        self._optimizer_class, self._hyper = optimizer_class, dict(hyper)
        self.optimizer = optimizer_class([self.shard_param], **hyper)
        self._fused_scale = _takes_grad_scale(self.optimizer)
        self._norm_parts = np.zeros(world, dtype=np.float64)

    # -------------------------------------------------------------- delegation
    @property
    def param_groups(self):
        return self.optimizer.param_groups

    @property
    def iterations(self) -> int:
        return self.optimizer.iterations

    @property
    def state(self):
        return self.optimizer.state

    @property
    def rank(self) -> int:
        return self.comm.rank

    @property
    def world_size(self) -> int:
        return self.comm.size

    def state_bytes(self) -> int:
        """Bytes of optimizer state buffers held by this rank."""
        st = self.optimizer.state.get(self.shard_param) or {}
        return sum(v.nbytes for v in st.values() if isinstance(v, np.ndarray))

    # ------------------------------------------------------------------ step
    def _flat_grad(self, grads) -> np.ndarray:
        if isinstance(grads, GradArena):
            g = grads.flat
        elif isinstance(grads, np.ndarray):
            g = grads
        else:
            lst = list(grads)
            if len(lst) != 1:
                raise ValueError(f"ZeroOptimizer.step takes the flat gradient (a GradArena, its flat, or "
                                 f"[flat]), got a list of {len(lst)}")
            g = lst[0]
        if not isinstance(g, np.ndarray):
            raise TypeError(f"gradient must be a numpy.ndarray, got {type(g).__name__}")
        if g.shape != self.flat.shape:
            raise ValueError(f"gradient shape {g.shape} does not match the flat parameters' {self.flat.shape}")
        if g.dtype != self.flat.dtype:
            raise TypeError(f"gradient dtype {g.dtype} does not match the parameters' {self.flat.dtype}")
        if not g.flags.c_contiguous:
            raise ValueError("gradient must be C-contiguous")
        if g.size and np.shares_memory(g, self.flat):
            raise ValueError("the gradient shares memory with the parameters")
        return g

    def _settings(self) -> tuple:
        """What every rank must have alike besides the gradient (the agreement check)."""
        return (("optimizer", type(self.optimizer).__name__), ("average", self.average),
                ("global_clipnorm", self.global_clipnorm), ("skip_nonfinite", self.skip_nonfinite),
                *hyperparameters(self.optimizer))

    def _reduce_scatter_sum(self, grads, op: Optional[str] = None) -> np.ndarray:
        """Reduce-scatter the flat gradient; with ``op`` (``"step"``, ``"reduce_scatter"``)
        after the ranks' agreement check."""
        MPI = mpi()
        if op is None:
            g = self._flat_grad(grads)
        else:
            g = err = None
            try:
                g = self._flat_grad(grads)
            except (ValueError, TypeError) as e:
                err = e
            sig = None if err else ((g.shape, g.dtype),)
            self._agreement(op, self.optimizer.iterations, sig, self._settings(), err, lambda: ["flat gradient"])
        t = self._mpitype
        self.comm.Reduce_scatter([g, t], [self.grad_shard, t], recvcounts=self._counts, op=MPI.SUM)
        return self.grad_shard

    def reduce_scatter(self, grads) -> np.ndarray:
        """Sum (and, with ``average``, divide by the world size) the flat gradient across
        ranks into this rank's shard, ``grad_shard``, without stepping (collective)."""
        gs = self._reduce_scatter_sum(grads, "reduce_scatter")
        if self.average and self.comm.size > 1 and gs.size:
            np.divide(gs, gs.dtype.type(self.comm.size), out=gs)
        return gs

    def _global_norm(self) -> float:
        mine = np.array([sum_of_squares([self.grad_shard])], dtype=np.float64)
        self.comm.Allgather([mine, mpi().DOUBLE], [self._norm_parts, mpi().DOUBLE])
        return math.sqrt(math.fsum(self._norm_parts.tolist()))

    def step(self, grads, closure=None):
        """Reduce-scatter the flat gradient, step this rank's shard (average and clip
        factor applied inside the kernel), all-gather the parameters into ``arena.flat``
        (collective).  Returns ``closure()`` if given."""
        loss = closure() if closure is not None else None
        world = self.comm.size
        scale = 1.0 / world if self.average and world > 1 else 1.0
        self.last_step_skipped = False
        gs = self._reduce_scatter_sum(grads, "step")
        if not self._fused_scale and scale != 1.0:  # an optimizer without grad_scale: divide in place
            np.divide(gs, gs.dtype.type(world), out=gs)
            scale = 1.0
        if self.global_clipnorm is not None or self.skip_nonfinite:
            # math.fsum of the allgathered partials: the same float on every rank
            scale = _clip_decision(self, self._global_norm() * scale, scale)
            if scale is None:
                return loss
        if self._fused_scale:
            self.optimizer.step([gs], grad_scale=scale)
        else:
            scale_([gs], scale)
            self.optimizer.step([gs])
        self.allgather_params()
        return loss

    def allgather_params(self) -> None:
        """Share every rank's shard of the parameters with all ranks, in place (collective)."""
        MPI = mpi()
        if self.flat.size:
            self.comm.Allgatherv(MPI.IN_PLACE, [self.flat, (self._counts, self._displs), self._mpitype])

    # ------------------------------------------------------------ state dicts
    def state_dict(self) -> dict:
        """This rank's shard optimizer ``state_dict`` (arrays cover ``self.shard`` only)."""
        return self.optimizer.state_dict()

    def consolidated_state_dict(self, root: int = 0) -> Optional[dict]:
        """Collective: the full state dict, for ``optimizer_class([arena.flat])``, on
        ``root`` (None on the other ranks).  Gathers every state buffer: root needs memory
        for the whole state."""
        sd = self.optimizer.state_dict()
        st = sd["state"].get(0, {})
        names = sorted(k for k, v in st.items() if isinstance(v, np.ndarray))
        full: Dict[str, Any] = {k: v for k, v in st.items() if not isinstance(v, np.ndarray)}
        reg = self.optimizer.registry
        if reg.state_dtype == "int8":
            # 8-bit state: whole blocks per shard (_shard_align), so the shards' codes and
            # absmax arrays concatenate into the flat vector's (a lossless regroup)
            kinds = self.comm.allgather([(k, st[k].dtype.str) for k in names])
            if any(k != kinds[0] for k in kinds if k):
                raise ValueError("consolidated_state_dict: some shards keep float32 state (below min_8bit_size), "
                                 "others 8-bit state; save_checkpoint and load it with the same world size")
        MPI = mpi()
        for name in names:
            counts, displs, dt = self._counts, self._displs, self.flat.dtype
            if name.endswith(ABSMAX_SUFFIX):
                counts = [-(-c // reg.block_size) for c in counts]
                displs = [d // reg.block_size for d in displs]
                dt = np.dtype(np.float32)
            elif st[name].dtype == np.uint8:
                dt = np.dtype(np.uint8)
            mtype = MPI.BYTE if dt == np.uint8 else mpi_type(dt)
            buf = np.empty(sum(counts), dtype=dt) if self.comm.rank == root else None
            recv = [buf, (counts, displs), mtype] if buf is not None else None
            self.comm.Gatherv([np.ascontiguousarray(st[name]), mtype], recv, root=root)
            full[name] = buf
        if self.comm.rank != root:
            return None
        sd["state"] = {0: full} if st else {}
        return sd

    # ------------------------------------------------------------ checkpoints
    def save_checkpoint(self, directory: str, include_params: bool = True) -> None:
        """Collective: every rank writes its shard's optimizer state (and parameter slice)
        to ``directory/zero-rankRRRRR-of-WWWWW.npz`` (the checkpoint container and state
        codec of ``fusedoptim.save``, written atomically); rank 0 then writes the manifest
        ``zero-manifest.json``.  Callable hyperparameters (an ``lr`` function) are not
        saved: the loading optimizer keeps its own."""
        comm = self.comm
        err = None
        try:
            os.makedirs(directory, exist_ok=True)
            enc = _codec.Encoder()
            lo, hi = self.shard
            meta = {"format": SHARD_FORMAT, "version": SHARD_VERSION, "rank": comm.rank, "world": comm.size,
                    "lo": lo, "hi": hi, "numel": int(self.flat.size), "dtype": self.flat.dtype.str,
                    "optimizer": _codec.encode_optimizer(self.optimizer, enc, skip_callables=True),
                    "param": enc.add_array("param", self.shard_param, "param") if include_params else None}
            write_archive(os.path.join(directory, _shard_file(comm.rank, comm.size)), meta, enc.arrays)
        except (OSError, TypeError, ValueError) as e:
            err = f"{type(e).__name__}: {e}"
        agree(comm, err, "ZeroOptimizer.save_checkpoint")
        if comm.rank == 0:
            manifest = {"format": CHECKPOINT_FORMAT, "shard_format": SHARD_FORMAT, "shard_version": SHARD_VERSION,
                        "world": comm.size, "numel": int(self.flat.size), "params": bool(include_params),
                        "dtype": self.flat.dtype.str, "kind": type(self.optimizer).__name__,
                        "iterations": self.optimizer.iterations,
                        "files": [_shard_file(r, comm.size) for r in range(comm.size)],
                        "bounds": [list(b) for b in self.bounds]}
            tmp = os.path.join(directory, _MANIFEST + ".tmp")
            with open(tmp, "w") as f:
                json.dump(manifest, f, indent=1)
            os.replace(tmp, os.path.join(directory, _MANIFEST))
        comm.Barrier()

    def load_checkpoint(self, directory: str, load_params: bool = True) -> None:
        """Collective: load a checkpoint saved by ``save_checkpoint`` with any world size,
        resharding it to this one (each rank reads only the files overlapping its shard).
        Validates kind, size and dtype on every rank before changing anything."""
        comm = self.comm
        err = None
        sd = None
        pslice = None
        try:
            manifest = _read_manifest(directory)
            if manifest["kind"] != type(self.optimizer).__name__:
                raise ValueError(f"checkpoint holds {manifest['kind']} state; this optimizer is "
                                 f"{type(self.optimizer).__name__}")
            if manifest["numel"] != self.flat.size:
                raise ValueError(f"checkpoint holds {manifest['numel']} parameters, this arena {self.flat.size}")
            lo, hi = self.shard
            sd, pslice = _read_range(directory, manifest, lo, hi, np.dtype(self.flat.dtype), load_params)
            # dry run on a throwaway optimizer so a bad file raises on every rank, changing nothing
            self._optimizer_class([np.zeros_like(self.shard_param)], **self._hyper).load_state_dict(sd)
        except (OSError, ValueError, KeyError, TypeError, ArithmeticError) as e:
            err = f"{type(e).__name__}: {e}"
        agree(comm, err, f"ZeroOptimizer.load_checkpoint({directory!r})")
        self.optimizer.load_state_dict(sd)
        if load_params:
            self.shard_param[...] = pslice
            self.allgather_params()


def _read_manifest(directory: str) -> dict:
    path = os.path.join(directory, _MANIFEST)
    with open(path) as f:
        try:
            manifest = json.load(f)
        except (ValueError, RecursionError) as e:
            raise CheckpointError(f"{path}: not valid JSON ({type(e).__name__}: {e})") from None
    fmt = manifest.get("format") if isinstance(manifest, dict) else None
    if fmt != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a {CHECKPOINT_FORMAT} checkpoint (format {fmt!r})")
    if manifest.get("shard_format") != SHARD_FORMAT or manifest.get("shard_version") != SHARD_VERSION:
        raise CheckpointError(f"{path}: shard files of format {manifest.get('shard_format', 'v1 (npz of scalars)')!r} "
                              f"version {manifest.get('shard_version')!r}; this fusedoptim reads {SHARD_FORMAT!r} "
                              f"version {SHARD_VERSION} (save it again with the fusedoptim that wrote it)")
    ints = ("world", "numel", "iterations")
    if not (all(isinstance(manifest.get(k), int) and manifest[k] >= 0 for k in ints)
            and isinstance(manifest.get("params"), bool) and isinstance(manifest.get("kind"), str) and isinstance(manifest.get("dtype"), str)
            and isinstance(manifest.get("files"), list) and isinstance(manifest.get("bounds"), list)
            and all(isinstance(n, str) and os.path.basename(n) == n for n in manifest["files"])
            and all(isinstance(b, list) and len(b) == 2 and all(isinstance(x, int) for x in b)
                    for b in manifest["bounds"])):
        raise CheckpointError(f"{path}: the manifest is malformed")
    bounds = [tuple(b) for b in manifest["bounds"]]
    pos = 0
    for lo, hi in bounds:
        if lo != pos and lo != hi or hi < lo:
            raise CheckpointError(f"{path}: shard bounds {bounds} do not tile [0, {manifest['numel']})")
        pos = max(pos, hi)
    if pos != manifest["numel"] or len(manifest["files"]) != len(bounds) or len(bounds) != manifest["world"]:
        raise CheckpointError(f"{path}: shard bounds {bounds} do not tile [0, {manifest['numel']})")
    return manifest


def _read_shard(path: str, manifest: dict, r: int, olo: int, ohi: int) -> Tuple[dict, Optional[np.ndarray]]:
    """One shard file, checked against the manifest: (state_dict, parameter slice or None)."""
    def check(meta: dict) -> bool:
        if meta.get("format") != SHARD_FORMAT or meta.get("version") != SHARD_VERSION:
            raise CheckpointError(f"{path}: not a {SHARD_FORMAT} version {SHARD_VERSION} file")
        return True

    meta, arrays = read_archive(path, check)
    expect = {"rank": r, "world": manifest["world"], "lo": olo, "hi": ohi, "numel": manifest["numel"],
              "dtype": manifest["dtype"]}
    om = meta.get("optimizer")
    if any(meta.get(k) != v for k, v in expect.items()) or not isinstance(om, dict) \
            or om.get("kind") != manifest["kind"] or om.get("params") != _codec.signature(
                [np.empty(ohi - olo, np.dtype(manifest["dtype"]))]):
        raise CheckpointError(f"{path}: shard metadata does not match {_MANIFEST}")
    try:
        sd = _codec.decode_optimizer(om, arrays, src=path)
        param = None if meta.get("param") is None else _codec.decode_value(meta["param"], arrays, "param")
    except CheckpointError:
        raise
    except _codec.StateFormatError as e:
        raise CheckpointError(f"{path}: {e}") from None
    if param is not None and (not isinstance(param, np.ndarray) or param.shape != (ohi - olo,)
                              or param.dtype != np.dtype(manifest["dtype"])):
        raise CheckpointError(f"{path}: the parameter slice does not match {_MANIFEST}")
    if sd["iterations"] != manifest["iterations"]:
        raise CheckpointError(f"{path}: saved at iteration {sd['iterations']}, the manifest says "
                              f"{manifest['iterations']} (a mix of two checkpoints?)")
    if len(sd["param_groups"]) != 1 or set(sd["state"]) - {0}:
        raise CheckpointError(f"{path}: a shard optimizer has one parameter in one group")
    return sd, param


def _read_range(directory: str, manifest: dict, lo: int, hi: int, dtype: np.dtype,
                want_params: bool) -> Tuple[dict, Optional[np.ndarray]]:
    """The state_dict for an optimizer over the slice [lo, hi) of the flat parameters,
    assembled from the shard files overlapping it, and the parameter slice."""
    n = hi - lo
    if np.dtype(manifest["dtype"]) != dtype:
        raise CheckpointError(f"{directory}: the checkpoint holds {manifest['dtype']} parameters, not {dtype.str}")
    state: Dict[str, Any] = {}
    first: Optional[dict] = None
    scalars: Dict[str, Any] = {}
    params = np.zeros(n, dtype=dtype) if want_params else None
    kinds: Dict[str, Any] = {}
    for r, (fname, (olo, ohi)) in enumerate(zip(manifest["files"], manifest["bounds"])):
        overlap = max(lo, olo) < min(hi, ohi)
        if not overlap and first is not None:
            continue
        path = os.path.join(directory, fname)
        sd, param = _read_shard(path, manifest, r, olo, ohi)
        st = sd["state"].get(0, {})
        block = _block_of(sd)
        q8 = any(k.endswith(ABSMAX_SUFFIX) for k in st)
        if q8 and not isinstance(block, int):
            raise CheckpointError(f"{path}: 8-bit state without its storage tag (block_size)")
        if q8 and overlap and (olo, ohi) != (lo, hi) and (
                not isinstance(block, int) or olo % block or lo % block
                or (ohi % block and ohi != manifest["numel"]) or (hi % block and hi != manifest["numel"])):
            # 8-bit state: whole blocks regroup losslessly; a block cut by a shard bound does not
            raise CheckpointError(f"{path}: 8-bit state (state_dtype='int8') saved with shard bounds that cut its "
                                  f"blocks (a checkpoint of an older fusedoptim, or another block_size): load it "
                                  f"with the world size it was saved with ({manifest['world']} ranks) and the "
                                  f"same block_size, or save it from an optimizer with state_dtype='float32' to "
                                  f"reshard")
        sc = {k: v for k, v in st.items() if not isinstance(v, np.ndarray)}
        arrays = {k: (v.dtype, _block_of(sd)) for k, v in st.items() if isinstance(v, np.ndarray)}
        if first is None:
            first, scalars, kinds = sd, sc, arrays
            for k, v in st.items():  # every buffer name, even for an empty range
                if isinstance(v, np.ndarray):   # in its stored dtype (bfloat16 state stays bfloat16)
                    state[k] = np.zeros(-(-n // block) if k.endswith(ABSMAX_SUFFIX) else n, dtype=v.dtype)
        elif sc != scalars or bool(sd["state"]) != bool(first["state"]):
            raise CheckpointError(f"{path}: scalar state {sc} differs from another shard's {scalars}")
        elif arrays != kinds and overlap and st:
            raise CheckpointError(f"{path}: state arrays {sorted(arrays)} stored unlike another shard's "
                                  f"{sorted(kinds)} (a shard below min_8bit_size keeps float32 state): load it "
                                  "with the world size it was saved with")
        if not overlap:
            continue
        a, b = max(lo, olo), min(hi, ohi)
        for k, v in st.items():
            if isinstance(v, np.ndarray) and k.endswith(ABSMAX_SUFFIX):   # whole blocks (bounds checked above)
                state[k][(a - lo) // block:-(-(b - lo) // block)] = v[(a - olo) // block:-(-(b - olo) // block)]
            elif isinstance(v, np.ndarray):
                state.setdefault(k, np.zeros(n, dtype=v.dtype))[a - lo:b - lo] = v[a - olo:b - olo]
        if want_params:
            if param is None:
                raise CheckpointError(f"{path}: saved without parameters (include_params=False)")
            params[a - lo:b - lo] = param[a - olo:b - olo]
    if first is None:
        raise CheckpointError(f"{directory}: no shard files")
    groups = first["param_groups"]
    top = {k: v for k, v in first.items() if k not in ("state", "param_groups")}
    return dict(top, param_groups=groups, state={0: dict(state, **scalars)} if first["state"] else {}), params


def consolidate_checkpoint(directory: str) -> Tuple[dict, Optional[np.ndarray]]:
    """Reassemble a ZeRO checkpoint in one process, without MPI.

    Returns ``(state_dict, flat_params)``: a state_dict for ``optimizer_class([arena.flat])``
    (``arena.split_state_dict`` turns it into one for ``arena.params()``), and the flat
    parameter vector (None if saved with ``include_params=False``)."""
    manifest = _read_manifest(directory)
    return _read_range(directory, manifest, 0, manifest["numel"], np.dtype(manifest["dtype"]), manifest["params"])
