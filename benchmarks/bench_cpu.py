#!/usr/bin/env python
"""The full CPU sweep: every algorithm on gpt2 and small, fp32, 7 runs.

Same program and options as `python -m fusedoptim.bench` (fusedoptim/bench/), whose
defaults are a quick subset; options given here override these defaults.
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from fusedoptim.bench import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["--algos", "all", "--runs", "7", *sys.argv[1:]]))
