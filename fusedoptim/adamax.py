"""Adamax: fused torch.optim.Adamax."""

import torch
from torch.optim import adamax as _torch_adamax

from fusedoptim import _reference
from fusedoptim.optimizer import OPTIONS_DOC, FusedOptimizer, _lr_is_float32, _scalar

__all__ = ["Adamax"]


class Adamax(FusedOptimizer):
    _tensor_betas_take_reference_path = True
    _sparse_grad_error = "Adamax does not support sparse gradients"
    _has_step = True
    _group_defaults = {"foreach": None, "maximize": False, "differentiable": False, "capturable": False}

    def __init__(
        self,
        params,
        lr=2e-3,
        betas=(0.9, 0.999),
        eps=1e-8,
        weight_decay=0,
        foreach=None,
        *,
        maximize=False,
        differentiable=False,
        capturable=False,
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
        if not 0.0 <= eps:
            raise ValueError(f"Invalid epsilon value: {eps}")
        if not 0.0 <= betas[0] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 0: {betas[0]}")
        if not 0.0 <= betas[1] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 1: {betas[1]}")
        if not 0.0 <= weight_decay:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")

        defaults = {
            "lr": lr,
            "betas": betas,
            "eps": eps,
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

    def _state_names(self, group):
        return ("exp_avg", "exp_inf")

    def _fused_step(self, group, bucket, device_amp=(None, None)):
        beta1, beta2 = group["betas"]
        bucket.adamax(
            _scalar(group["lr"]), _scalar(beta1), _scalar(beta2), _scalar(group["eps"]),
            _scalar(group["weight_decay"]), bool(group["maximize"]), _lr_is_float32(group["lr"]), *device_amp,
        )

    def _reference_step(self, group, params):
        (params, grads, exp_avgs, exp_infs, steps), has_complex = _reference.torch_init_group(
            _torch_adamax.Adamax, self, group, params, 3)
        beta1, beta2 = group["betas"]
        _torch_adamax.adamax(
            params, grads, exp_avgs, exp_infs, steps, eps=group["eps"], beta1=beta1, beta2=beta2, lr=group["lr"],
            weight_decay=group["weight_decay"], foreach=False, maximize=group["maximize"],
            differentiable=group["differentiable"], capturable=group["capturable"], has_complex=has_complex,
        )


Adamax.__doc__ = _torch_adamax.Adamax.__doc__ + """
    fusedoptim: the step runs one fused kernel per bucket (param group x device x dtype), on
    the CPU or CUDA.
    ``foreach`` is accepted and has no effect; ``capturable=True`` keeps ``step`` on a CUDA
    param's device as torch does, where a step kernel advances it with no host sync (a Tensor
    ``lr`` takes the reference path there); ``differentiable=True`` takes torch's own
    implementation (the reference path).
""" + OPTIONS_DOC
