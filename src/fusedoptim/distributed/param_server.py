"""Asynchronous parameter server (tf ParameterServerStrategy, Hogwild-style data parallel).

Rank ``server`` (0) owns the parameters and the optimizer.  Every other rank is a worker
that loops *pull parameters -> compute a gradient -> push it* at its own pace; the server
applies each gradient as it arrives, so workers never wait for each other.

Protocol (all messages on the communicator given; worker -> server requests carry a
float64 header ``[kind, version, loss, numel, itemsize, layout]``, ``layout`` a 52-bit
hash of the arena's names and shapes, 0 for a plain flat array):

=========  ==========================  ==========================================
request    worker sends                server replies ``[status, version, numel,
                                       itemsize, layout]`` and
=========  ==========================  ==========================================
PULL       header                      the flat parameters (status OK)
PUSH       header + flat gradient      nothing more
PUSHPULL   header + flat gradient      the flat parameters (unless status STOP)
BYE        header                      no reply: the worker is leaving
=========  ==========================  ==========================================

``status`` is OK (gradient applied), STALE (gradient older than ``max_staleness``
versions: dropped, pull again), STOP (training is over: leave) or ERROR (refused: the
worker's parameter count, dtype or arena layout differs from the server's, or its
gradient message has the wrong size; the server logs it, applies nothing from that
worker again, and the worker raises ``ValueError`` naming both layouts).  The server polls with ``Iprobe`` on any source and sleeps briefly when idle;
a worker silent for ``worker_timeout`` seconds is declared lost (logged), its later
messages are answered with STOP, and the server carries on with the others.
"""
from __future__ import annotations

import logging
import math
import time
from typing import Callable, Dict, List, Optional

import numpy as np

from ..arena import ParamArena, _ArenaBase
from ..optimizer import Optimizer
from ._mpi import stable_hash, cancel, mpi, mpi_type, resolve_comm, wait_all

__all__ = ["ParameterServer", "PSWorker", "run_worker", "WorkerLostError", "ServerTimeoutError"]

log = logging.getLogger("fusedoptim.distributed")

# message tags
TAG_REQ, TAG_DATA, TAG_REPLY, TAG_PARAMS = 7101, 7102, 7103, 7104
# request kinds
PULL, PUSH, PUSHPULL, BYE = 1.0, 2.0, 3.0, 4.0
# reply status
OK, STALE, STOP, ERROR = 0.0, 1.0, 2.0, 3.0
_STATUS_NAMES = {OK: "ok", STALE: "stale", STOP: "stop", ERROR: "error"}


class WorkerLostError(RuntimeError):
    """Raised by ``ParameterServer.serve`` when workers stop talking and none is left
    (or at the first loss with ``on_worker_lost="raise"``)."""


class ServerTimeoutError(TimeoutError):
    """Raised by a worker when the server does not answer within ``timeout`` seconds."""


def _layout_code(params) -> float:
    """The header's ``layout`` field: a 52-bit hash (exact in a float64) of an arena's
    tensor names, shapes and dtype; 0 for a plain flat array (any layout of that size)."""
    if not isinstance(params, _ArenaBase):
        return 0.0
    return float(stable_hash((params.layout, params.dtype.str)) & ((1 << 52) - 1) or 1)


def _describe_layout(numel: float, itemsize: float, layout: float, arena=None) -> str:
    """``numel`` parameters, their dtype and layout, as far as known (a peer's arena is
    known only by its hash)."""
    what = "a flat array" if layout == 0 else f"arena layout {int(layout):#x}"
    if isinstance(arena, _ArenaBase):
        what = ", ".join(f"{n} {s}" for n, s, _ in arena.layout) + f"; {what}"
    return f"{int(numel)} float{8 * int(itemsize)} parameters ({what})"


def _flat_of(params) -> np.ndarray:
    flat = params.flat if isinstance(params, _ArenaBase) else params
    if not isinstance(flat, np.ndarray) or flat.ndim != 1 or not flat.flags.c_contiguous \
            or not flat.flags.writeable or flat.dtype not in (np.float32, np.float64):
        raise TypeError("parameters must be a ParamArena or a writeable contiguous 1-D float32/float64 array")
    return flat


class ParameterServer:
    """The server side (run on rank ``comm.rank``, normally 0).

    ``optimizer`` updates ``arena``'s parameters: built over ``[arena.flat]`` (one
    streaming step) or ``arena.params()``.  ``arena`` is a ParamArena or a flat array.

    ``max_staleness``: drop gradients computed from parameters more than this many
    versions old (None: accept all).  ``worker_timeout``: seconds of silence after which a
    worker is declared lost.  ``on_worker_lost``: ``"continue"`` (log and go on with the
    others; ``WorkerLostError`` once none is left) or ``"raise"``.

    Read-only attributes while serving: ``version`` (updates applied), ``loss`` (EMA of the
    losses workers report), ``stats`` (counters).
    """

    def __init__(self, optimizer: Optimizer, arena, comm=None, *, max_staleness: Optional[int] = None,
                 worker_timeout: float = 60.0, on_worker_lost: str = "continue", loss_ema: float = 0.9):
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"optimizer must be a fusedoptim Optimizer, got {type(optimizer).__name__}")
        if max_staleness is not None and (not isinstance(max_staleness, int) or max_staleness < 0):
            raise ValueError(f"max_staleness must be None or an int >= 0, got {max_staleness!r}")
        if not worker_timeout > 0:
            raise ValueError(f"worker_timeout must be > 0 seconds, got {worker_timeout!r}")
        if on_worker_lost not in ("continue", "raise"):
            raise ValueError(f"on_worker_lost must be 'continue' or 'raise', got {on_worker_lost!r}")
        self.comm = resolve_comm(comm)
        self.optimizer = optimizer
        self.flat = _flat_of(arena)
        self._layout = _layout_code(arena)
        self._layout_text = _describe_layout(self.flat.size, self.flat.itemsize, self._layout, arena)
        params = optimizer.params
        if len(params) == 1 and params[0] is self.flat:
            self._gflat = np.zeros_like(self.flat)
            self._grads = [self._gflat]
        elif isinstance(arena, ParamArena) and len(params) == len(arena) and \
                all(p is q for p, q in zip(params, arena.params())):
            ga = arena.grad_arena()
            self._gflat, self._grads = ga.flat, ga.grads()
        else:
            raise ValueError("the optimizer must be built over [arena.flat] or arena.params()")
        self.max_staleness = max_staleness
        self.worker_timeout = float(worker_timeout)
        self.on_worker_lost = on_worker_lost
        self._ema = loss_ema
        self.version = 0
        self.loss = math.nan
        self._mpitype = mpi_type(self.flat.dtype)
        self.stats: Dict[str, object] = {}

    # --------------------------------------------------------------- helpers
    def _reply(self, dest: int, status: float, params: bool) -> None:
        hdr = np.array([status, float(self.version), float(self.flat.size), float(self.flat.itemsize), self._layout],
                       dtype=np.float64)
        reqs = [self.comm.Isend([hdr, mpi().DOUBLE], dest=dest, tag=TAG_REPLY)]
        if params:
            reqs.append(self.comm.Isend([self.flat, self._mpitype], dest=dest, tag=TAG_PARAMS))
        try:
            # the parameters must not change until the send completes
            wait_all(reqs, self.worker_timeout, f"reply to worker {dest}")
        except TimeoutError:
            for r in reqs:
                cancel(r)
            raise

    def serve(self, max_updates: Optional[int] = None, stop_when: Optional[Callable[["ParameterServer"], bool]] = None,
              time_limit: Optional[float] = None) -> dict:
        """Serve until a stop condition holds -- ``max_updates`` applied gradients,
        ``stop_when(server)`` true (checked after each update), ``time_limit`` seconds, or
        every worker gone -- then tell every remaining worker to stop and return the stats:
        ``updates``, ``stale`` (dropped), ``pulls``, ``pushes`` per worker, ``lost`` ranks
        (and ``lost_at_update``), ``refused`` (rank: why, for workers whose layout or
        gradient did not fit; they are in ``lost`` too), ``finished`` (said goodbye), ``reason``,
        ``max_staleness_seen`` / ``max_staleness_applied`` (in versions), ``seconds``.

        Raises WorkerLostError if every worker was lost before a stop condition held."""
        MPI = mpi()
        comm = self.comm
        workers = [r for r in range(comm.size) if r != comm.rank]
        if not workers:
            raise ValueError("a parameter server needs at least one worker rank (mpiexec -n 2 or more)")
        live = set(workers)
        last_seen = {w: time.monotonic() for w in workers}
        pushes = {w: 0 for w in workers}
        lost: List[int] = []
        finished: List[int] = []
        lost_at: Dict[int, int] = {}
        refused: Dict[int, str] = {}
        stats = self.stats = {"updates": 0, "stale": 0, "pulls": 0, "pushes": pushes, "lost": lost,
                              "lost_at_update": lost_at, "refused": refused, "finished": finished, "reason": None,
                              "max_staleness_seen": 0, "max_staleness_applied": 0}
        start = time.monotonic()
        stopping = False
        reason = None
        hdr = np.empty(6, dtype=np.float64)
        status = MPI.Status()
        nap = 0.0
        expect = (float(self.flat.size), float(self.flat.itemsize))

        def lose(w: int, why: str) -> None:
            live.discard(w)
            lost.append(w)
            lost_at[w] = self.version
            log.warning("parameter server: worker rank %d %s; treating it as lost (%d worker(s) left)",
                        w, why, len(live))
            if self.on_worker_lost == "raise" and not stopping:
                raise WorkerLostError(f"worker rank {w} {why}")

        def refuse(w: int, why: str) -> None:
            """Answer ERROR and never apply anything from ``w`` again (its payload, if
            any, was drained by the caller)."""
            log.error("parameter server: refusing worker rank %d: %s", w, why)
            refused[w] = why
            self._reply_safe(w, ERROR)
            live.discard(w)
            lost.append(w)

        while live:
            if not stopping:
                if max_updates is not None and self.version >= max_updates:
                    stopping, reason = True, f"max_updates={max_updates} reached"
                elif time_limit is not None and time.monotonic() - start > time_limit:
                    stopping, reason = True, f"time_limit={time_limit}s reached"
            if not comm.Iprobe(source=MPI.ANY_SOURCE, tag=TAG_REQ, status=status):
                now = time.monotonic()
                for w in sorted(live):
                    if now - last_seen[w] > self.worker_timeout:
                        lose(w, f"sent nothing for {now - last_seen[w]:.1f} s (worker_timeout="
                                f"{self.worker_timeout:g} s)")
                if nap:
                    time.sleep(nap)
                nap = min(1e-3, nap * 2 if nap else 2e-5)
                continue
            nap = 0.0
            w = status.Get_source()
            comm.Recv([hdr, MPI.DOUBLE], source=w, tag=TAG_REQ)
            kind, gver, wloss = hdr[0], int(hdr[1]), hdr[2]
            last_seen[w] = time.monotonic()
            if w not in live:
                # a worker we gave up on came back: drain its gradient and send it home
                if kind in (PUSH, PUSHPULL):
                    self._drain(w)
                if kind != BYE:
                    self._reply_safe(w, STOP)
                continue
            if kind == BYE:
                live.discard(w)
                finished.append(w)
                continue
            if (hdr[3], hdr[4]) != expect or (hdr[5] and self._layout and hdr[5] != self._layout):
                if kind in (PUSH, PUSHPULL):
                    self._drain(w)
                refuse(w, f"it has {_describe_layout(*hdr[3:6])}, the server {self._layout_text}")
                continue
            if kind == PULL:
                stats["pulls"] += 1
                if stopping:
                    self._reply_safe(w, STOP)
                    live.discard(w)
                else:
                    self._reply_safe(w, OK, params=True)
                continue
            # PUSH / PUSHPULL: receive the gradient, after checking its size
            data = self._probe(w)
            if data is None:
                lose(w, "started a push and never finished it")
                continue
            nbytes = data.Get_count(MPI.BYTE)
            if nbytes != self.flat.nbytes:
                self._drain(w)
                refuse(w, f"its gradient message has {nbytes} bytes, the server's parameters {self.flat.nbytes}")
                continue
            comm.Recv([self._gflat, self._mpitype], source=w, tag=TAG_DATA)
            pushes[w] += 1
            if stopping:
                self._reply_safe(w, STOP)
                live.discard(w)
                continue
            age = self.version - gver
            stats["max_staleness_seen"] = max(stats["max_staleness_seen"], age)
            if self.max_staleness is not None and age > self.max_staleness:
                stats["stale"] += 1
                st = STALE
            else:
                self.optimizer.step(self._grads)
                stats["max_staleness_applied"] = max(stats["max_staleness_applied"], age)
                self.version += 1
                stats["updates"] = self.version
                if math.isfinite(wloss):
                    self.loss = wloss if math.isnan(self.loss) else self._ema * self.loss + (1 - self._ema) * wloss
                st = OK
                if stop_when is not None and stop_when(self):
                    stopping, reason = True, "stop_when returned True"
            if stopping:
                st = STOP
                live.discard(w)
            if kind == PUSHPULL and st != STOP:
                stats["pulls"] += 1
            self._reply_safe(w, st, params=(kind == PUSHPULL and st != STOP))
        if reason is None:
            if lost and not finished:
                stats["reason"] = "all workers lost"
                stats["seconds"] = time.monotonic() - start
                raise WorkerLostError(f"every worker was lost ({lost}); stopping after {self.version} updates")
            reason = "all workers finished"
        stats["reason"] = reason
        stats["seconds"] = time.monotonic() - start
        return stats

    def _reply_safe(self, w: int, status: float, params: bool = False) -> None:
        try:
            self._reply(w, status, params)
        except TimeoutError:
            log.warning("parameter server: worker rank %d did not take its reply within %g s",
                        w, self.worker_timeout)

    def _probe(self, w: int):
        """The status of the payload that follows ``w``'s push header, once it has
        arrived; None after ``worker_timeout`` seconds."""
        MPI = mpi()
        st = MPI.Status()
        t0 = time.monotonic()
        nap = 0.0
        while not self.comm.Iprobe(source=w, tag=TAG_DATA, status=st):
            if time.monotonic() - t0 > self.worker_timeout:
                return None
            if nap:
                time.sleep(nap)
            nap = min(1e-3, nap * 2 if nap else 2e-5)
        return st

    def _drain(self, w: int) -> None:
        """Receive (and discard) the payload that follows a push header."""
        MPI = mpi()
        st = self._probe(w)
        if st is None:
            return
        junk = np.empty(st.Get_count(MPI.BYTE), dtype=np.uint8)
        self.comm.Recv([junk, MPI.BYTE], source=w, tag=TAG_DATA)


class PSWorker:
    """The worker side: ``pull()`` parameters into ``arena``, ``push(grads)`` a gradient.

    ``arena``: a ParamArena laid out like the server's (or a flat array of its size).
    ``timeout``: seconds to wait for the server before ``ServerTimeoutError``.
    """

    def __init__(self, arena, comm=None, server: int = 0, timeout: float = 60.0):
        self.comm = resolve_comm(comm)
        self.server = server
        self.flat = _flat_of(arena)
        self.arena = arena if isinstance(arena, _ArenaBase) else None
        self.timeout = float(timeout)
        self.version = -1  # version of the parameters held; -1 before the first pull
        self.stopped = False
        self._mpitype = mpi_type(self.flat.dtype)
        self._layout = _layout_code(arena)
        self._hdr = np.zeros(6, dtype=np.float64)
        self._rep = np.zeros(5, dtype=np.float64)

    def _request(self, kind: float, grad: Optional[np.ndarray], loss: float, want_params: bool) -> float:
        MPI = mpi()
        if self.stopped:
            return STOP
        comm, srv = self.comm, self.server
        rep_req = comm.Irecv([self._rep, MPI.DOUBLE], source=srv, tag=TAG_REPLY)
        par_req = comm.Irecv([self.flat, self._mpitype], source=srv, tag=TAG_PARAMS) if want_params else None
        self._hdr[:] = (kind, float(self.version), loss, float(self.flat.size), float(self.flat.itemsize), self._layout)
        sends = [comm.Isend([self._hdr, MPI.DOUBLE], dest=srv, tag=TAG_REQ)]
        if grad is not None:
            sends.append(comm.Isend([grad, self._mpitype], dest=srv, tag=TAG_DATA))
        what = f"worker {comm.rank}: waiting for the parameter server (rank {srv})"
        try:
            wait_all(sends + [rep_req], self.timeout, what, ServerTimeoutError)
        except ServerTimeoutError:
            for r in sends + [rep_req, par_req]:
                if r is not None:
                    cancel(r)
            raise
        status = float(self._rep[0])
        if par_req is not None:
            if status in (OK, STALE):
                try:
                    wait_all([par_req], self.timeout, what, ServerTimeoutError)
                except ServerTimeoutError:
                    cancel(par_req)
                    raise
                self.version = int(self._rep[1])
            else:
                cancel(par_req)
        if status == STOP:
            self.stopped = True
        elif status == ERROR:
            self.stopped = True
            raise ValueError(f"worker {comm.rank}: the parameter server (rank {srv}) refused this worker: it has "
                             f"{_describe_layout(self.flat.size, self.flat.itemsize, self._layout, self.arena)}, the "
                             f"server {_describe_layout(*self._rep[2:5])}: both need the same tensors, shapes and "
                             f"dtype")
        return status

    def pull(self) -> Optional[int]:
        """Fetch the current parameters into ``arena``; returns their version, or None
        when the server says training is over."""
        st = self._request(PULL, None, math.nan, True)
        return None if st == STOP else self.version

    def push(self, grads, loss: float = math.nan, pull: bool = True) -> str:
        """Send a gradient computed from the parameters of the last pull (a GradArena,
        or a flat array); ``loss`` (optional) feeds the server's loss EMA.  With ``pull``
        the reply carries fresh parameters (one round trip).  Returns ``"ok"``,
        ``"stale"`` (dropped by the server) or ``"stop"``."""
        g = grads.flat if isinstance(grads, _ArenaBase) else grads
        if not isinstance(g, np.ndarray) or g.shape != self.flat.shape or g.dtype != self.flat.dtype \
                or not g.flags.c_contiguous:
            raise ValueError(f"gradient must be a contiguous {self.flat.dtype} array of shape {self.flat.shape}")
        if self.version < 0:
            raise RuntimeError("pull() parameters before pushing a gradient")
        st = self._request(PUSHPULL if pull else PUSH, g, float(loss), pull)
        return _STATUS_NAMES[st]

    def close(self) -> None:
        """Tell the server this worker is leaving (not needed after a STOP)."""
        if self.stopped:
            return
        MPI = mpi()
        self._hdr[:] = (BYE, float(self.version), math.nan, float(self.flat.size), float(self.flat.itemsize),
                        self._layout)
        req = self.comm.Isend([self._hdr, MPI.DOUBLE], dest=self.server, tag=TAG_REQ)
        try:
            wait_all([req], self.timeout, "sending goodbye", ServerTimeoutError)
        finally:
            self.stopped = True

    def __enter__(self) -> "PSWorker":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def run_worker(worker: PSWorker, compute: Callable[[], float], grads, max_steps: Optional[int] = None) -> dict:
    """The standard worker loop: pull, then repeat ``loss = compute()`` (which reads the
    parameters in ``worker.arena`` and writes ``grads``) and push-and-pull, until the
    server says stop or ``max_steps`` pushes (then say goodbye).  Returns counters."""
    counts = {"pushes": 0, "stale": 0}
    if worker.pull() is None:
        return counts
    while max_steps is None or counts["pushes"] < max_steps:
        loss = compute()
        st = worker.push(grads, loss=loss, pull=True)
        counts["pushes"] += 1
        if st == "stale":
            counts["stale"] += 1
        elif st == "stop":
            return counts
    worker.close()
    return counts
