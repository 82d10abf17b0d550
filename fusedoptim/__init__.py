"""fusedoptim: drop-in torch.optim optimizers whose step() runs fused multi-tensor kernels."""

from fusedoptim._extension import (
    available_cpu_capabilities,
    compiled_cpu_capabilities,
    cpu_capability,
    extension_available,
    set_cpu_capability,
)
from fusedoptim.adam import Adam
from fusedoptim.adamw import AdamW
from fusedoptim.optimizer import FusedOptimizer, ReferencePathWarning
from fusedoptim.sgd import SGD

__version__ = "0.1.0"

__all__ = [
    "SGD",
    "Adam",
    "AdamW",
    "FusedOptimizer",
    "ReferencePathWarning",
    "available_cpu_capabilities",
    "compiled_cpu_capabilities",
    "cpu_capability",
    "extension_available",
    "set_cpu_capability",
]
