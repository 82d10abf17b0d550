"""Adam: fused torch.optim.Adam (and, with decoupled_weight_decay, AdamW)."""

import torch
from torch.optim.adam import Adam as _TorchAdam

from fusedoptim import _reference
from fusedoptim.optimizer import OPTIONS_DOC, FusedOptimizer, _scalar

__all__ = ["Adam"]


def _to_scalar(x):
    # As torch.optim does: a 1-element tensor hyperparameter becomes 0-dim.
    return x.squeeze() if isinstance(x, torch.Tensor) and x.dim() != 0 else x


class Adam(FusedOptimizer):
    _has_step = True
    _sparse_grad_error = "Adam does not support sparse gradients, please consider SparseAdam instead"

    def __init__(
        self,
        params,
        lr=1e-3,
        betas=(0.9, 0.999),
        eps=1e-8,
        weight_decay=0,
        amsgrad=False,
        *,
        foreach=None,
        maximize=False,
        capturable=False,
        differentiable=False,
        fused=None,
        decoupled_weight_decay=False,
        max_grad_norm=None,
        norm_type=2.0,
        state_dtype=None,
        master_weights=False,
        stochastic_rounding=False,
    ):
        if isinstance(lr, torch.Tensor):
            if foreach and not capturable:
                raise ValueError("lr as a Tensor is not supported for capturable=False and foreach=True")
            if lr.numel() != 1:
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
        if not (
            (isinstance(betas[0], float) and isinstance(betas[1], float))
            or (isinstance(betas[0], torch.Tensor) and isinstance(betas[1], torch.Tensor))
        ):
            raise ValueError("betas must be either both floats or both Tensors")
        for index, beta in enumerate(betas):
            if isinstance(beta, torch.Tensor):
                if not capturable and foreach:
                    raise ValueError(
                        f"betas[{index}] as a Tensor is not supported for capturable=False and foreach=True"
                    )
                if beta.numel() != 1:
                    raise ValueError(f"Tensor betas[{index}] must be 1-element")
        betas = tuple(map(_to_scalar, betas))

        defaults = {
            "lr": lr,
            "betas": betas,
            "eps": eps,
            "weight_decay": weight_decay,
            "amsgrad": amsgrad,
            "maximize": maximize,
            "foreach": foreach,
            "capturable": capturable,
            "differentiable": differentiable,
            "fused": fused,
            "decoupled_weight_decay": decoupled_weight_decay,
            "max_grad_norm": max_grad_norm,
            "norm_type": norm_type,
            "state_dtype": state_dtype,
            "master_weights": master_weights,
            "stochastic_rounding": stochastic_rounding,
        }
        super().__init__(params, defaults)

    def __setstate__(self, state):
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("amsgrad", False)
            group.setdefault("maximize", False)
            group.setdefault("foreach", None)
            group.setdefault("capturable", False)
            group.setdefault("differentiable", False)
            group.setdefault("decoupled_weight_decay", False)
            group.setdefault("fused", None)
            for p in group["params"]:
                p_state = self.state.get(p, [])
                if len(p_state) != 0 and not torch.is_tensor(p_state["step"]):
                    on_device = group["capturable"] or group["fused"]
                    dict.__setitem__(p_state, "step", torch.tensor(
                        float(p_state["step"]), dtype=self._step_dtype(group), device=p.device if on_device else "cpu"
                    ))

    def _state_names(self, group):
        return ("exp_avg", "exp_avg_sq", "max_exp_avg_sq") if group["amsgrad"] else ("exp_avg", "exp_avg_sq")

    def _step_kernel_takes_hyperparameters(self, group):
        # A Tensor lr: read by the kernels where it is on the device (float32 or float64), by the
        # host where it is on the CPU (NOTE: [Device learning rates] in csrc/cuda/sweep.cuh).
        # Tensor betas take the reference path.
        lr = group["lr"]
        lr_taken = not isinstance(lr, torch.Tensor) or lr.device.type == "cpu" or (
            lr.device.type == "cuda" and lr.dtype in (torch.float32, torch.float64)
        )
        return lr_taken and not any(isinstance(b, torch.Tensor) for b in group["betas"])

    def _fused_step(self, group, bucket, device_amp=(None, None)):
        lr, (beta1, beta2), weight_decay = group["lr"], group["betas"], group["weight_decay"]
        coefs_at_step, device_lr = None, None
        if bucket.device_scalars and isinstance(lr, torch.Tensor):
            if lr.device.type == "cuda":
                # The kernels read lr on the device; the host's lr and decay factor are never
                # read (NaN, so that a kernel that did would show it).
                device_lr, lr = lr, float("nan")
            else:
                lr = _scalar(lr)  # a CPU Tensor lr: its value, as torch's fused=True treats it
        if any(isinstance(x, torch.Tensor) for x in (lr, beta1, beta2)):
            # NOTE: [Tensor hyperparameters]
            # With Tensor lr or betas, torch.optim's bias corrections and step size are tensor
            # arithmetic in the tensor's dtype (powf, torch's sqrt, reciprocal * scalar), not
            # Python floats. Evaluate torch's own expressions once per distinct step count.
            def coefs_at_step(step):
                step_size = lr / (1 - beta1**step)
                return -_scalar(step_size), 1.0 / _scalar((1 - beta2**step) ** 0.5)

        bucket.adam(
            _scalar(lr), _scalar(beta1), _scalar(beta2), _scalar(group["eps"]), _scalar(weight_decay),
            bool(group["amsgrad"]), bool(group["maximize"]), bool(group["decoupled_weight_decay"]),
            _scalar(1 - lr * weight_decay), coefs_at_step, *device_amp, device_lr=device_lr,
        )

    def _step_dtype(self, group):
        # A state made by a capturable group is float32 (as torch's load_state_dict makes it).
        if group.get("fused") or group.get("capturable"):
            return torch.float32
        return super()._step_dtype(group)

    def _check_step(self, group, reference_params):
        super()._check_step(group, reference_params)
        if group["foreach"] and torch.is_tensor(group["lr"]) and not group["capturable"]:
            raise RuntimeError("lr as a Tensor is not supported for capturable=False and foreach=True")

    def _reference_step(self, group, params):
        beta1, beta2 = group["betas"]
        _reference.adam(
            params, [self.state[p] for p in params],
            lr=group["lr"], beta1=beta1, beta2=beta2, eps=group["eps"], weight_decay=group["weight_decay"],
            amsgrad=group["amsgrad"], maximize=group["maximize"],
            decoupled_weight_decay=group["decoupled_weight_decay"], differentiable=group["differentiable"],
            step_dtype=self._step_dtype(group), step_on_param_device=bool(group["capturable"] or group["fused"]),
            capturable=bool(group["capturable"]) and not group["fused"],  # torch's fused=True wins
        )


Adam.__doc__ = _TorchAdam.__doc__ + """
    fusedoptim: the step runs one fused kernel per bucket (param group x device x dtype), on
    the CPU or CUDA. ``foreach`` is accepted and has no effect. With ``fused=True`` or
    ``capturable=True``, CUDA params keep ``step`` on the device as in torch and the step makes
    no host sync (a step kernel advances it; GradScaler's unscaling and skipping happen in the
    kernels); a Tensor ``lr`` on the device is read there by the kernels, so a step captured in a
    CUDA graph follows the values a scheduler writes into it. ``differentiable=True`` takes the
    plain-torch reference path.
""" + OPTIONS_DOC
