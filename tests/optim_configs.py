"""Registry of optimizer configurations (in the spirit of torch's ``OptimizerInfo``).

Every constructor option of ``SGD``, ``Adam`` and ``AdamW`` (as in torch.optim 2.13) appears
in at least one entry, alone and in meaningful combinations.  Each entry says how fusedoptim is
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

OPTIM_NAMES = ("SGD", "Adam", "AdamW")


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

ALL_CONFIGS = SGD_CONFIGS + ADAM_CONFIGS + ADAMW_CONFIGS
CONFIGS_BY_OPTIM = {"SGD": SGD_CONFIGS, "Adam": ADAM_CONFIGS, "AdamW": ADAMW_CONFIGS}

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

    for name, cfgs in CONFIGS_BY_OPTIM.items():
        sig = inspect.signature(getattr(torch.optim, name).__init__)
        options = [p for p in sig.parameters if p not in ("self", "params")]
        used = set()
        for c in cfgs:
            used |= set(c.kwargs)
        missing = set(options) - used
        assert not missing, f"registry misses {name} options {missing}"


_check_registry_coverage()
