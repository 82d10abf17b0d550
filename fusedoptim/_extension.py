"""Loads the compiled core, fusedoptim._C, or explains once why steps take the reference path."""

import importlib
import os
import warnings

import torch

REBUILD_HINT = "rebuild it with `pip install --no-build-isolation -e .` in the fusedoptim checkout"


def _load():
    try:
        _C = importlib.import_module("fusedoptim._C")
    except ImportError as error:
        return None, f"the compiled extension fusedoptim._C could not be loaded ({error})"
    built = _C.built_with_torch.split("+")[0].split(".")[:2]
    running = torch.__version__.split("+")[0].split(".")[:2]
    if built != running:
        return None, (
            f"fusedoptim._C was built against torch {_C.built_with_torch} "
            f"but torch {torch.__version__} is running"
        )
    return _C, None


_C, _load_error = _load()
if _C is not None:
    from fusedoptim import _ops  # noqa: F401  (fake implementations of the registered ops)
if _load_error is not None:
    warnings.warn(
        f"fusedoptim: {_load_error}; every step takes the plain-torch reference path, "
        f"which is correct but not fused. To fix it, {REBUILD_HINT}.",
        RuntimeWarning,
        stacklevel=3,
    )


_requested = os.environ.get("FUSEDOPTIM_CPU_CAPABILITY")
if _C is not None and _requested is not None and _requested not in _C.compiled_cpu_capabilities():
    warnings.warn(
        f"fusedoptim: FUSEDOPTIM_CPU_CAPABILITY={_requested!r} is not one of "
        f"{list(_C.compiled_cpu_capabilities())}; it is ignored",
        RuntimeWarning,
        stacklevel=3,
    )


def extension_available() -> bool:
    """Whether the compiled kernels are loaded (otherwise every step takes the reference path)."""
    return _C is not None


def cuda_kernels_compiled() -> bool:
    """Whether the extension was built with its CUDA kernels (torch with CUDA and nvcc at build
    time); without them CUDA params take the reference path."""
    return _C is not None and _C.cuda_kernels_compiled()


def _require_extension():
    if _C is None:
        raise RuntimeError(f"fusedoptim: {_load_error}; {REBUILD_HINT}")
    return _C


def compiled_cpu_capabilities() -> list:
    """CPU instruction sets compiled into the extension, lowest first."""
    return list(_require_extension().compiled_cpu_capabilities())


def available_cpu_capabilities() -> list:
    """CPU instruction sets this machine can run, lowest first."""
    return list(_require_extension().available_cpu_capabilities())


def cpu_capability() -> str:
    """The CPU instruction set that steps use now."""
    return _require_extension().cpu_capability()


def set_cpu_capability(name: str) -> str:
    """Force the CPU instruction set (one of available_cpu_capabilities()); returns the previous one.

    The environment variable FUSEDOPTIM_CPU_CAPABILITY caps the choice at import time.
    """
    extension = _require_extension()
    if name not in extension.available_cpu_capabilities():
        raise ValueError(
            f"fusedoptim: CPU capability {name!r} is not available here; "
            f"available: {list(extension.available_cpu_capabilities())}"
        )
    previous = extension.cpu_capability()
    extension.set_cpu_capability(name)
    return previous
