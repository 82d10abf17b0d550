"""SGD: fused torch.optim.SGD."""

import torch
from torch.optim.sgd import SGD as _TorchSGD

from fusedoptim import _reference
from fusedoptim.optimizer import OPTIONS_DOC, FusedOptimizer, _scalar

__all__ = ["SGD"]


class SGD(FusedOptimizer):
    _kernel_amp_without_step = True  # fused=True on CUDA: GradScaler in the kernel, as torch's

    def __init__(
        self,
        params,
        lr=1e-3,
        momentum=0,
        dampening=0,
        weight_decay=0,
        nesterov=False,
        *,
        maximize=False,
        foreach=None,
        differentiable=False,
        fused=None,
        max_grad_norm=None,
        norm_type=2.0,
        state_dtype=None,
        master_weights=False,
        stochastic_rounding=False,
    ):
        if isinstance(lr, torch.Tensor) and lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        if lr < 0.0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if momentum < 0.0:
            raise ValueError(f"Invalid momentum value: {momentum}")
        if weight_decay < 0.0:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")

        defaults = {
            "lr": lr,
            "momentum": momentum,
            "dampening": dampening,
            "weight_decay": weight_decay,
            "nesterov": nesterov,
            "maximize": maximize,
            "foreach": foreach,
            "differentiable": differentiable,
            "fused": fused,
            "max_grad_norm": max_grad_norm,
            "norm_type": norm_type,
            "state_dtype": state_dtype,
            "master_weights": master_weights,
            "stochastic_rounding": stochastic_rounding,
        }
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        super().__init__(params, defaults)

    def __setstate__(self, state):
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("nesterov", False)
            group.setdefault("maximize", False)
            group.setdefault("foreach", None)
            group.setdefault("differentiable", False)
            group.setdefault("fused", False)

    def _state_names(self, group):
        return ("momentum_buffer",) if group["momentum"] != 0 else ()

    def _first_step(self, group, param_state):
        return group["momentum"] != 0 and param_state.get("momentum_buffer") is None

    def _fused_step(self, group, bucket, device_amp=(None, None)):
        bucket.sgd(
            _scalar(group["lr"]), _scalar(group["momentum"]), _scalar(group["dampening"]),
            _scalar(group["weight_decay"]), bool(group["nesterov"]), bool(group["maximize"]), *device_amp,
        )

    def _reference_step(self, group, params):
        # Like torch.optim.SGD, touch the state only when there is momentum to keep.
        _reference.sgd(
            params, [self.state[p] for p in params] if group["momentum"] != 0 else [{} for _ in params],
            lr=group["lr"], momentum=group["momentum"], dampening=group["dampening"],
            weight_decay=group["weight_decay"], nesterov=group["nesterov"], maximize=group["maximize"],
        )


SGD.__doc__ = _TorchSGD.__doc__ + """
    fusedoptim: the step runs one fused kernel per bucket (param group x device x dtype), on
    the CPU or CUDA.
    ``foreach`` and ``fused`` are accepted for compatibility and have no effect there, except
    that with ``fused=True`` on CUDA GradScaler's unscaling and skipping happen in the kernel
    (from the step after the momentum buffers' first, with no host sync), as in torch;
    sparse gradients and ``differentiable=True`` take the plain-torch reference path.
""" + OPTIONS_DOC
