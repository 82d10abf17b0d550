"""ASGD: fused torch.optim.ASGD."""

import torch
from torch.optim import asgd as _torch_asgd

from fusedoptim import _reference
from fusedoptim.optimizer import OPTIONS_DOC, FusedOptimizer, _lr_is_float32, _scalar

__all__ = ["ASGD"]


class ASGD(FusedOptimizer):
    _has_step = True
    _sparse_grad_error = "ASGD does not support sparse gradients"
    _group_defaults = {"foreach": None, "maximize": False, "differentiable": False, "capturable": False}

    def __init__(
        self,
        params,
        lr=1e-2,
        lambd=1e-4,
        alpha=0.75,
        t0=1e6,
        weight_decay=0,
        foreach=None,
        maximize=False,
        differentiable=False,
        capturable=False,
        *,
        max_grad_norm=None,
        norm_type=2.0,
        state_dtype=None,
        master_weights=False,
        stochastic_rounding=False,
    ):
        if isinstance(lr, torch.Tensor) and lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        if not 0.0 <= lr:
            raise ValueError(f"Invalid learning rate: {lr}")
        if not 0.0 <= weight_decay:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")

        defaults = {
            "lr": lr,
            "lambd": lambd,
            "alpha": alpha,
            "t0": t0,
            "weight_decay": weight_decay,
            "foreach": foreach,
            "maximize": maximize,
            "differentiable": differentiable,
            "capturable": capturable,
            "max_grad_norm": max_grad_norm,
            "norm_type": norm_type,
            "state_dtype": state_dtype,
            "master_weights": master_weights,
            "stochastic_rounding": stochastic_rounding,
        }
        super().__init__(params, defaults)

    def _scalar_names(self, group):
        return ("step", "eta", "mu")

    def _initial_scalar(self, group, name):
        return {"step": 0.0, "eta": _scalar(group["lr"]), "mu": 1.0}[name]

    def _state_names(self, group):
        return ("ax",)

    def _fused_step(self, group, bucket, device_amp=(None, None)):
        lr = group["lr"]
        # torch.as_tensor(new value): a Python float takes the default dtype, a value computed
        # from a Tensor lr keeps the lr's dtype; then it is copied into eta / mu.
        python_floats_are_float32 = torch.get_default_dtype() != torch.float64
        eta_as_float32 = _lr_is_float32(lr) if isinstance(lr, torch.Tensor) else python_floats_are_float32
        bucket.asgd(
            _scalar(lr), _scalar(group["lambd"]), _scalar(group["alpha"]), _scalar(group["t0"]),
            _scalar(group["weight_decay"]), bool(group["maximize"]), _lr_is_float32(lr),
            eta_as_float32, python_floats_are_float32, *device_amp,
        )

    def _reference_step(self, group, params):
        (params, grads, mus, axs, etas, steps), has_complex = _reference.torch_init_group(
            _torch_asgd.ASGD, self, group, params, 4)
        _torch_asgd.asgd(
            params, grads, axs, mus, etas, steps, lambd=group["lambd"], lr=group["lr"], t0=group["t0"],
            alpha=group["alpha"], weight_decay=group["weight_decay"], foreach=False, maximize=group["maximize"],
            differentiable=group["differentiable"], capturable=group["capturable"], has_complex=has_complex,
        )


ASGD.__doc__ = _torch_asgd.ASGD.__doc__ + """
    fusedoptim: the step runs one fused kernel per bucket (param group x device x dtype), on
    the CPU or CUDA.
    ``foreach`` is accepted and has no effect; ``capturable=True`` keeps ``step`` on a CUDA
    param's device as torch does, where a step kernel advances it with no host sync (a Tensor
    ``lr`` takes the reference path there); ``differentiable=True`` takes torch's own
    implementation (the reference path).
""" + OPTIONS_DOC
