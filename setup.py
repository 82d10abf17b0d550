"""Builds fusedoptim._C against the installed torch: pip install --no-build-isolation -e ."""

import os
import platform

from setuptools import setup
from torch.utils.cpp_extension import BuildExtension, CppExtension

ROOT = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join("csrc")
INCLUDE_DIRS = [os.path.join(ROOT, "csrc", "include"), os.path.join(ROOT, "csrc")]

# Exact IEEE arithmetic in the order the sources write it (no FMA contraction): every
# instruction set then gives bit-identical fp32/fp64 results (see docs/design.md).
COMMON_FLAGS = ["-O3", "-std=c++17", "-ffp-contract=off", "-fno-math-errno"]

IS_X86 = platform.machine().lower() in ("x86_64", "amd64")

# One translation unit per instruction set, each with its own target flags. They include no
# torch header; they are compiled here and linked into the extension.
CPU_ISA_FLAGS = {"scalar": []}
if IS_X86:
    CPU_ISA_FLAGS["avx2"] = ["-mavx2", "-mfma", "-mf16c"]
    CPU_ISA_FLAGS["avx512"] = ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx2", "-mfma", "-mf16c"]


class BuildWithIsaKernels(BuildExtension):
    def build_extension(self, ext):
        objects = []
        for isa, flags in CPU_ISA_FLAGS.items():
            objects += self.compiler.compile(
                [os.path.join(CSRC, "cpu", f"kernels_{isa}.cpp")],
                output_dir=self.build_temp,
                include_dirs=INCLUDE_DIRS,
                extra_postargs=COMMON_FLAGS + ["-fPIC"] + flags,
            )
        ext.extra_objects = list(ext.extra_objects or []) + objects
        super().build_extension(ext)


ext = CppExtension(
    name="fusedoptim._C",
    sources=[
        os.path.join(CSRC, "bindings.cpp"),
        os.path.join(CSRC, "bucket.cpp"),
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
    ],
    include_dirs=INCLUDE_DIRS,
    # torch's CPU build threads with OpenMP (its own libgomp.so.1, which the loader shares
    # with us): without -fopenmp at::parallel_for would silently run on one thread.
    extra_compile_args=COMMON_FLAGS + ["-fopenmp"],
    extra_link_args=["-fopenmp"],
)

setup(ext_modules=[ext], cmdclass={"build_ext": BuildWithIsaKernels})
