"""Entry point of ``fusedoptim demo``: dispatches to the digits/MNIST or the toy2d demo."""
from __future__ import annotations

import sys
from typing import Optional, Sequence

from ._util import DemoError

__all__ = ["main", "DemoError"]


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run a demo; returns the process exit code (0, or 2 for a usage problem)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] == "toy2d":
            from . import toy2d
            return toy2d.main(argv[1:])
        from . import train
        return train.main(argv)
    except DemoError as e:
        prog = "fusedoptim demo toy2d" if argv and argv[0] == "toy2d" else "fusedoptim demo"
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
