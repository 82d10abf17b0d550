#!/usr/bin/env bash
# Sets up .venv from the machine's python3: torch (CPU build; never another one: the
# extension is built against it with --no-build-isolation), the build and test tools, and
# fusedoptim itself, editable. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${FUSEDOPTIM_TORCH_SPEC:-torch==2.13.0}

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
# numpy: torch warns on import without it. cmake: the C++ kernel tests (tests/test_cpp_kernels.py).
# matplotlib: the benchmark's and the example's --plot, checked by the tests.
.venv/bin/python -m pip install -q "$TORCH_SPEC" pybind11 ninja pytest setuptools wheel numpy cmake matplotlib
.venv/bin/python -m pip install -q --no-build-isolation --no-deps -e .
.venv/bin/python -c "import fusedoptim, torch; assert fusedoptim.extension_available(); print('fusedoptim ready: torch', torch.__version__, '| CPU kernels:', fusedoptim.cpu_capability())"
