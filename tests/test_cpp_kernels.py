"""Builds the secondary CMake project (the CPU kernels without torch) and runs its C++ tests:
csrc/tests/test_cpu_kernels.cpp (every elementwise kernel of the KernelTable bit-identical on
every supported instruction set to the scalar path (fp32/fp64/bf16/fp16), the reduction kernels
against a double-precision reference, half conversions, and fp64 rules against plain double
transcriptions of torch.optim's formulas) and csrc/tests/test_cuda_emulated.cpp (the CUDA
kernels built by the host compiler and run on the CPU against the CPU kernels: NOTE: [CUDA
emulation] in csrc/tests/cuda_emulation/cuda_runtime.h)."""

import contextlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _tool(name):
    """The tool beside this interpreter (scripts/bootstrap.sh installs cmake into .venv), else on PATH."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else shutil.which(name)


@contextlib.contextmanager
def _build_dir(tmp_path):
    """build/pytest-cmake (git-ignored), reused between runs: CMake rebuilds what changed, so a
    run costs the C++ tests' own ~15 s instead of a full build of the three ISA kernel units
    and the emulated CUDA units (~2 minutes on 2 cores).
    An exclusive lock keeps two concurrent pytest runs from building it at once.
    FUSEDOPTIM_TEST_FRESH_CMAKE=1 builds from scratch in a temporary directory instead."""
    if os.environ.get("FUSEDOPTIM_TEST_FRESH_CMAKE"):
        yield tmp_path / "build"
        return
    build = ROOT / "build" / "pytest-cmake"
    build.mkdir(parents=True, exist_ok=True)
    with open(build / ".pytest-lock", "w") as lock:
        try:
            import fcntl

            fcntl.flock(lock, fcntl.LOCK_EX)
        except ImportError:  # not POSIX: no lock
            pass
        yield build


def test_cmake_build_and_ctest(tmp_path):
    cmake, ctest = _tool("cmake"), _tool("ctest")
    if cmake is None or ctest is None:
        if os.environ.get("CI"):
            pytest.fail("cmake is required in CI (scripts/bootstrap.sh installs it)")
        pytest.skip("cmake not installed")
    with _build_dir(tmp_path) as build:
        subprocess.run([cmake, "-S", str(ROOT), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release"],
                       check=True, capture_output=True)
        subprocess.run([cmake, "--build", str(build), "-j", "2"], check=True, capture_output=True)
        # --verbose: each test's own output, which the checks below read
        result = subprocess.run([ctest, "--test-dir", str(build), "--output-on-failure", "--verbose"],
                                capture_output=True, text=True)
    output = result.stdout
    assert result.returncode == 0, output[-4000:] + result.stderr
    assert "FAIL " not in output, output[-4000:]
    assert re.search(r"scalar; \d+ checks; 0 failures", output), output[-2000:]
    assert re.search(r"cuda kernels emulated: [1-9]\d* checks; 0 failures", output), output[-2000:]
    # every instruction set this CPU runs beyond scalar was checked
    import fusedoptim

    n_isas = len(fusedoptim.available_cpu_capabilities()) - 1
    assert f"{n_isas} instruction sets checked against scalar" in output, output[-2000:]
