"""Builds the secondary CMake project (the CPU kernels without torch) and runs its C++ tests:
bit-identity of every supported instruction set with the scalar path, half conversions, and
the fp64 rules against a plain double transcription."""

import os
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


def test_cmake_build_and_ctest(tmp_path):
    cmake, ctest = _tool("cmake"), _tool("ctest")
    if cmake is None or ctest is None:
        if os.environ.get("CI"):
            pytest.fail("cmake is required in CI (scripts/bootstrap.sh installs it)")
        pytest.skip("cmake not installed")
    build = tmp_path / "build"
    subprocess.run([cmake, "-S", str(ROOT), "-B", str(build)], check=True, capture_output=True)
    subprocess.run([cmake, "--build", str(build), "-j", "2"], check=True, capture_output=True)
    result = subprocess.run([ctest, "--test-dir", str(build), "--output-on-failure"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    output = subprocess.run([str(build / "test_cpu_kernels")], capture_output=True, text=True, check=True).stdout
    assert "0 failures" in output
