#!/usr/bin/env python
"""`python benchmarks/bench.py ...` is `python -m fusedoptim.bench ...` from a checkout."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from fusedoptim.bench import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
