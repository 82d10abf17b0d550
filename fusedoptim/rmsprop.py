"""RMSprop: fused torch.optim.RMSprop."""

import torch
from torch.optim import rmsprop as _torch_rmsprop

from fusedoptim import _reference
from fusedoptim.optimizer import OPTIONS_DOC, FusedOptimizer, _scalar

__all__ = ["RMSprop"]


class RMSprop(FusedOptimizer):
    _sparse_grad_error = "RMSprop does not support sparse gradients"
    _has_step = True
    _group_defaults = {
        "momentum": 0, "centered": False, "foreach": None, "maximize": False, "differentiable": False,
        "capturable": False,
    }

    def __init__(
        self,
        params,
        lr=1e-2,
        alpha=0.99,
        eps=1e-8,
        weight_decay=0,
        momentum=0,
        centered=False,
        capturable=False,
        foreach=None,
        maximize=False,
        differentiable=False,
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
        if not 0.0 <= eps:
            raise ValueError(f"Invalid epsilon value: {eps}")
        if not 0.0 <= momentum:
            raise ValueError(f"Invalid momentum value: {momentum}")
        if not 0.0 <= weight_decay:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        if not 0.0 <= alpha:
            raise ValueError(f"Invalid alpha value: {alpha}")

        defaults = {
            "lr": lr,
            "momentum": momentum,
            "alpha": alpha,
            "eps": eps,
            "centered": centered,
            "weight_decay": weight_decay,
            "capturable": capturable,
            "foreach": foreach,
            "maximize": maximize,
            "differentiable": differentiable,
            "max_grad_norm": max_grad_norm,
            "norm_type": norm_type,
            "state_dtype": state_dtype,
            "master_weights": master_weights,
            "stochastic_rounding": stochastic_rounding,
        }
        super().__init__(params, defaults)

    def _state_names(self, group):
        # torch's key order; the kernel's slots (math/rmsprop.h) follow it.
        names = ("square_avg",)
        if group["momentum"] > 0:
            names += ("momentum_buffer",)
        if group["centered"]:
            names += ("grad_avg",)
        return names

    def _fused_step(self, group, bucket, device_amp=(None, None)):
        bucket.rmsprop(
            _scalar(group["lr"]), _scalar(group["alpha"]), _scalar(group["eps"]), _scalar(group["weight_decay"]),
            _scalar(group["momentum"]), bool(group["centered"]), bool(group["maximize"]), *device_amp,
        )

    def _reference_step(self, group, params):
        (params, grads, square_avgs, momentum_buffers, grad_avgs, steps), has_complex = _reference.torch_init_group(
            _torch_rmsprop.RMSprop, self, group, params, 4)
        _torch_rmsprop.rmsprop(
            params, grads, square_avgs, grad_avgs, momentum_buffers, steps, lr=group["lr"], alpha=group["alpha"],
            eps=group["eps"], weight_decay=group["weight_decay"], momentum=group["momentum"],
            centered=group["centered"], foreach=False, maximize=group["maximize"],
            differentiable=group["differentiable"], capturable=group["capturable"], has_complex=has_complex,
        )


RMSprop.__doc__ = _torch_rmsprop.RMSprop.__doc__ + """
    fusedoptim: the step runs one fused kernel per bucket (param group x device x dtype), on
    the CPU or CUDA.
    ``foreach`` is accepted and has no effect; ``capturable=True`` keeps ``step`` on a CUDA
    param's device as torch does, where a step kernel advances it with no host sync (a Tensor
    ``lr`` takes the reference path there); ``differentiable=True`` takes torch's own
    implementation (the reference path).
""" + OPTIONS_DOC
