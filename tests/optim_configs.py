"""Registry of optimizer configurations (in the spirit of torch's ``OptimizerInfo``).

Every constructor option of ``SGD``, ``Adam``, ``AdamW``, ``Adadelta``, ``Adagrad``, ``Adamax``,
``ASGD``, ``NAdam``, ``RAdam``, ``RMSprop`` and ``Rprop`` (as in torch.optim 2.13) and of
fusedoptim's ``LAMB`` and ``Lion`` appears in at least one entry, alone and in meaningful
combinations.  LAMB and Lion have no torch class: their side of the comparison is the plain-torch
oracle in ``reference_optimizers.py`` (see ``helpers.torch_cls``).  Each entry says how fusedoptim is
constructed and, when torch cannot run the very same flags on a CPU (``capturable=True`` without
``fused=True`` asserts inside torch's step on CPU), how the torch side of the comparison is
constructed instead.

Tensor-valued hyperparameters are written as :class:`TensorHP` placeholders and materialized
into a *fresh* tensor for each optimizer instance (torch and fusedoptim must never share a
hyperparameter tensor: schedulers and ``lr.fill_`` mutate them in place).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

TORCH_OPTIM_NAMES = (
    "SGD", "Adam", "AdamW", "Adadelta", "Adagrad", "Adamax", "ASGD", "NAdam", "RAdam", "RMSprop",
    "Rprop",
)
# Optimizers torch.optim does not have: compared with tests/reference_optimizers.py
EXTRA_OPTIM_NAMES = ("LAMB", "Lion")
OPTIM_NAMES = TORCH_OPTIM_NAMES + EXTRA_OPTIM_NAMES
# Options fusedoptim adds to every optimizer (not in the registry: no torch class has them),
# in signature order.
FUSEDOPTIM_OPTIONS = ("max_grad_norm", "norm_type", "state_dtype", "master_weights", "stochastic_rounding")


def fusedoptim_options(optim):
    """fusedoptim's own options of `optim`, last in its signature (LAMB's max_grad_norm is its
    own, Apex's, and it has no norm_type)."""
    return FUSEDOPTIM_OPTIONS[2:] if optim == "LAMB" else FUSEDOPTIM_OPTIONS


@dataclasses.dataclass(frozen=True)
class TensorHP:
    """A 1-element tensor hyperparameter.

    ``dtype=None`` means: the (real) dtype of the params for fp32/fp64 params (a careful
    user's choice that keeps fp64 runs in fp64), float32 otherwise.  ``shape`` lets us test
    non-0-dim 1-element tensors (torch squeezes them with ``_to_scalar``).
    """

    value: float
    dtype: torch.dtype | None = None
    shape: tuple = ()

    def make(self, param_dtype: torch.dtype) -> torch.Tensor:
        dtype = self.dtype
        if dtype is None:
            real = param_dtype.to_real() if param_dtype.is_complex else param_dtype
            dtype = real if real in (torch.float32, torch.float64) else torch.float32
        return torch.full(self.shape, self.value, dtype=dtype)

    def __repr__(self):
        d = "" if self.dtype is None else f",{str(self.dtype).replace('torch.', '')}"
        s = "" if self.shape == () else f",shape={self.shape}"
        return f"T({self.value}{d}{s})"


def materialize(value: Any, param_dtype: torch.dtype) -> Any:
    """Replace TensorHP placeholders by fresh tensors (recursively in tuples/lists/dicts)."""
    if isinstance(value, TensorHP):
        return value.make(param_dtype)
    if isinstance(value, tuple):
        return tuple(materialize(v, param_dtype) for v in value)
    if isinstance(value, list):
        return [materialize(v, param_dtype) for v in value]
    if isinstance(value, dict):
        return {k: materialize(v, param_dtype) for k, v in value.items()}
    return value


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    optim: str
    kwargs: dict
    # kwargs for the torch.optim side of the comparison; None = identical to ``kwargs``.
    torch_kwargs: dict | None = None
    note: str = ""

    @property
    def id(self) -> str:
        if not self.kwargs:
            return f"{self.optim}-defaults"
        parts = []
        for k, v in self.kwargs.items():
            parts.append(f"{k}={v!r}")
        return f"{self.optim}-" + ",".join(parts)

    @property
    def differentiable(self) -> bool:
        return bool(self.kwargs.get("differentiable", False))

    @property
    def expects_fused_path(self) -> bool:
        """Dense CPU params take the fused kernels unless differentiable=True."""
        return not self.differentiable

    @property
    def differing_keys(self) -> set:
        """param_group keys whose value legitimately differs between the torch run and ours."""
        if self.torch_kwargs is None:
            return set()
        keys = set(self.kwargs) | set(self.torch_kwargs)
        return {k for k in keys if repr(self.kwargs.get(k)) != repr(self.torch_kwargs.get(k))}

    def fused_kwargs(self, param_dtype: torch.dtype) -> dict:
        return materialize(self.kwargs, param_dtype)

    def reference_kwargs(self, param_dtype: torch.dtype) -> dict:
        kw = self.kwargs if self.torch_kwargs is None else self.torch_kwargs
        return materialize(kw, param_dtype)


def _C(optim, note="", torch_kwargs=None, **kwargs):
    return OptimConfig(optim, kwargs, torch_kwargs, note)


T = TensorHP

SGD_CONFIGS = [
    _C("SGD"),
    _C("SGD", lr=0.1),
    _C("SGD", lr=0.1, momentum=0.9),
    _C("SGD", lr=0.05, momentum=0.9, dampening=0.5),
    _C("SGD", lr=0.05, momentum=0.9, nesterov=True),
    _C("SGD", lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.1),
    _C("SGD", lr=0.1, weight_decay=0.1),
    _C("SGD", lr=0.05, momentum=0.8, dampening=0.1, weight_decay=0.05),
    _C("SGD", lr=0.1, maximize=True),
    _C("SGD", lr=0.05, momentum=0.9, weight_decay=0.1, maximize=True),
    _C("SGD", lr=0.05, momentum=0.9, nesterov=True, maximize=True),
    _C("SGD", lr=T(0.1)),
    _C("SGD", lr=T(0.05), momentum=0.9, nesterov=True),
    _C("SGD", lr=T(0.05, shape=(1,)), momentum=0.9),
    _C("SGD", lr=T(0.05, dtype=torch.float32), momentum=0.9, weight_decay=0.01),
    _C("SGD", lr=0.05, momentum=0.5, weight_decay=T(0.1)),
    _C("SGD", lr=0.05, momentum=0.9, foreach=False),
    _C("SGD", lr=0.05, momentum=0.9, dampening=0.2, foreach=True),
    _C("SGD", lr=T(0.05), momentum=0.9, foreach=True),
    _C("SGD", lr=0.05, momentum=0.9, fused=True),
    _C("SGD", lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.1, fused=True),
    _C("SGD", lr=T(0.05), fused=True),
    _C("SGD", lr=0.05, momentum=0.9, fused=False, foreach=False),
    _C("SGD", lr=0.05, momentum=0.9, weight_decay=0.1, differentiable=True),
    _C("SGD", lr=0.05, differentiable=True),
]

_CAPTURABLE_NOTE = (
    "torch's non-fused step asserts that capturable params live on an accelerator, so on CPU "
    "the torch side runs without capturable"
)


def _adam_family(optim, has_decoupled):
    cfgs = [
        _C(optim),
        _C(optim, lr=0.01),
        _C(optim, lr=0.01, betas=(0.8, 0.99)),
        _C(optim, lr=0.01, eps=1e-3),
        _C(optim, lr=0.01, weight_decay=0.1),
        _C(optim, lr=0.01, weight_decay=0.0),
        _C(optim, lr=0.01, amsgrad=True),
        _C(optim, lr=0.01, amsgrad=True, weight_decay=0.1, maximize=True),
        _C(optim, lr=0.01, maximize=True),
        _C(optim, lr=0.01, betas=(0.5, 0.9), eps=1e-6, weight_decay=0.05, amsgrad=True),
        _C(optim, lr=T(0.01)),
        _C(optim, lr=T(0.01, shape=(1,)), amsgrad=True, weight_decay=0.1),
        _C(optim, lr=T(0.01, dtype=torch.float32), weight_decay=0.1),
        _C(optim, lr=0.01, betas=(T(0.8), T(0.99))),
        _C(optim, lr=0.01, betas=(T(0.8, dtype=torch.float32), T(0.99, dtype=torch.float32))),
        _C(optim, lr=T(0.01), betas=(T(0.9, shape=(1,)), T(0.95)), amsgrad=True),
        _C(optim, lr=0.01, foreach=False),
        _C(optim, lr=0.01, amsgrad=True, weight_decay=0.1, foreach=True),
        _C(optim, lr=0.01, fused=True),
        _C(optim, lr=0.01, amsgrad=True, weight_decay=0.1, maximize=True, fused=True),
        _C(optim, lr=T(0.01), fused=True),
        _C(optim, lr=0.01, fused=False, foreach=False),
        _C(optim, lr=0.01, fused=True, capturable=True),
        _C(optim, lr=T(0.01), betas=(T(0.8), T(0.95)), fused=True, capturable=True),
        _C(
            optim,
            _CAPTURABLE_NOTE,
            torch_kwargs=dict(lr=0.01, weight_decay=0.1),
            lr=0.01,
            weight_decay=0.1,
            capturable=True,
        ),
        _C(
            optim,
            _CAPTURABLE_NOTE + " (and, without capturable, torch refuses foreach with a Tensor lr)",
            torch_kwargs=dict(lr=T(0.01), amsgrad=True),
            lr=T(0.01),
            amsgrad=True,
            foreach=True,
            capturable=True,
        ),
        _C(optim, lr=0.01, weight_decay=0.1, differentiable=True),
        _C(optim, lr=0.01, amsgrad=True, maximize=True, differentiable=True),
    ]
    if has_decoupled:
        cfgs += [
            _C(optim, lr=0.01, weight_decay=0.1, decoupled_weight_decay=True),
            _C(optim, lr=0.01, weight_decay=0.1, decoupled_weight_decay=True, amsgrad=True),
            _C(optim, lr=0.01, decoupled_weight_decay=True, maximize=True, fused=True,
               weight_decay=0.2),
            _C(optim, lr=T(0.01), decoupled_weight_decay=True, weight_decay=0.1),
            _C(optim, lr=0.01, decoupled_weight_decay=False, weight_decay=0.1),
        ]
    return cfgs


ADAM_CONFIGS = _adam_family("Adam", has_decoupled=True)
ADAMW_CONFIGS = _adam_family("AdamW", has_decoupled=False)


def _cap(optim, **kwargs):
    """capturable=True for fusedoptim; torch runs the same flags without it (_CAPTURABLE_NOTE)."""
    torch_kwargs = dict(kwargs)
    return _C(optim, _CAPTURABLE_NOTE, torch_kwargs=torch_kwargs, capturable=True, **kwargs)


ADADELTA_CONFIGS = [
    _C("Adadelta"),
    _C("Adadelta", lr=1.0, rho=0.5),
    _C("Adadelta", lr=0.5, rho=0.95, eps=1e-3),
    _C("Adadelta", lr=0.5, rho=0.0),
    _C("Adadelta", lr=0.5, weight_decay=0.1),
    _C("Adadelta", lr=0.5, weight_decay=0.1, maximize=True),
    _C("Adadelta", lr=T(0.5)),
    _C("Adadelta", lr=T(0.5, shape=(1,)), rho=0.8, weight_decay=0.05),
    _C("Adadelta", lr=T(0.5, dtype=torch.float32), weight_decay=0.1),
    _C("Adadelta", lr=0.5, weight_decay=0.1, foreach=True),
    _C("Adadelta", lr=T(0.5), maximize=True, foreach=True),
    _cap("Adadelta", lr=0.5, weight_decay=0.1),
    _C("Adadelta", lr=0.5, weight_decay=0.1, maximize=True, differentiable=True),
]

ADAGRAD_CONFIGS = [
    _C("Adagrad"),
    _C("Adagrad", lr=0.1, lr_decay=0.05),
    _C("Adagrad", lr=0.1, initial_accumulator_value=0.5),
    _C("Adagrad", lr=0.1, lr_decay=0.01, weight_decay=0.05, initial_accumulator_value=0.1,
       eps=1e-6),
    _C("Adagrad", lr=0.1, weight_decay=0.1, maximize=True),
    _C("Adagrad", lr=0.1, lr_decay=0.1, initial_accumulator_value=0.2, maximize=True),
    _C("Adagrad", lr=T(0.1)),
    _C("Adagrad", lr=T(0.1, shape=(1,)), lr_decay=0.1),
    _C("Adagrad", lr=T(0.1, dtype=torch.float32), lr_decay=0.1, weight_decay=0.1),
    _C("Adagrad", lr=0.1, lr_decay=0.05, foreach=True),
    _C("Adagrad", lr=T(0.1), weight_decay=0.1, foreach=True),
    _C("Adagrad", lr=0.1, lr_decay=0.05, weight_decay=0.1, fused=True),
    _C("Adagrad", lr=T(0.1), initial_accumulator_value=0.2, maximize=True, fused=True),
    _C("Adagrad", lr=0.1, lr_decay=0.01, weight_decay=0.1, initial_accumulator_value=0.3,
       maximize=True, differentiable=True),
]

ADAMAX_CONFIGS = [
    _C("Adamax"),
    _C("Adamax", lr=0.01, betas=(0.8, 0.99)),
    _C("Adamax", lr=0.01, betas=(0.3, 0.9)),  # 1 - beta1 >= 0.5: lerp's other branch
    _C("Adamax", lr=0.01, eps=1e-3),
    _C("Adamax", lr=0.01, weight_decay=0.1),
    _C("Adamax", lr=0.01, weight_decay=0.1, maximize=True),
    _C("Adamax", lr=0.01, betas=(0.5, 0.9), eps=1e-6, weight_decay=0.05),
    _C("Adamax", lr=T(0.01)),
    _C("Adamax", lr=T(0.01, shape=(1,)), weight_decay=0.1),
    _C("Adamax", lr=T(0.01, dtype=torch.float32), maximize=True),
    _C("Adamax", lr=0.01, weight_decay=0.1, foreach=True),
    _C("Adamax", lr=T(0.01), foreach=True),
    _cap("Adamax", lr=0.01, weight_decay=0.1),
    _C("Adamax", lr=0.01, weight_decay=0.1, maximize=True, differentiable=True),
]

_ASGD_FOREACH_NOTE = (
    "torch's foreach ASGD computes eta from the float32 'step' tensor in float32 tensor "
    "arithmetic (lambd * lr * step), its single-tensor path (and fusedoptim, where foreach is a "
    "no-op) in Python floats: eta differs by float32 roundings (1e-6 relative in the params "
    "after 10 steps), so torch runs single-tensor here"
)

# t0 small enough that mu = 1 / max(1, t - t0) != 1 (the averaging branch) within 10 steps.
ASGD_CONFIGS = [
    _C("ASGD"),  # t0 = 1e6: ax copies the param every step
    _C("ASGD", lr=0.05, t0=3),
    _C("ASGD", lr=0.05, t0=0.0),
    _C("ASGD", lr=0.05, lambd=0.1, alpha=0.5, t0=2),
    _C("ASGD", lr=0.05, lambd=0.05, alpha=1.0, t0=4.5),
    _C("ASGD", lr=0.05, weight_decay=0.1, t0=5),
    _C("ASGD", lr=0.05, weight_decay=0.1, t0=3, maximize=True),
    _C("ASGD", lr=T(0.05), t0=2),
    _C("ASGD", lr=T(0.05, shape=(1,)), lambd=0.1, t0=1),
    _C("ASGD", lr=T(0.05, dtype=torch.float32), weight_decay=0.05, t0=3),
    _C("ASGD", _ASGD_FOREACH_NOTE, torch_kwargs=dict(lr=0.05, t0=3, foreach=False),
       lr=0.05, t0=3, foreach=True),
    _C("ASGD", _ASGD_FOREACH_NOTE, torch_kwargs=dict(lr=T(0.05), lambd=0.1, t0=2, foreach=False),
       lr=T(0.05), lambd=0.1, t0=2, foreach=True),
    _cap("ASGD", lr=0.05, t0=3, weight_decay=0.1),
    _C("ASGD", lr=0.05, lambd=0.1, t0=0, weight_decay=0.1, maximize=True, differentiable=True),
]

NADAM_CONFIGS = [
    _C("NAdam"),
    _C("NAdam", lr=0.01, betas=(0.3, 0.9)),  # 1 - beta1 >= 0.5: lerp's other branch
    _C("NAdam", lr=0.01, momentum_decay=0.1, eps=1e-3),
    _C("NAdam", lr=0.01, momentum_decay=0.0),
    _C("NAdam", lr=0.01, weight_decay=0.1),
    _C("NAdam", lr=0.01, weight_decay=0.1, decoupled_weight_decay=True),
    _C("NAdam", lr=0.01, weight_decay=0.1, decoupled_weight_decay=True, maximize=True,
       momentum_decay=0.05, betas=(0.8, 0.99)),
    _C("NAdam", lr=0.01, weight_decay=0.1, maximize=True),
    _C("NAdam", lr=T(0.01)),
    _C("NAdam", lr=T(0.01, shape=(1,)), weight_decay=0.1, decoupled_weight_decay=True),
    _C("NAdam", lr=T(0.01, dtype=torch.float32), weight_decay=0.1),
    _C("NAdam", lr=T(0.01), weight_decay=0.1, momentum_decay=0.1, foreach=True),
    _cap("NAdam", lr=0.01, weight_decay=0.1),
    _C("NAdam", lr=0.01, weight_decay=0.1, decoupled_weight_decay=True, maximize=True,
       differentiable=True),
]

# rho_t <= 5 on the first steps (plain momentum update) and > 5 later (rectified), within the
# 10 steps: beta2 = 0.999 (the default) crosses at step 6 (rho_6 = 5.99), beta2 = 0.9 at step 6
# too (rho_5 = 4.58, rho_6 = 5.39); beta2 = 0.5 never does (rho_inf = 3).
RADAM_CONFIGS = [
    _C("RAdam"),
    _C("RAdam", lr=0.01, betas=(0.9, 0.9), eps=1e-3),
    _C("RAdam", lr=0.01, betas=(0.3, 0.9)),  # 1 - beta1 >= 0.5: lerp's other branch
    _C("RAdam", lr=0.01, betas=(0.8, 0.5)),
    _C("RAdam", lr=0.01, weight_decay=0.1),
    _C("RAdam", lr=0.01, weight_decay=0.1, decoupled_weight_decay=True, betas=(0.9, 0.9)),
    _C("RAdam", lr=0.01, weight_decay=0.1, maximize=True),
    _C("RAdam", lr=0.01, weight_decay=0.1, decoupled_weight_decay=True, maximize=True),
    _C("RAdam", lr=T(0.01), betas=(0.9, 0.9)),
    _C("RAdam", lr=T(0.01, shape=(1,)), weight_decay=0.1, decoupled_weight_decay=True),
    _C("RAdam", lr=T(0.01, dtype=torch.float32), weight_decay=0.1),
    _C("RAdam", lr=T(0.01), weight_decay=0.1, betas=(0.9, 0.9), foreach=True),
    _cap("RAdam", lr=0.01, weight_decay=0.1, betas=(0.9, 0.9)),
    _C("RAdam", lr=0.01, decoupled_weight_decay=True, weight_decay=0.1, maximize=True,
       betas=(0.9, 0.9), differentiable=True),
]

RMSPROP_CONFIGS = [
    _C("RMSprop"),
    _C("RMSprop", lr=0.01, alpha=0.3, centered=True),  # 1 - alpha >= 0.5: lerp's other branch
    _C("RMSprop", lr=0.01, alpha=0.9, eps=1e-3),
    _C("RMSprop", lr=0.01, centered=True),
    _C("RMSprop", lr=0.01, momentum=0.9),
    _C("RMSprop", lr=0.01, momentum=0.9, centered=True),
    _C("RMSprop", lr=0.01, weight_decay=0.1, momentum=0.5),
    _C("RMSprop", lr=0.01, weight_decay=0.1, centered=True, maximize=True),
    _C("RMSprop", lr=0.01, momentum=0.9, centered=True, weight_decay=0.1, maximize=True),
    _C("RMSprop", lr=T(0.01, shape=(1,)), momentum=0.9, centered=True),
    _C("RMSprop", lr=T(0.01, dtype=torch.float32), momentum=0.5, weight_decay=0.1),
    _C("RMSprop", lr=T(0.01), weight_decay=0.1, momentum=0.9, foreach=True),
    _cap("RMSprop", lr=0.01, momentum=0.9, centered=True),
    _C("RMSprop", lr=0.01, momentum=0.9, centered=True, weight_decay=0.1, maximize=True,
       differentiable=True),
]

# Narrow step_sizes so that both clamps are hit within 10 steps (0.05 * 1.5 > 0.06 and
# 0.05 * 0.3 < 0.02), and an lr outside the clamp range (the first step size is lr itself).
RPROP_CONFIGS = [
    _C("Rprop"),
    _C("Rprop", lr=0.05, etas=(0.3, 1.5)),
    _C("Rprop", lr=0.05, step_sizes=(0.02, 0.06)),
    _C("Rprop", lr=0.05, etas=(0.3, 1.5), step_sizes=(0.02, 0.06)),
    _C("Rprop", lr=0.5, etas=(0.1, 3.0), step_sizes=(1e-3, 0.1)),
    _C("Rprop", lr=0.05, maximize=True),
    _C("Rprop", lr=0.05, etas=(0.3, 1.5), step_sizes=(0.02, 0.06), maximize=True),
    _C("Rprop", lr=T(0.05)),
    _C("Rprop", lr=T(0.05, shape=(1,)), step_sizes=(0.02, 0.06)),
    _C("Rprop", lr=T(0.05, dtype=torch.float32), etas=(0.3, 1.5)),
    _C("Rprop", lr=T(0.05), step_sizes=(0.02, 0.06), foreach=True),
    _cap("Rprop", lr=0.05, etas=(0.3, 1.5), step_sizes=(0.02, 0.06)),
    _C("Rprop", lr=0.05, etas=(0.3, 1.5), step_sizes=(0.02, 0.06), maximize=True,
       differentiable=True),
]

# max_grad_norm=1.0 clips (the global norm of the test grads is ~5-30), 1e3 does not, 0 and
# None disable clipping.
LAMB_CONFIGS = [
    _C("LAMB"),
    _C("LAMB", lr=0.01, weight_decay=0.0, always_adapt=True),
    _C("LAMB", lr=0.01, betas=(0.8, 0.99), eps=1e-3, max_grad_norm=1e3),
    _C("LAMB", lr=0.01, bias_correction=False),
    _C("LAMB", lr=0.01, weight_decay=0.1, decoupled_weight_decay=False),
    _C("LAMB", lr=0.01, max_grad_norm=1.0),
    _C("LAMB", lr=0.01, max_grad_norm=0.0),
    _C("LAMB", lr=0.01, max_grad_norm=None, weight_decay=0.0),  # no trust ratio
    _C("LAMB", lr=0.01, max_grad_norm=1.0, weight_decay=0.1, decoupled_weight_decay=False,
       grad_averaging=False, bias_correction=False, maximize=True),
    _C("LAMB", lr=0.01, max_grad_norm=2.0, weight_decay=0.0, always_adapt=True, maximize=True,
       betas=(0.5, 0.9)),
    _C("LAMB", lr=T(0.01, shape=(1,)), max_grad_norm=1.0),
    _C("LAMB", lr=T(0.01, dtype=torch.float32), weight_decay=0.1, decoupled_weight_decay=False),
    _C("LAMB", lr=0.01, weight_decay=0.1, grad_averaging=False, differentiable=True),
    _C("LAMB", lr=0.01, max_grad_norm=1.0, decoupled_weight_decay=False, always_adapt=True,
       maximize=True, differentiable=True),
]

LION_CONFIGS = [
    _C("Lion"),
    _C("Lion", lr=1e-3),
    _C("Lion", lr=1e-3, betas=(0.95, 0.98)),
    _C("Lion", lr=1e-3, betas=(0.5, 0.9)),
    _C("Lion", lr=1e-3, betas=(0.0, 1.0)),  # the closed interval's ends
    _C("Lion", lr=1e-3, weight_decay=0.1),
    _C("Lion", lr=1e-2, weight_decay=1.0),
    _C("Lion", lr=1e-3, maximize=True),
    _C("Lion", lr=1e-3, weight_decay=0.1, maximize=True, betas=(0.8, 0.95)),
    _C("Lion", lr=T(1e-3)),
    _C("Lion", lr=T(1e-3, shape=(1,)), weight_decay=0.1),
    _C("Lion", lr=T(1e-3, dtype=torch.float32), maximize=True),
    _C("Lion", lr=1e-3, weight_decay=0.1, differentiable=True),
    _C("Lion", lr=1e-3, maximize=True, betas=(0.8, 0.95), differentiable=True),
]

ALL_CONFIGS = (
    SGD_CONFIGS + ADAM_CONFIGS + ADAMW_CONFIGS + ADADELTA_CONFIGS + ADAGRAD_CONFIGS
    + ADAMAX_CONFIGS + ASGD_CONFIGS + NADAM_CONFIGS + RADAM_CONFIGS + RMSPROP_CONFIGS
    + RPROP_CONFIGS + LAMB_CONFIGS + LION_CONFIGS
)
CONFIGS_BY_OPTIM = {
    "SGD": SGD_CONFIGS,
    "Adam": ADAM_CONFIGS,
    "AdamW": ADAMW_CONFIGS,
    "Adadelta": ADADELTA_CONFIGS,
    "Adagrad": ADAGRAD_CONFIGS,
    "Adamax": ADAMAX_CONFIGS,
    "ASGD": ASGD_CONFIGS,
    "NAdam": NADAM_CONFIGS,
    "RAdam": RADAM_CONFIGS,
    "RMSprop": RMSPROP_CONFIGS,
    "Rprop": RPROP_CONFIGS,
    "LAMB": LAMB_CONFIGS,
    "Lion": LION_CONFIGS,
}

# A few rich configurations per optimizer, used where running the full registry would be
# wasteful (tail sizes, ISA cross-checks, NaN propagation ...).
REPRESENTATIVE_CONFIGS = [
    _C("SGD", lr=0.1),
    _C("SGD", lr=0.05, momentum=0.9, dampening=0.1, weight_decay=0.1),
    _C("SGD", lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.1, maximize=True),
    _C("Adam", lr=0.01, weight_decay=0.1),
    _C("Adam", lr=0.01, amsgrad=True, maximize=True),
    _C("Adam", lr=0.01, weight_decay=0.1, decoupled_weight_decay=True, amsgrad=True),
    _C("AdamW", lr=0.01),
    _C("AdamW", lr=0.01, amsgrad=True, weight_decay=0.1, betas=(0.8, 0.9)),
    _C("Adadelta", lr=0.5, weight_decay=0.1),
    _C("Adadelta", lr=1.0, rho=0.8, eps=1e-4, maximize=True),
    _C("Adagrad", lr=0.1, lr_decay=0.01, weight_decay=0.05, initial_accumulator_value=0.1),
    _C("Adagrad", lr=0.1, initial_accumulator_value=0.2, maximize=True),
    _C("Adamax", lr=0.01, weight_decay=0.1),
    _C("Adamax", lr=0.01, betas=(0.3, 0.9), maximize=True),
    _C("ASGD", lr=0.05, lambd=0.1, alpha=0.5, t0=2, weight_decay=0.1),
    _C("ASGD", lr=0.05, t0=3, maximize=True),
    _C("NAdam", lr=0.01, weight_decay=0.1, momentum_decay=0.1),
    _C("NAdam", lr=0.01, weight_decay=0.1, decoupled_weight_decay=True, maximize=True),
    _C("RAdam", lr=0.01, weight_decay=0.1, betas=(0.9, 0.9)),
    _C("RAdam", lr=0.01, weight_decay=0.1, decoupled_weight_decay=True, maximize=True,
       betas=(0.8, 0.9)),
    _C("RMSprop", lr=0.01, momentum=0.9, centered=True, weight_decay=0.1),
    _C("RMSprop", lr=0.01, alpha=0.9, maximize=True),
    _C("Rprop", lr=0.05, etas=(0.3, 1.5), step_sizes=(0.02, 0.06)),
    _C("Rprop", lr=0.05, maximize=True),
    _C("LAMB", lr=0.01, weight_decay=0.1, max_grad_norm=1.0),
    _C("LAMB", lr=0.01, weight_decay=0.1, decoupled_weight_decay=False, always_adapt=True,
       grad_averaging=False, maximize=True),
    _C("Lion", lr=1e-3, weight_decay=0.1),
    _C("Lion", lr=1e-3, betas=(0.8, 0.95), maximize=True),
]


def without_fused_for_torch(config: OptimConfig) -> OptimConfig:
    """Same fusedoptim kwargs; torch side without ``fused`` (for inputs torch's fused
    implementation refuses but fusedoptim, where fused=True is a no-op, accepts).  Without
    fused, torch's capturable=True cannot run on CPU either, so that goes too."""
    base = config.kwargs if config.torch_kwargs is None else config.torch_kwargs
    torch_kwargs = {k: v for k, v in base.items() if k not in ("fused", "capturable")}
    note = (config.note + "; " if config.note else "") + "torch side without fused"
    return dataclasses.replace(config, torch_kwargs=torch_kwargs, note=note)


def config_ids(configs):
    return [c.id for c in configs]


def _check_registry_coverage():
    """Fail loudly at import if an option of torch's constructors is not covered."""
    import inspect

    import fusedoptim

    assert set(CONFIGS_BY_OPTIM) == set(OPTIM_NAMES), sorted(CONFIGS_BY_OPTIM)
    assert set(OPTIM_NAMES) == set(fusedoptim.__all__) & {
        n for n in fusedoptim.__all__ if isinstance(getattr(fusedoptim, n), type)
        and issubclass(getattr(fusedoptim, n), torch.optim.Optimizer)
        and n not in ("FusedOptimizer", "LBFGS")  # LBFGS (closure-driven): tests/test_lbfgs.py
    }, "an optimizer class of fusedoptim is missing from the registry"
    for name, cfgs in CONFIGS_BY_OPTIM.items():
        # torch's constructor for torch's algorithms; fusedoptim's own for LAMB and Lion
        cls = getattr(torch.optim, name) if name in TORCH_OPTIM_NAMES else getattr(fusedoptim, name)
        sig = inspect.signature(cls.__init__)
        # fusedoptim's own options on every optimizer are tested in their own files
        # (tests/test_max_grad_norm.py, tests/test_state_dtype.py), as torch has no class to
        # compare them with; LAMB's max_grad_norm is its own (Apex's) and stays here.
        own = fusedoptim_options(name)
        options = [p for p in sig.parameters if p not in ("self", "params") and p not in own]
        used = set()
        for c in cfgs:
            assert c.optim == name, (name, c)
            used |= set(c.kwargs)
        missing = set(options) - used
        assert not missing, f"registry misses {name} options {missing}"
        unknown = used - set(options)
        assert not unknown, f"registry uses options {name} does not have: {unknown}"


_check_registry_coverage()
