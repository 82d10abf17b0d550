"""Adagrad: fused torch.optim.Adagrad."""

import torch
from torch.optim import adagrad as _torch_adagrad

from fusedoptim import _reference
from fusedoptim.optimizer import OPTIONS_DOC, FusedOptimizer, _lr_is_float32, _scalar, _state_dtype_for

__all__ = ["Adagrad"]


class Adagrad(FusedOptimizer):
    _has_step = True
    _group_defaults = {"foreach": None, "maximize": False, "differentiable": False, "fused": None}

    def __init__(
        self,
        params,
        lr=1e-2,
        lr_decay=0,
        weight_decay=0,
        initial_accumulator_value=0,
        eps=1e-10,
        foreach=None,
        *,
        maximize=False,
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
        if not 0.0 <= lr:
            raise ValueError(f"Invalid learning rate: {lr}")
        if not 0.0 <= lr_decay:
            raise ValueError(f"Invalid lr_decay value: {lr_decay}")
        if not 0.0 <= weight_decay:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        if not 0.0 <= initial_accumulator_value:
            raise ValueError(f"Invalid initial_accumulator_value value: {initial_accumulator_value}")
        if not 0.0 <= eps:
            raise ValueError(f"Invalid epsilon value: {eps}")

        defaults = {
            "lr": lr,
            "lr_decay": lr_decay,
            "eps": eps,
            "weight_decay": weight_decay,
            "initial_accumulator_value": initial_accumulator_value,
            "foreach": foreach,
            "maximize": maximize,
            "differentiable": differentiable,
            "fused": fused,
            "max_grad_norm": max_grad_norm,
            "norm_type": norm_type,
            "state_dtype": state_dtype,
            "master_weights": master_weights,
            "stochastic_rounding": stochastic_rounding,
        }
        super().__init__(params, defaults)
        # torch.optim.Adagrad creates the state of every param at construction.
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state[p]
                state["step"] = torch.zeros((), dtype=self._step_dtype(group), device=p.device if group["fused"] else "cpu")
                value = initial_accumulator_value
                init_value = complex(value, value) if torch.is_complex(p) else value
                state["sum"] = torch.full_like(
                    p, init_value, memory_format=torch.preserve_format, dtype=_state_dtype_for(group, p))

    def _state_names(self, group):
        return ("sum",)

    def _initial_state(self, group, name):
        # Like torch, from the constructor's value even for groups added later.
        return self.defaults["initial_accumulator_value"]

    def _fused_step(self, group, bucket, device_amp=(None, None)):
        bucket.adagrad(
            _scalar(group["lr"]), _scalar(group["lr_decay"]), _scalar(group["weight_decay"]), _scalar(group["eps"]),
            bool(group["maximize"]), _lr_is_float32(group["lr"]), *device_amp,
        )

    def _check_step(self, group, reference_params):
        if group["weight_decay"] != 0 and any(p.grad.is_sparse for p in reference_params):
            raise RuntimeError("weight_decay option is not compatible with sparse gradients")

    def _reference_step(self, group, params):
        (params, grads, sums, steps), (has_sparse_grad, has_complex) = _reference.torch_init_group(
            _torch_adagrad.Adagrad, self, group, params, 2)
        _torch_adagrad.adagrad(
            params, grads, sums, steps, lr=group["lr"], weight_decay=group["weight_decay"],
            lr_decay=group["lr_decay"], eps=group["eps"], has_sparse_grad=has_sparse_grad, foreach=False,
            maximize=group["maximize"], differentiable=group["differentiable"], has_complex=has_complex,
            fused=False, grad_scale=None, found_inf=None,
        )


Adagrad.__doc__ = _torch_adagrad.Adagrad.__doc__ + """
    fusedoptim: the step runs one fused kernel per bucket (param group x device x dtype), on
    the CPU or CUDA.
    ``foreach`` and ``fused`` are accepted for compatibility and have no effect there; sparse
    gradients and ``differentiable=True`` take torch's own implementation (the reference path).
""" + OPTIONS_DOC
