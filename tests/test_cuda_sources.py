"""The CUDA kernels compile and link on any machine with nvcc, GPU or not.

The CPU torch CI builds against cannot build the CUDA extension, so this compiles every
csrc/cuda/*.cu with nvcc for sm_80 and sm_90 (as setup.py does, warnings as errors), links the
objects with a stand-in for the host registry and runs that: every rule must have a CUDA
launcher (NOTE: [CUDA build] in setup.py, NOTE: [CUDA without torch headers]).
"""

import concurrent.futures
import os
import pathlib
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
CUDA_SOURCES = sorted((ROOT / "csrc" / "cuda").glob("*.cu"))
# setup.py's NVCC_FLAGS; no torch include path: the sources must not need one.
NVCC_FLAGS = [
    "-O3", "-std=c++17", "--fmad=false",
    "-gencode=arch=compute_80,code=sm_80", "-gencode=arch=compute_90,code=sm_90",
    "-gencode=arch=compute_90,code=compute_90",
    f"-I{ROOT / 'csrc' / 'include'}", f"-I{ROOT / 'csrc'}",
]


def _nvcc():
    found = shutil.which("nvcc")
    if found is None and os.environ.get("CUDA_HOME"):
        candidate = pathlib.Path(os.environ["CUDA_HOME"]) / "bin" / "nvcc"
        found = str(candidate) if candidate.exists() else None
    return found


NVCC = _nvcc()
pytestmark = pytest.mark.skipif(NVCC is None, reason="nvcc not found (it is installed on the CI machine)")


@pytest.fixture(scope="module")
def cuda_objects(tmp_path_factory):
    out = tmp_path_factory.mktemp("cuda_objects")

    def compile_one(source):
        target = out / (source.stem + ".o")
        result = subprocess.run(
            [NVCC, *NVCC_FLAGS, "-Werror", "all-warnings", "-c", str(source), "-o", str(target)],
            capture_output=True, text=True,
        )
        return source.name, result, target

    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        results = list(pool.map(compile_one, CUDA_SOURCES))
    return out, results


def test_every_algorithm_has_a_cuda_file():
    names = {source.stem for source in CUDA_SOURCES}
    # LBFGS's passes run on the CPU only (CUDA params take torch's own LBFGS).
    algorithms = {p.stem.removesuffix("_cpu") for p in (ROOT / "csrc" / "cpu").glob("*_cpu.cpp")} - {"lbfgs"}
    assert {f"{a}_cuda" for a in algorithms} <= names


@pytest.mark.parametrize("source", [s.name for s in CUDA_SOURCES])
def test_cuda_source_compiles(cuda_objects, source):
    _, results = cuda_objects
    name, result, _ = next(r for r in results if r[0] == source)
    assert result.returncode == 0, f"nvcc failed on {name}:\n{result.stdout}\n{result.stderr}"


def test_no_torch_header_in_cuda_sources():
    for source in [*CUDA_SOURCES, ROOT / "csrc" / "cuda" / "sweep.cuh"]:
        for line in source.read_text().splitlines():
            if line.startswith("#include"):
                assert not any(t in line for t in ("ATen", "c10", "torch")), f"{source.name}: {line}"


def test_every_rule_registers_a_cuda_launcher(cuda_objects, tmp_path):
    out, results = cuda_objects
    if any(result.returncode != 0 for _, result, _ in results):
        pytest.fail("a CUDA source does not compile (see test_cuda_source_compiles)")
    program = tmp_path / "cuda_registry_check"
    link = subprocess.run(
        [NVCC, *NVCC_FLAGS, str(ROOT / "csrc" / "tests" / "cuda_registry_check.cpp"),
         *[str(target) for _, _, target in results], "-o", str(program)],
        capture_output=True, text=True,
    )
    assert link.returncode == 0, f"linking the CUDA objects failed:\n{link.stdout}\n{link.stderr}"
    run = subprocess.run([str(program)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "every rule has a CUDA launcher" in run.stdout
