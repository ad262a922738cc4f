"""mpi4py plumbing shared by the distributed strategies: lazy import, datatypes, waits
with timeouts, "agree on errors" so one rank's bad input raises on every rank instead of
leaving the others blocked in the next collective, the per-step agreement check
(``StepAgreement``) and the excepthook that aborts the job when one rank dies."""
from __future__ import annotations

import hashlib
import os
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

# A collective that waits longer than this for a rank is an error, not a hang (torch's
# NCCL process groups default to the same 10 minutes).
DEFAULT_TIMEOUT = 600.0
_ABORT_ENV = "FUSEDOPTIM_MPI_ABORT"


class RanksDisagreeError(ValueError):
    """The ranks entered a collective step with different inputs (gradients present,
    shapes, dtypes, iteration, settings) or one of them refused its input: raised on
    every rank, with the same message."""
    __module__ = "fusedoptim.distributed"  # where it is exported


class CollectiveTimeoutError(TimeoutError):
    """A rank did not join a collective step within ``timeout`` seconds (it skipped a
    step, left, or is stuck).  The communicator cannot be used afterwards: let the
    exception end the job (the excepthook aborts every rank)."""
    __module__ = "fusedoptim.distributed"


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
    """``comm`` or ``MPI.COMM_WORLD`` when None.  Every entry point of the package goes
    through here, so this is where the abort-on-error excepthook gets installed."""
    MPI = mpi()
    _install_abort_hook()
    return MPI.COMM_WORLD if comm is None else comm


# ------------------------------------------------------------- abort on error
_ABORT_GRACE = 0.5   # seconds between the traceback and MPI_Abort
_hook: Dict[str, object] = {"enabled": os.environ.get(_ABORT_ENV, "1").strip().lower() not in ("0", "no", "false", "off"),
                            "installed": None}


def _abort_excepthook(previous):
    def hook(exc_type, exc, tb):
        try:
            previous(exc_type, exc, tb)
        finally:
            MPI = sys.modules.get("mpi4py.MPI")
            if (_hook["enabled"] and MPI is not None and MPI.Is_initialized() and not MPI.Is_finalized()
                    and MPI.COMM_WORLD.Get_size() > 1):
                world = MPI.COMM_WORLD
                print(f"fusedoptim.distributed: uncaught {exc_type.__name__} on rank {world.Get_rank()} of "
                      f"{world.Get_size()}: aborting every rank (MPI_Abort; set {_ABORT_ENV}=0 or call "
                      f"fusedoptim.distributed.abort_on_error(False) to opt out)", file=sys.stderr)
                for f in (sys.stdout, sys.stderr):
                    try:
                        f.flush()
                    except Exception:  # pragma: no cover - a closed stream
                        pass
                # mpiexec forwards a rank's output asynchronously and MPI_Abort kills the
                # forwarders too: give them a moment so the traceback reaches the user
                time.sleep(_ABORT_GRACE)
                world.Abort(1)
    hook.previous = previous
    return hook


def _install_abort_hook() -> None:
    if _hook["enabled"] and _hook["installed"] is None:
        _hook["installed"] = sys.excepthook = _abort_excepthook(sys.excepthook)


def abort_on_error(enabled: bool = True) -> None:
    """Whether an uncaught exception on one rank aborts the whole MPI job (default: yes).

    On first use ``fusedoptim.distributed`` wraps ``sys.excepthook``: after the usual
    traceback, when MPI is initialised and the world has more than one rank, it calls
    ``MPI.COMM_WORLD.Abort(1)``, so the other ranks do not wait forever in their next
    collective, whether the job was started with ``mpiexec python script.py`` or
    ``mpiexec python -m mpi4py script.py``.  ``abort_on_error(False)`` (or the environment
    variable ``FUSEDOPTIM_MPI_ABORT=0``) opts out: the hook is removed if it is still
    the current one, and not installed later."""
    _hook["enabled"] = bool(enabled)
    if enabled:
        _install_abort_hook()
        return
    hook = _hook["installed"]
    if hook is not None and sys.excepthook is hook:
        sys.excepthook = hook.previous
    _hook["installed"] = None


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


def wait_all(reqs: Sequence, timeout: Optional[float], what: str, exc=TimeoutError,
             spin: float = 0.0, max_nap: float = 2e-3) -> None:
    """Wait for MPI requests, polling with a growing sleep of at most ``max_nap`` seconds
    (an MPI blocking wait spins, which starves the other ranks when processes outnumber
    cores) after ``spin`` seconds of polling that only yields the core to any process
    waiting for it; raise ``exc`` after ``timeout`` seconds (None: wait forever)."""
    MPI = mpi()
    pending = [r for r in reqs if r is not None]
    if not pending:
        return
    if MPI.Request.Testall(pending):
        return
    start = time.monotonic()
    while spin and time.monotonic() - start < spin:
        if MPI.Request.Testall(pending):
            return
        os.sched_yield()  # a peer rank sharing this core gets to run
    nap = 0.0
    while True:
        if MPI.Request.Testall(pending):
            return
        if timeout is not None and time.monotonic() - start > timeout:
            raise exc(f"{what}: no progress after {timeout:.3g} s")
        if nap:
            time.sleep(nap)
        nap = min(max_nap, nap * 2 if nap else 2e-5)


def cancel(req) -> None:
    """Cancel a pending request and release it, ignoring errors (used on timeouts)."""
    try:
        req.Cancel()
        if not req.Test():
            req.Free()
    except Exception:  # pragma: no cover - best effort after a peer vanished
        pass


# ------------------------------------------------------------ step agreement
def stable_hash(obj) -> int:
    """A hash of ``repr(obj)`` that is the same in every process (``hash()`` of a str is
    salted per process), as a signed 64-bit int."""
    return int.from_bytes(hashlib.blake2b(repr(obj).encode(), digest_size=8).digest(), "little", signed=True)


def _ranks(rs: Sequence[int]) -> str:
    return f"rank {rs[0]}" if len(rs) == 1 else "ranks " + ", ".join(map(str, rs))


def _by_value(values: Sequence, show: Callable = str) -> str:
    """``"A on ranks 0, 2; B on rank 1"``: each distinct value with the ranks holding it."""
    groups: List[Tuple[object, List[int]]] = []
    for r, v in enumerate(values):
        for val, rs in groups:
            if val == v:
                rs.append(r)
                break
        else:
            groups.append((v, [r]))
    return "; ".join(f"{show(v)} on {_ranks(rs)}" for v, rs in groups)


def _show_grad(entry) -> str:
    return "no gradient" if entry is None else f"{np.dtype(entry[1]).name} {tuple(entry[0])}"


def hyperparameters(optimizer) -> Tuple[Tuple[Tuple[int, str], object], ...]:
    """``((group index, name), value)`` of every hyperparameter of every param group
    (callables, such as an ``lr`` schedule, left out: each rank keeps its own), for the
    agreement check."""
    return tuple(((i, k), v) for i, g in enumerate(optimizer.param_groups)
                 for k, v in g.items() if k != "params" and not callable(v))


class StepAgreement:
    """Checks, once per collective step, that every rank is in the same step with the
    same kind of input: one ``Iallgather`` of five int64 per rank (the operation, the
    optimizer's iteration, a hash of which gradients are present with their shapes and
    dtypes, a hash of the settings and hyperparameters, a local-error flag) on a
    duplicate of the communicator, so it can never pair with another collective.

    When the rows differ, every rank sees it in the same gathered table, so all of them
    take a second, pickled allgather of the details and raise the same
    ``RanksDisagreeError`` naming what differs and on which ranks.  A rank that does not
    arrive within ``timeout`` seconds (it skipped a step or left) raises
    ``CollectiveTimeoutError`` instead of waiting forever.  On one rank nothing is sent
    and a local error is raised as it is."""

    _OPS = {"step": 1, "allreduce": 2, "reduce_scatter": 3}
    _MAX_CACHE = 256

    def __init__(self, comm, what: str, timeout: Optional[float]):
        if timeout is not None and not (isinstance(timeout, (int, float)) and not isinstance(timeout, bool)
                                        and timeout > 0):
            raise ValueError(f"timeout must be None or a positive number of seconds, got {timeout!r}")
        self.what = what
        self.timeout = None if timeout is None else float(timeout)
        self.world = comm.size
        self.calls = 0
        self._comm = comm.Dup() if comm.size > 1 else None
        self._mine = np.zeros(5, dtype=np.int64)
        self._all = np.zeros((comm.size, 5), dtype=np.int64)
        self._hashes: Dict[object, int] = {}

    @staticmethod
    def signature(grads: Optional[tuple]) -> Optional[tuple]:
        """``grads`` reduced to ``None`` or ``(shape, dtype.str)`` per gradient."""
        if grads is None:
            return None
        return tuple(None if e is None else (tuple(e[0]), np.dtype(e[1]).str) for e in grads)

    def _hash(self, key, canonical: Callable = lambda k: k) -> int:
        """``stable_hash(canonical(key))``, cached by ``key``."""
        try:
            h = self._hashes.get(key)
        except TypeError:  # an unhashable hyperparameter (a list): hash its text each time
            return stable_hash(canonical(key))
        if h is None:
            if len(self._hashes) >= self._MAX_CACHE:
                self._hashes.clear()
            h = self._hashes[key] = stable_hash(canonical(key))
        return h

    def __call__(self, op: str, iterations: int, grads: Optional[tuple], settings: tuple,
                 error: Optional[BaseException], labels: Callable[[], Sequence[str]]) -> None:
        """``grads``: one ``None`` or ``(shape, dtype, ...)`` per gradient (None when
        ``error``; items after the dtype are the caller's and ignored); ``settings``:
        ``(name, value)`` pairs that must be equal everywhere, a name being a str or
        ``(group index, hyperparameter)``;
        ``error``: this rank's refusal of its input; ``labels()``: parameter names,
        called only to word an error."""
        self.calls += 1
        if self._comm is None:
            if error is not None:
                raise error
            return
        MPI = mpi()
        mine = self._mine
        mine[:] = (self._OPS[op], iterations, self._hash(grads, self.signature), self._hash(settings),
                   error is not None)
        req = self._comm.Iallgather([mine, MPI.INT64_T], [self._all, MPI.INT64_T])
        try:
            # ranks usually arrive within microseconds of each other: spin briefly, then
            # nap at most 0.2 ms so a late peer costs little latency and no busy core
            wait_all([req], self.timeout, "", spin=1e-3, max_nap=2e-4)
        except TimeoutError:
            raise CollectiveTimeoutError(
                f"{self.what}: not every one of the {self.world} ranks entered call {self.calls} (iteration "
                f"{iterations}) within timeout={self.timeout:g} s: a rank skipped a step, left, failed, or is "
                f"busy elsewhere (raise timeout=, or None to wait forever). The communicator is unusable now; "
                f"the job must end") from error
        if error is None and self._all.tobytes() == mine.tobytes() * self.world:  # every row is mine
            return
        info = (op, iterations, self.signature(grads), settings,
                None if error is None else f"{type(error).__name__}: {error}")
        raise RanksDisagreeError(self._describe(self._comm.allgather(info), labels())) from error

    def _describe(self, infos: List[tuple], labels: Sequence[str]) -> str:
        """The same message on every rank, from the gathered ``info`` tuples."""
        ops, iters, grads, settings, errors = zip(*infos)
        parts = [f"rank {r} refused its input: {e}" for r, e in enumerate(errors) if e is not None]
        if len(set(ops)) > 1:
            parts.append("operation: " + _by_value(ops))
        if len(set(iters)) > 1:
            parts.append("iterations: " + _by_value(iters) + " (a rank skipped a step, stepped the wrapped "
                                                              "optimizer directly, or loaded other state)")
        if not any(errors) and len(set(grads)) > 1:
            lens = [len(g) for g in grads]
            if len(set(lens)) > 1:
                parts.append("number of gradients: " + _by_value(lens))
            diff = [i for i in range(min(lens)) if len({g[i] for g in grads}) > 1]
            for i in diff[:5]:
                name = labels[i] if i < len(labels) else f"gradient {i}"
                parts.append(f"{name}: " + _by_value([g[i] for g in grads], _show_grad))
            if len(diff) > 5:
                parts.append(f"and {len(diff) - 5} more parameters")
        for k, _ in settings[0]:
            vals = [dict(s).get(k) for s in settings]
            if any(v != vals[0] for v in vals):
                name = k if isinstance(k, str) else f"param_groups[{k[0]}][{k[1]!r}]"
                parts.append(f"{name}: " + _by_value(vals, repr))
        if not parts:
            parts.append("inputs differ (see each rank's arguments)")
        return (f"{self.what}, call {self.calls}: the {len(infos)} ranks disagree: " + "; ".join(parts)
                + " (every rank must pass the same gradients -- presence, shapes, dtypes -- with the same "
                  "settings, in the same step)")
