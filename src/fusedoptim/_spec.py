"""The Python half of an algorithm's spec, checked against the native half at import.

The element rule of every built-in optimizer lives once in ``csrc/fusedoptim/rules.h``
with three lists: its named per-step scalars, its flags and its state buffers.  The
extension exports them (``fusedoptim._kernels.ALGORITHMS``).  Each optimizer class
declares the same lists in an :class:`AlgoSpec`; a difference (a scalar renamed on one
side, a buffer added on the other) raises ``ImportError`` when fusedoptim is imported, so
a mismatch never reaches a step.  At run time the spec turns the class's flags into the
native flag bits and names the buffers those flags keep; the scalars travel as a dict and
are packed by name by the extension.
"""
from __future__ import annotations

from typing import Dict, Mapping, Sequence, Tuple

from . import _kernels

__all__ = ["AlgoSpec", "TENSOR_STATE", "state_shape"]

#: The per-tensor state names of every native algorithm (NovoGrad's ``grads_ema``): kept as
#: one-element arrays of shape ``()`` where every other state buffer has its parameter's shape.
TENSOR_STATE = frozenset(n for s in _kernels.ALGORITHMS.values() for n in s.tensor_state)


def state_shape(key: str, shape):
    """The shape a state array named ``key`` must have for a parameter of ``shape``
    (Adafactor's factored statistics: ``row_var`` ``(..., n, 1)`` and ``col_var``
    ``(..., 1, m)`` of a parameter ``(..., n, m)``; None where the key cannot exist)."""
    if key in TENSOR_STATE:
        return ()
    if key in _FACTORED:
        shape = tuple(shape)
        return None if len(shape) < 2 else _FACTORED[key](shape)
    return tuple(shape)


#: Adafactor's per-row / per-column statistics (torch's shapes, reduced dims kept as 1)
_FACTORED = {"row_var": lambda s: s[:-1] + (1,), "col_var": lambda s: s[:-2] + (1, s[-1])}


class AlgoSpec:
    """A native algorithm: ``name`` (its entry in rules.h's ``FO_ALGOS``, or reduce.h's
    ``FO_REDUCE_ALGOS``), the names of its per-step ``scalars`` (what ``kernel_scalars``
    returns), of its ``flags`` (what ``kernel_flags`` returns) and of every state
    ``buffer`` it can keep.

    A reducing algorithm (LAMB, LARS, NovoGrad) also declares the per-tensor sums of its
    stats pass (``stats``) and its per-tensor state (``tensor_state``: the last entries of
    ``buffers``, kept as one-element arrays of shape ``()``); the native call computes the
    sums, the per-tensor scalars and the update in one go (``_reduce.pxi``)."""

    __slots__ = ("name", "id", "scalars", "flags", "buffers", "stats", "tensor_state", "_kept")

    def __init__(self, name: str, *, scalars: Sequence[str], flags: Sequence[str] = (), buffers: Sequence[str],
                 stats: Sequence[str] = (), tensor_state: Sequence[str] = ()):
        native = _kernels.ALGORITHMS.get(name)
        if native is None:
            raise ImportError(f"fusedoptim: the extension has no algorithm {name!r} (it has "
                              f"{sorted(_kernels.ALGORITHMS)}); rebuild it after editing rules.h")
        mine = {"scalars": tuple(scalars), "flags": tuple(flags), "buffers": tuple(buffers),
                "stats": tuple(stats), "tensor_state": tuple(tensor_state)}
        diff = [f"{k}: Python {v} != native {getattr(native, k)}" for k, v in mine.items() if v != getattr(native, k)]
        if diff:
            raise ImportError(f"fusedoptim: the spec of {name!r} does not match the extension (rules.h); "
                              + "; ".join(diff))
        self.name, self.id = name, native.id
        self.scalars, self.flags, self.buffers = mine["scalars"], mine["flags"], mine["buffers"]
        self.stats, self.tensor_state = mine["stats"], mine["tensor_state"]
        self._kept: Dict[int, Tuple[str, ...]] = {}

    def flag_bits(self, flags: Mapping[str, bool]) -> int:
        """The native flag bits of ``{flag name: bool}`` (every flag named, no other)."""
        if len(flags) != len(self.flags) or any(f not in flags for f in self.flags):
            raise ValueError(f"{self.name}: expected the flags {self.flags}, got {sorted(flags)}")
        bits = 0
        for k, f in enumerate(self.flags):
            if flags[f]:
                bits |= 1 << k
        return bits

    def state_names(self, bits: int) -> Tuple[str, ...]:
        """The buffers kept under these flag bits, in the order the kernel takes them."""
        kept = self._kept.get(bits)
        if kept is None:
            kept = self._kept[bits] = _kernels.kept_buffers(self.id, bits)
        return kept

    @property
    def reduces(self) -> bool:
        """True for an algorithm with a stats pass (per-tensor statistics)."""
        return bool(self.stats)

    def __repr__(self) -> str:
        extra = f", stats={self.stats}, tensor_state={self.tensor_state}" if self.stats else ""
        return (f"AlgoSpec({self.name!r}, scalars={self.scalars}, flags={self.flags}, "
                f"buffers={self.buffers}{extra})")
