"""NAdam: fused torch.optim.NAdam."""

import torch
from torch.optim import nadam as _torch_nadam

from fusedoptim import _reference
from fusedoptim.optimizer import OPTIONS_DOC, FusedOptimizer, _lr_is_float32, _scalar

__all__ = ["NAdam"]


class NAdam(FusedOptimizer):
    _has_step = True
    _tensor_betas_take_reference_path = True
    _sparse_grad_error = "NAdam does not support sparse gradients"
    _group_defaults = {
        "maximize": False, "foreach": None, "capturable": False, "differentiable": False,
        "decoupled_weight_decay": False,
    }

    def __init__(
        self,
        params,
        lr=2e-3,
        betas=(0.9, 0.999),
        eps=1e-8,
        weight_decay=0,
        momentum_decay=4e-3,
        decoupled_weight_decay=False,
        *,
        foreach=None,
        maximize=False,
        capturable=False,
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
        if not 0.0 <= eps:
            raise ValueError(f"Invalid epsilon value: {eps}")
        if not 0.0 <= betas[0] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 0: {betas[0]}")
        if not 0.0 <= betas[1] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 1: {betas[1]}")
        if not 0.0 <= weight_decay:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        if not 0.0 <= momentum_decay:
            raise ValueError(f"Invalid momentum_decay value: {momentum_decay}")

        defaults = {
            "lr": lr,
            "betas": betas,
            "eps": eps,
            "weight_decay": weight_decay,
            "momentum_decay": momentum_decay,
            "decoupled_weight_decay": decoupled_weight_decay,
            "maximize": maximize,
            "foreach": foreach,
            "capturable": capturable,
            "differentiable": differentiable,
            "max_grad_norm": max_grad_norm,
            "norm_type": norm_type,
            "state_dtype": state_dtype,
            "master_weights": master_weights,
            "stochastic_rounding": stochastic_rounding,
        }
        super().__init__(params, defaults)

    def _scalar_names(self, group):
        return ("step", "mu_product")

    def _initial_scalar(self, group, name):
        return 1.0 if name == "mu_product" else 0.0

    def _state_names(self, group):
        return ("exp_avg", "exp_avg_sq")

    def _fused_step(self, group, bucket, device_amp=(None, None)):
        lr, (beta1, beta2), weight_decay = group["lr"], group["betas"], group["weight_decay"]
        bucket.nadam(
            _scalar(lr), _scalar(beta1), _scalar(beta2), _scalar(group["eps"]), _scalar(weight_decay),
            _scalar(group["momentum_decay"]), bool(group["decoupled_weight_decay"]), bool(group["maximize"]),
            _scalar(1 - lr * weight_decay), _lr_is_float32(lr), *device_amp,
        )

    def _reference_step(self, group, params):
        (params, grads, exp_avgs, exp_avg_sqs, mu_products, steps), has_complex = _reference.torch_init_group(
            _torch_nadam.NAdam, self, group, params, 4)
        beta1, beta2 = group["betas"]
        _torch_nadam.nadam(
            params, grads, exp_avgs, exp_avg_sqs, mu_products, steps, beta1=beta1, beta2=beta2, lr=group["lr"],
            weight_decay=group["weight_decay"], momentum_decay=group["momentum_decay"], eps=group["eps"],
            maximize=group["maximize"], decoupled_weight_decay=group["decoupled_weight_decay"], foreach=False,
            capturable=group["capturable"], differentiable=group["differentiable"], has_complex=has_complex,
        )


NAdam.__doc__ = _torch_nadam.NAdam.__doc__ + """
    fusedoptim: the step runs one fused kernel per bucket (param group x device x dtype), on
    the CPU or CUDA.
    ``foreach`` is accepted and has no effect; ``capturable=True`` keeps ``step`` on a CUDA
    param's device as torch does, where a step kernel advances it with no host sync (a Tensor
    ``lr`` takes the reference path there); ``differentiable=True`` takes torch's own
    implementation (the reference path).
""" + OPTIONS_DOC
