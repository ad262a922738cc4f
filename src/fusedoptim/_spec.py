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

__all__ = ["AlgoSpec"]


class AlgoSpec:
    """An element-wise algorithm: ``name`` (its entry in rules.h's ``FO_ALGOS``), the
    names of its per-step ``scalars`` (what ``kernel_scalars`` returns), of its ``flags``
    (what ``kernel_flags`` returns) and of every state ``buffer`` it can keep."""

    __slots__ = ("name", "id", "scalars", "flags", "buffers", "_kept")

    def __init__(self, name: str, *, scalars: Sequence[str], flags: Sequence[str] = (), buffers: Sequence[str]):
        native = _kernels.ALGORITHMS.get(name)
        if native is None:
            raise ImportError(f"fusedoptim: the extension has no algorithm {name!r} (it has "
                              f"{sorted(_kernels.ALGORITHMS)}); rebuild it after editing rules.h")
        mine = {"scalars": tuple(scalars), "flags": tuple(flags), "buffers": tuple(buffers)}
        diff = [f"{k}: Python {v} != native {getattr(native, k)}" for k, v in mine.items() if v != getattr(native, k)]
        if diff:
            raise ImportError(f"fusedoptim: the spec of {name!r} does not match the extension (rules.h); "
                              + "; ".join(diff))
        self.name, self.id = name, native.id
        self.scalars, self.flags, self.buffers = mine["scalars"], mine["flags"], mine["buffers"]
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

    def __repr__(self) -> str:
        return (f"AlgoSpec({self.name!r}, scalars={self.scalars}, flags={self.flags}, "
                f"buffers={self.buffers})")
