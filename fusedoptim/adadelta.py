"""Adadelta: fused torch.optim.Adadelta."""

import torch
from torch.optim import adadelta as _torch_adadelta

from fusedoptim import _reference
from fusedoptim.optimizer import OPTIONS_DOC, FusedOptimizer, _scalar

__all__ = ["Adadelta"]


class Adadelta(FusedOptimizer):
    _sparse_grad_error = "Adadelta does not support sparse gradients"
    _has_step = True

    def __init__(
        self,
        params,
        lr=1.0,
        rho=0.9,
        eps=1e-6,
        weight_decay=0,
        foreach=None,
        *,
        capturable=False,
        maximize=False,
        differentiable=False,
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
        if not 0.0 <= rho <= 1.0:
            raise ValueError(f"Invalid rho value: {rho}")
        if not 0.0 <= eps:
            raise ValueError(f"Invalid epsilon value: {eps}")
        if not 0.0 <= weight_decay:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")

        defaults = {
            "lr": lr,
            "rho": rho,
            "eps": eps,
            "weight_decay": weight_decay,
            "maximize": maximize,
            "capturable": capturable,
            "foreach": foreach,
            "differentiable": differentiable,
            "max_grad_norm": max_grad_norm,
            "norm_type": norm_type,
            "state_dtype": state_dtype,
            "master_weights": master_weights,
            "stochastic_rounding": stochastic_rounding,
        }
        super().__init__(params, defaults)

    _group_defaults = {"foreach": None, "maximize": False, "differentiable": False, "capturable": False}

    def _state_names(self, group):
        return ("square_avg", "acc_delta")

    def _fused_step(self, group, bucket, device_amp=(None, None)):
        bucket.adadelta(
            _scalar(group["lr"]), _scalar(group["rho"]), _scalar(group["eps"]), _scalar(group["weight_decay"]),
            bool(group["maximize"]), *device_amp,
        )

    def _reference_step(self, group, params):
        (params, grads, square_avgs, acc_deltas, steps), has_complex = _reference.torch_init_group(
            _torch_adadelta.Adadelta, self, group, params, 3)
        _torch_adadelta.adadelta(
            params, grads, square_avgs, acc_deltas, steps, lr=group["lr"], rho=group["rho"], eps=group["eps"],
            weight_decay=group["weight_decay"], foreach=False, maximize=group["maximize"],
            differentiable=group["differentiable"], capturable=group["capturable"], has_complex=has_complex,
        )


Adadelta.__doc__ = _torch_adadelta.Adadelta.__doc__ + """
    fusedoptim: the step runs one fused kernel per bucket (param group x device x dtype), on
    the CPU or CUDA.
    ``foreach`` is accepted and has no effect; ``capturable=True`` keeps ``step`` on a CUDA
    param's device as torch does, where a step kernel advances it with no host sync (a Tensor
    ``lr`` takes the reference path there); ``differentiable=True`` takes torch's own
    implementation (the reference path).
""" + OPTIONS_DOC
