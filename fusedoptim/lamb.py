"""LAMB: layer-wise adaptive moments (You et al. 2019), fused, in Apex's formulation."""

import torch

from fusedoptim import _dtensor, _reference
from fusedoptim.optimizer import FusedOptimizer, _scalar

__all__ = ["LAMB"]


class LAMB(FusedOptimizer):
    r"""Implements LAMB, from "Large Batch Optimization for Deep Learning: Training BERT in
    76 minutes" (You et al., 2019, https://arxiv.org/abs/1904.00962), as NVIDIA Apex's
    ``FusedLAMB`` formulates it.

    .. math::
        \begin{aligned}
            &g_t \leftarrow \nabla_\theta f_t(\theta_{t-1}) \,/\, c
                \quad c = \max(\lVert g \rVert_{\text{global}} / \text{max\_grad\_norm}, 1)
                \text{ if max\_grad\_norm else } 1 \\
            &\textbf{if not decoupled: } g_t \leftarrow g_t + \lambda \theta_{t-1} \\
            &m_t \leftarrow \beta_1 m_{t-1} + \beta_3 g_t
                \quad \beta_3 = 1 - \beta_1 \text{ if grad\_averaging else } 1 \\
            &v_t \leftarrow \beta_2 v_{t-1} + (1 - \beta_2) g_t^2 \\
            &u_t \leftarrow \frac{m_t / (1 - \beta_1^t)}{\sqrt{v_t / (1 - \beta_2^t)} + \epsilon}
                \quad \text{(no bias correction if bias\_correction=False)} \\
            &\textbf{if decoupled: } u_t \leftarrow u_t + \lambda \theta_{t-1} \\
            &r_t \leftarrow \lVert \theta_{t-1} \rVert / \lVert u_t \rVert
                \text{ per tensor, if } \lambda \neq 0 \text{ or always\_adapt, and both norms
                are non-zero; else } 1 \\
            &\theta_t \leftarrow \theta_{t-1} - \gamma \, r_t \, u_t
        \end{aligned}

    The norms are per param tensor (a layer's weight, its bias); the global gradient norm
    is over every param of every group with a gradient.

    Args:
        params (iterable): iterable of parameters or named_parameters to optimize
            or iterable of dicts defining parameter groups.
        lr (float, Tensor, optional): learning rate :math:`\gamma` (default: 1e-3)
        betas (Tuple[float, float], optional): coefficients for the running averages of the
            gradient and its square (default: (0.9, 0.999))
        eps (float, optional): term added to the denominator (default: 1e-6)
        weight_decay (float, optional): weight decay :math:`\lambda` (default: 0.01)
        bias_correction (bool, optional): divide the moments by :math:`1 - \beta^t`
            (default: True)
        grad_averaging (bool, optional): scale the gradient by :math:`1 - \beta_1` in the
            first moment (default: True)
        decoupled_weight_decay (bool, optional): add the decay to the update (AdamW style,
            Apex's ``adam_w_mode``) instead of to the gradient (L2) (default: True)
        max_grad_norm (float, optional): clip the global gradient norm to this before the
            update; ``None`` or 0 to disable (default: None)
        always_adapt (bool, optional): apply the trust ratio even when weight_decay is 0
            (Apex's ``use_nvlamb``) (default: False)
        maximize (bool, optional): maximize the objective instead of minimizing (default: False)
        differentiable (bool, optional): run the step in plain torch ops (the reference path)
            (default: False)
        state_dtype (torch.dtype, optional): store exp_avg and exp_avg_sq in this dtype
            (see fusedoptim.Adam's ``state_dtype``) (default: None, the params' dtype)
        master_weights (bool, optional): fp32 master weights for bf16/fp16 params (see
            fusedoptim.Adam's ``master_weights``) (default: False)
        stochastic_rounding (bool, optional): stochastic rounding of bf16/fp16 params (see
            fusedoptim.Adam's ``stochastic_rounding``) (default: False)

    State per param: ``step``, ``exp_avg``, ``exp_avg_sq``, as torch.optim.Adam names them.
    """

    _sparse_grad_error = "LAMB does not support sparse gradients"
    _has_step = True
    # Its max_grad_norm is Apex's (a 2-norm divisor, in the rule), not the base class's.
    _clips_grads = False
    _group_defaults = {"maximize": False, "differentiable": False}

    def __init__(
        self,
        params,
        lr=1e-3,
        betas=(0.9, 0.999),
        eps=1e-6,
        weight_decay=0.01,
        *,
        bias_correction=True,
        grad_averaging=True,
        decoupled_weight_decay=True,
        max_grad_norm=None,
        always_adapt=False,
        maximize=False,
        differentiable=False,
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
        if max_grad_norm is not None and not 0.0 <= max_grad_norm:
            raise ValueError(f"Invalid max_grad_norm value: {max_grad_norm}")
        defaults = {
            "lr": lr,
            "betas": betas,
            "eps": eps,
            "weight_decay": weight_decay,
            "bias_correction": bias_correction,
            "grad_averaging": grad_averaging,
            "decoupled_weight_decay": decoupled_weight_decay,
            "max_grad_norm": max_grad_norm,
            "always_adapt": always_adapt,
            "maximize": maximize,
            "differentiable": differentiable,
            "state_dtype": state_dtype,
            "master_weights": master_weights,
            "stochastic_rounding": stochastic_rounding,
        }
        super().__init__(params, defaults)

    def _state_names(self, group):
        return ("exp_avg", "exp_avg_sq")

    @staticmethod
    def _adapts(group):
        return group["weight_decay"] != 0 or bool(group["always_adapt"])

    def _needs_whole_tensor(self, group):
        # The kernels compute the trust ratio's norms between their two passes, with no way to
        # all-reduce them across a mesh there: sharded params take torch's DTensor ops.
        return "LAMB's per-tensor trust ratio" if self._adapts(group) else None

    def _layout_key(self, group):
        return super()._layout_key(group) + (self._adapts(group),)

    def _clip_divisor(self, group):
        """Global grad-norm clipping: the divisor of this step's grads for `group`."""
        max_norm = group["max_grad_norm"]
        if not max_norm:
            return 1.0
        if group["differentiable"]:
            # A tensor, so autograd sees the clip's dependence on the grads.
            return torch.clamp(self._global_grad_norm() / max_norm, min=1.0)
        return max(self._global_grad_norm().item() / max_norm, 1.0)

    def _global_grad_norm(self):
        """The norm of every grad of every group, a float64 0-dim tensor, once per step
        (cached on the plan): fused buckets sum in C++, reference-path grads in torch. The
        sums over DTensor shards are all-reduced over their mesh, one collective per mesh and
        sharding (NOTE: [DTensor params] in _dtensor.py)."""
        plan = self._plan
        if getattr(plan, "lamb_grad_norm", None) is None:
            partial_sums = {}  # reduction key -> this rank's sum of squares

            def add(key, squares):
                partial_sums[key] = partial_sums.get(key, 0.0) + squares

            for _, buckets, reference in plan.groups:
                for bucket in buckets:
                    if bucket.compiled.num_entries:
                        add(bucket.reduction_key, bucket.compiled.grad_squares())
                for p in reference:
                    if p.grad is not None:  # never sparse: _check_step refused those
                        add(*self._grad_squares(p.grad))
            plan.lamb_grad_norm = _dtensor.reduce_partial_sums(partial_sums).sqrt()
        return plan.lamb_grad_norm

    @staticmethod
    def _grad_squares(grad):
        """(reduction key, sum of squares of this rank's part of a reference-path grad)."""
        key = _dtensor.reduction_key(grad)
        if key is not None:
            if not _dtensor.local_placements(grad):
                # Partial grads: their local values are addends, DTensor's norm reduces them.
                norm = _dtensor.whole_norm(torch.linalg.vector_norm(grad, dtype=torch.float64))
                return None, norm.to_local() ** 2
            grad = grad.to_local()
        grad = torch.view_as_real(grad) if grad.is_complex() else grad
        return key, torch.linalg.vector_norm(grad, dtype=torch.float64) ** 2

    def step(self, closure=None):
        if self._plan is not None:
            self._plan.lamb_grad_norm = None
        loss = super().step(closure)
        self._plan.lamb_grad_norm = None
        return loss

    def _device_steps(self, group):
        return False  # no CUDA step kernel: a group that asks for device steps takes the reference path

    def _fused_step(self, group, bucket):
        beta1, beta2 = group["betas"]
        bucket.lamb(
            _scalar(group["lr"]), _scalar(beta1), _scalar(beta2), _scalar(group["eps"]),
            _scalar(group["weight_decay"]), bool(group["bias_correction"]), bool(group["grad_averaging"]),
            bool(group["decoupled_weight_decay"]), bool(group["always_adapt"]), bool(group["maximize"]),
            self._clip_divisor(group),
        )

    def _reference_step(self, group, params):
        beta1, beta2 = group["betas"]
        _reference.lamb(
            params, [self.state[p] for p in params], lr=group["lr"], beta1=beta1, beta2=beta2, eps=group["eps"],
            weight_decay=group["weight_decay"], bias_correction=group["bias_correction"],
            grad_averaging=group["grad_averaging"], decoupled_weight_decay=group["decoupled_weight_decay"],
            always_adapt=group["always_adapt"], maximize=group["maximize"], clip=self._clip_divisor(group),
            step_dtype=self._step_dtype(group), differentiable=group["differentiable"],
        )
