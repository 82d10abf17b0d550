"""Builds fusedoptim._C against the installed torch: pip install --no-build-isolation -e ."""

import glob
import os
import platform
from concurrent.futures import ThreadPoolExecutor

import torch
from setuptools import setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

ROOT = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join("csrc")
INCLUDE_DIRS = [os.path.join(ROOT, "csrc", "include"), os.path.join(ROOT, "csrc")]

# Exact IEEE arithmetic in the order the sources write it (no FMA contraction): every
# instruction set then gives bit-identical fp32/fp64 results (see docs/design.md). No debug
# info (Python's CFLAGS ask for -g): it took a third of the kernels' compile time and 15x
# their object size.
COMMON_FLAGS = ["-O3", "-std=c++17", "-ffp-contract=off", "-fno-math-errno", "-g0"]

IS_X86 = platform.machine().lower() in ("x86_64", "amd64")

# One translation unit per instruction set, each with its own target flags. They include no
# torch header; they are compiled here and linked into the extension.
CPU_ISA_FLAGS = {"scalar": []}
if IS_X86:
    CPU_ISA_FLAGS["avx2"] = ["-mavx2", "-mfma", "-mf16c"]
    CPU_ISA_FLAGS["avx512"] = ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx2", "-mfma", "-mf16c"]


# NOTE: [CUDA build]
# The CUDA kernels (csrc/cuda/*.cu: one file per algorithm, plus the registry) are built when
# the installed torch has CUDA and nvcc is found; otherwise the build is CPU-only and CUDA params
# take the reference path. They include no torch header (NOTE: [CUDA without torch headers]),
# so tests/test_cuda_sources.py compiles them with nvcc on machines without a CUDA torch too.
# sm_80 (A100) and sm_90 (H100) code, plus sm_90 PTX for later GPUs; FUSEDOPTIM_CUDA_ARCHS
# (e.g. "80;90") overrides the list.
CUDA_SOURCES = sorted(glob.glob(os.path.join(CSRC, "cuda", "*.cu")))
WITH_CUDA = torch.version.cuda is not None and CUDA_HOME is not None and os.environ.get("FUSEDOPTIM_NO_CUDA") != "1"


def cuda_arch_flags():
    archs = [a.strip() for a in os.environ.get("FUSEDOPTIM_CUDA_ARCHS", "80;90").split(";") if a.strip()]
    flags = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]
    return flags + [f"-gencode=arch=compute_{archs[-1]},code=compute_{archs[-1]}"]


NVCC_FLAGS = ["-O3", "-std=c++17", "--fmad=false"] + cuda_arch_flags()


class BuildWithIsaKernels(BuildExtension):
    def build_extension(self, ext):
        # The instruction-set units are the build's heaviest (a minute or more each): they
        # compile side by side, each in a directory of its own (torch's ninja compile writes
        # its build file there).
        def compile_isa(isa, flags):
            return self.compiler.compile(
                [os.path.join(CSRC, "cpu", f"kernels_{isa}.cpp")],
                output_dir=os.path.join(self.build_temp, f"isa_{isa}"),
                include_dirs=INCLUDE_DIRS,
                extra_postargs=COMMON_FLAGS + ["-fPIC"] + flags,
            )

        with ThreadPoolExecutor(max_workers=len(CPU_ISA_FLAGS)) as pool:
            per_isa = list(pool.map(compile_isa, CPU_ISA_FLAGS.keys(), CPU_ISA_FLAGS.values()))
        ext.extra_objects = list(ext.extra_objects or []) + [o for objects in per_isa for o in objects]
        super().build_extension(ext)


HOST_SOURCES = [
    os.path.join(CSRC, "bindings.cpp"),
    os.path.join(CSRC, "bucket.cpp"),
    os.path.join(CSRC, "cuda_table.cpp"),
    os.path.join(CSRC, "ops.cpp"),
    os.path.join(CSRC, "cpu", "cpu_features.cpp"),
    os.path.join(CSRC, "cpu", "dispatch.cpp"),
    os.path.join(CSRC, "cpu", "adadelta_cpu.cpp"),
    os.path.join(CSRC, "cpu", "adagrad_cpu.cpp"),
    os.path.join(CSRC, "cpu", "adam_cpu.cpp"),
    os.path.join(CSRC, "cpu", "adamax_cpu.cpp"),
    os.path.join(CSRC, "cpu", "asgd_cpu.cpp"),
    os.path.join(CSRC, "cpu", "grad_norm_cpu.cpp"),
    os.path.join(CSRC, "cpu", "lamb_cpu.cpp"),
    os.path.join(CSRC, "cpu", "lion_cpu.cpp"),
    os.path.join(CSRC, "cpu", "nadam_cpu.cpp"),
    os.path.join(CSRC, "cpu", "radam_cpu.cpp"),
    os.path.join(CSRC, "cpu", "rmsprop_cpu.cpp"),
    os.path.join(CSRC, "cpu", "rprop_cpu.cpp"),
    os.path.join(CSRC, "cpu", "sgd_cpu.cpp"),
    os.path.join(CSRC, "cpu", "lbfgs_cpu.cpp"),
]

# torch's CPU build threads with OpenMP (its own libgomp.so.1, which the loader shares
# with us): without -fopenmp at::parallel_for would silently run on one thread.
if WITH_CUDA:
    ext = CUDAExtension(
        name="fusedoptim._C",
        sources=HOST_SOURCES + CUDA_SOURCES,
        include_dirs=INCLUDE_DIRS,
        extra_compile_args={"cxx": COMMON_FLAGS + ["-fopenmp"], "nvcc": NVCC_FLAGS},
        extra_link_args=["-fopenmp"],
    )
else:
    ext = CppExtension(
        name="fusedoptim._C",
        sources=HOST_SOURCES,
        include_dirs=INCLUDE_DIRS,
        extra_compile_args=COMMON_FLAGS + ["-fopenmp"],
        extra_link_args=["-fopenmp"],
    )

setup(ext_modules=[ext], cmdclass={"build_ext": BuildWithIsaKernels})
