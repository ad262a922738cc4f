"""Command line: ``python -m fusedoptim demo ...`` (also the ``fusedoptim`` console script)."""
from __future__ import annotations

import sys
from typing import Optional, Sequence

USAGE = """\
usage: fusedoptim [--version] COMMAND [options]

commands:
  demo          train an MLP on handwritten digits (or --mnist DIR) with every optimizer
                and compare time, time inside opt.step, epochs to a target accuracy
  demo toy2d    the 2-11-1 network on a 2-D point cloud, with and without L2
                regularization, plotting the decision boundaries
  demo --state-dtype bfloat16
                Adam with float32 vs bfloat16 state on the digits and a regression task,
                over a few seeds (final loss/accuracy vs the float32 spread)

'fusedoptim demo --help' and 'fusedoptim demo toy2d --help' list the options.
"""


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        return 0 if argv else 2
    if argv[0] == "--version":
        from . import __version__
        print(f"fusedoptim {__version__}")
        return 0
    if argv[0] == "demo":
        from .demo.cli import main as demo_main
        return demo_main(argv[1:])
    print(USAGE, end="", file=sys.stderr)
    print(f"fusedoptim: error: unknown command {argv[0]!r}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
