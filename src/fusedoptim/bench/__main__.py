"""``python -m fusedoptim.bench``: the benchmark report (see :mod:`fusedoptim.bench`)."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
