"""AdamW: fused torch.optim.AdamW (Adam with decoupled weight decay)."""

from torch.optim.adamw import AdamW as _TorchAdamW

from fusedoptim.adam import Adam
from fusedoptim.optimizer import OPTIONS_DOC

__all__ = ["AdamW"]


class AdamW(Adam):
    def __init__(
        self,
        params,
        lr=1e-3,
        betas=(0.9, 0.999),
        eps=1e-8,
        weight_decay=1e-2,
        amsgrad=False,
        *,
        maximize=False,
        foreach=None,
        capturable=False,
        differentiable=False,
        fused=None,
        max_grad_norm=None,
        norm_type=2.0,
        state_dtype=None,
        master_weights=False,
        stochastic_rounding=False,
    ):
        super().__init__(
            params, lr, betas, eps, weight_decay, amsgrad,
            foreach=foreach, maximize=maximize, capturable=capturable,
            differentiable=differentiable, fused=fused, decoupled_weight_decay=True,
            max_grad_norm=max_grad_norm, norm_type=norm_type, state_dtype=state_dtype,
            master_weights=master_weights, stochastic_rounding=stochastic_rounding,
        )

    def __setstate__(self, state):
        super().__setstate__(state)
        for group in self.param_groups:
            group["decoupled_weight_decay"] = True


AdamW.__doc__ = _TorchAdamW.__doc__ + """
    fusedoptim: the step runs one fused kernel per bucket (param group x device x dtype), on
    the CPU or CUDA. ``foreach`` is accepted and has no effect. With ``fused=True`` or
    ``capturable=True``, CUDA params keep ``step`` on the device as in torch and the step makes
    no host sync (a step kernel advances it; GradScaler's unscaling and skipping happen in the
    kernels); ``differentiable=True`` takes the plain-torch reference path.
""" + OPTIONS_DOC
