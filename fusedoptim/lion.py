"""Lion: the sign-momentum optimizer of Chen et al. 2023, fused (not in torch.optim)."""

import torch

from fusedoptim import _reference
from fusedoptim.optimizer import FusedOptimizer, _scalar

__all__ = ["Lion"]


class Lion(FusedOptimizer):
    r"""Implements Lion (EvoLved Sign Momentum), from "Symbolic Discovery of Optimization
    Algorithms" (Chen et al., 2023, https://arxiv.org/abs/2302.06675).

    .. math::
        \begin{aligned}
            &g_t \leftarrow \nabla_\theta f_t(\theta_{t-1}) \quad (-\nabla \text{ if maximize}) \\
            &c_t \leftarrow \beta_1 m_{t-1} + (1 - \beta_1) g_t \\
            &\theta_t \leftarrow \theta_{t-1} (1 - \gamma \lambda) - \gamma \, \mathrm{sign}(c_t) \\
            &m_t \leftarrow \beta_2 m_{t-1} + (1 - \beta_2) g_t
        \end{aligned}

    with learning rate :math:`\gamma`, decoupled weight decay :math:`\lambda` and
    :math:`\mathrm{sign}(0) = 0`. The update has the same magnitude in every coordinate, so
    Lion wants a learning rate 3-10x smaller than AdamW's and a weight decay 3-10x larger.

    Args:
        params (iterable): iterable of parameters or named_parameters to optimize
            or iterable of dicts defining parameter groups.
        lr (float, Tensor, optional): learning rate (default: 1e-4)
        betas (Tuple[float, float], optional): coefficients for the update direction
            (beta1) and for the running average of the gradient (beta2) (default: (0.9, 0.99))
        weight_decay (float, optional): decoupled weight decay (default: 0)
        maximize (bool, optional): maximize the objective instead of minimizing (default: False)
        differentiable (bool, optional): run the step in plain torch ops under autograd
            (the reference path) (default: False)
        max_grad_norm (float, optional): clip the norm of all the optimizer's grads to this
            before the update, as torch.nn.utils.clip_grad_norm_ would (default: None)
        norm_type (float, optional): the norm max_grad_norm bounds (default: 2.0)
        state_dtype (torch.dtype, optional): store exp_avg in this dtype (see
            fusedoptim.Adam's ``state_dtype``) (default: None, the params' dtype)
        master_weights (bool, optional): fp32 master weights for bf16/fp16 params (see
            fusedoptim.Adam's ``master_weights``) (default: False)
        stochastic_rounding (bool, optional): stochastic rounding of bf16/fp16 params (see
            fusedoptim.Adam's ``stochastic_rounding``) (default: False)

    State per param: ``exp_avg`` (the running average :math:`m`), zeros at first.
    """

    _sparse_grad_error = "Lion does not support sparse gradients"
    _group_defaults = {"maximize": False, "differentiable": False}

    def __init__(self, params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0, *, maximize=False, differentiable=False,
                 max_grad_norm=None, norm_type=2.0, state_dtype=None, master_weights=False,
                 stochastic_rounding=False):
        if isinstance(lr, torch.Tensor) and lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        if not 0.0 <= lr:
            raise ValueError(f"Invalid learning rate: {lr}")
        if not 0.0 <= betas[0] <= 1.0:
            raise ValueError(f"Invalid beta parameter at index 0: {betas[0]}")
        if not 0.0 <= betas[1] <= 1.0:
            raise ValueError(f"Invalid beta parameter at index 1: {betas[1]}")
        if not 0.0 <= weight_decay:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        defaults = {
            "lr": lr, "betas": betas, "weight_decay": weight_decay, "maximize": maximize,
            "differentiable": differentiable, "max_grad_norm": max_grad_norm, "norm_type": norm_type,
            "state_dtype": state_dtype, "master_weights": master_weights,
            "stochastic_rounding": stochastic_rounding,
        }
        super().__init__(params, defaults)

    def _state_names(self, group):
        return ("exp_avg",)

    def _fused_step(self, group, bucket):
        beta1, beta2 = group["betas"]
        bucket.lion(
            _scalar(group["lr"]), _scalar(beta1), _scalar(beta2), _scalar(group["weight_decay"]),
            bool(group["maximize"]),
        )

    def _reference_step(self, group, params):
        beta1, beta2 = group["betas"]
        _reference.lion(
            params, [self.state[p] for p in params], lr=group["lr"], beta1=beta1, beta2=beta2,
            weight_decay=group["weight_decay"], maximize=group["maximize"],
        )
