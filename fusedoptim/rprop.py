"""Rprop: fused torch.optim.Rprop."""

import torch
from torch.optim import rprop as _torch_rprop

from fusedoptim import _reference
from fusedoptim.optimizer import OPTIONS_DOC, FusedOptimizer, _scalar

__all__ = ["Rprop"]


class Rprop(FusedOptimizer):
    _sparse_grad_error = "Rprop does not support sparse gradients"
    _has_step = True
    _group_defaults = {"foreach": None, "maximize": False, "differentiable": False, "capturable": False}

    def __init__(
        self,
        params,
        lr=1e-2,
        etas=(0.5, 1.2),
        step_sizes=(1e-6, 50),
        *,
        capturable=False,
        foreach=None,
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
        if not 0.0 < etas[0] < 1.0 < etas[1]:
            raise ValueError(f"Invalid eta values: {etas[0]}, {etas[1]}")

        defaults = {
            "lr": lr,
            "etas": etas,
            "step_sizes": step_sizes,
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
        return ("prev", "step_size")

    def _initial_state(self, group, name):
        # Each element's step size starts at the group's learning rate.
        return _scalar(group["lr"]) if name == "step_size" else 0

    def _fused_step(self, group, bucket, device_amp=(None, None)):
        etaminus, etaplus = group["etas"]
        step_size_min, step_size_max = group["step_sizes"]
        bucket.rprop(
            _scalar(etaminus), _scalar(etaplus), _scalar(step_size_min), _scalar(step_size_max),
            bool(group["maximize"]), *device_amp,
        )

    def _reference_step(self, group, params):
        (params, grads, prevs, step_sizes, steps), has_complex = _reference.torch_init_group(
            _torch_rprop.Rprop, self, group, params, 3)
        etaminus, etaplus = group["etas"]
        step_size_min, step_size_max = group["step_sizes"]
        _torch_rprop.rprop(
            params, grads, prevs, step_sizes, steps, step_size_min=step_size_min, step_size_max=step_size_max,
            etaminus=etaminus, etaplus=etaplus, foreach=False, maximize=group["maximize"],
            differentiable=group["differentiable"], capturable=group["capturable"], has_complex=has_complex,
        )


Rprop.__doc__ = _torch_rprop.Rprop.__doc__ + """
    fusedoptim: the step runs one fused kernel per bucket (param group x device x dtype), on
    the CPU or CUDA.
    ``foreach`` is accepted and has no effect; ``capturable=True`` keeps ``step`` on a CUDA
    param's device as torch does, where a step kernel advances it with no host sync (a Tensor
    ``lr`` takes the reference path there); ``differentiable=True`` takes torch's own
    implementation (the reference path).
""" + OPTIONS_DOC
