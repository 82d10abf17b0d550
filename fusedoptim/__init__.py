"""fusedoptim: drop-in torch.optim optimizers whose step() runs fused multi-tensor kernels."""

from fusedoptim._extension import (
    available_cpu_capabilities,
    compiled_cpu_capabilities,
    cpu_capability,
    cuda_kernels_compiled,
    extension_available,
    set_cpu_capability,
)
from fusedoptim.adadelta import Adadelta
from fusedoptim.adagrad import Adagrad
from fusedoptim.adam import Adam
from fusedoptim.adamax import Adamax
from fusedoptim.adamw import AdamW
from fusedoptim.asgd import ASGD
from fusedoptim.clip import clip_grad_norm_
from fusedoptim.lamb import LAMB
from fusedoptim.lbfgs import LBFGS
from fusedoptim.lion import Lion
from fusedoptim.nadam import NAdam
from fusedoptim.optimizer import FusedOptimizer, ReferencePathWarning
from fusedoptim.radam import RAdam
from fusedoptim.rmsprop import RMSprop
from fusedoptim.rprop import Rprop
from fusedoptim.sgd import SGD

__version__ = "0.1.0"

__all__ = [
    "SGD",
    "Adam",
    "AdamW",
    "Adadelta",
    "Adagrad",
    "Adamax",
    "ASGD",
    "NAdam",
    "RAdam",
    "RMSprop",
    "Rprop",
    "LAMB",
    "Lion",
    "LBFGS",
    "FusedOptimizer",
    "ReferencePathWarning",
    "clip_grad_norm_",
    "available_cpu_capabilities",
    "compiled_cpu_capabilities",
    "cpu_capability",
    "cuda_kernels_compiled",
    "extension_available",
    "set_cpu_capability",
]
