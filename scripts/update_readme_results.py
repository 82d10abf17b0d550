#!/usr/bin/env python
"""Regenerate README.md's results tables from the benchmark JSON files they name.

Each block `<!-- results: benchmarks/results/FILE.json [layout,...] -->` ...
`<!-- /results -->` is replaced by the tables fusedoptim.bench.report makes of that file;
tests/test_bench.py fails when README.md differs from what this script writes.
"""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from fusedoptim.bench.report import render_readme_results  # noqa: E402

if __name__ == "__main__":
    path = os.path.join(ROOT, "README.md")
    with open(path) as f:
        text = f.read()
    new = render_readme_results(text, ROOT)
    if new != text:
        with open(path, "w") as f:
            f.write(new)
    print("README.md " + ("updated" if new != text else "already up to date"))
