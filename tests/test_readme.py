"""README.md stays true: its options table lists every constructor option of every
optimizer, and the classes it names exist."""

import inspect
import os
import re

import fusedoptim

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _readme():
    with open(os.path.join(ROOT, "README.md")) as f:
        return f.read()


def test_options_table_lists_every_constructor_option():
    table = _readme().split("<!-- options table:", 1)[1].split("\n\n", 1)[0]
    rows = {m.group(1): [o.strip() for o in m.group(2).split(",")]
            for m in re.finditer(r"^\| `(\w+)` \| ([^|]+) \|", table, re.M)}
    documented = {name for name in fusedoptim.__all__
                  if inspect.isclass(getattr(fusedoptim, name))
                  and issubclass(getattr(fusedoptim, name), __import__("torch").optim.Optimizer)
                  and name != "FusedOptimizer"}
    assert set(rows) == documented
    for name, options in rows.items():
        signature = inspect.signature(getattr(fusedoptim, name).__init__)
        expected = [p for p in signature.parameters if p not in ("self", "params")]
        assert options == expected, name


def test_fresh_machine_commands():
    text = _readme()
    assert "scripts/bootstrap.sh && .venv/bin/python -m fusedoptim.bench\n" in text
    with open(os.path.join(ROOT, ".ci", "run")) as f:
        ci = f.read()
    test_command = "scripts/bootstrap.sh && .venv/bin/python -m pytest -q tests"
    assert test_command + "\n" in text and test_command in ci
