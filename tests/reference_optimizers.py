"""Plain-torch oracles for the two fusedoptim optimizers that torch.optim does not have.

``LAMB`` and ``Lion`` below are ordinary ``torch.optim.Optimizer`` subclasses written from the
math in fusedoptim's docstrings (and the papers), one param at a time with plain tensor ops in
the param's dtype, the way torch.optim's for-loop implementations are written.  They are
deliberately *not* derived from ``fusedoptim/_reference.py``: the tests run them side by side
with fusedoptim exactly as they run torch.optim for the other algorithms
(``helpers.torch_cls("LAMB")`` returns :class:`LAMB`).

LAMB (You et al. 2019, in NVIDIA Apex's ``FusedLAMB`` formulation)::

    c     = max(||g||_global / max_grad_norm, 1)   if max_grad_norm else 1
            (||g||_global: over every param of every group that has a grad this step)
    g     = (maximize ? -grad : grad) / c
    g     = g + wd * p                             (L2 mode, decoupled_weight_decay=False)
    m     = beta1 * m + beta3 * g                  beta3 = 1 - beta1 if grad_averaging else 1
    v     = beta2 * v + (1 - beta2) * g^2
    u     = (m / bc1) / (sqrt(v / bc2) + eps)      bc = 1 - beta^t, or 1 without bias_correction
    u     = u + wd * p                             (decoupled mode)
    r     = ||p|| / ||u||  per tensor if (wd != 0 or always_adapt) and both norms are non-zero,
            else 1
    p     = p - lr * r * u

Lion (Chen et al. 2023; as lucidrains/lion-pytorch writes it)::

    g     = maximize ? -grad : grad
    c     = beta1 * m + (1 - beta1) * g
    p     = p * (1 - lr * wd)
    p     = p - lr * sign(c)
    m     = beta2 * m + (1 - beta2) * g

Complex params are treated as pairs of real numbers (``torch.view_as_real``), as torch.optim
does. DTensor params (FSDP2) run the same ops on the DTensors; every norm is made whole with
``full_tensor()`` first, since a DTensor's ``.item()`` reads only this rank's part of a reduction.  With ``differentiable=True`` the step runs under autograd and every quantity (the
global grad norm, the trust ratio, a Tensor lr that requires grad) stays a tensor, so the
step is differentiable with respect to all its inputs.
"""

from __future__ import annotations

import math

import torch
from torch.optim import Optimizer

__all__ = ["LAMB", "Lion"]


def _scalar_dtype():
    # torch.optim's convention for the 'step' state (torch.optim.optimizer._get_scalar_dtype)
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


def _as_real(t):
    return torch.view_as_real(t) if t.is_complex() else t


def _whole(reduction):
    """The value of a reduction over a whole tensor: a reduction of a DTensor is partial on each
    rank (its ``.item()`` reads this rank's part), ``full_tensor()`` all-reduces it."""
    return reduction.full_tensor() if hasattr(reduction, "full_tensor") else reduction


def _check_lr(lr):
    if isinstance(lr, torch.Tensor) and lr.numel() != 1:
        raise ValueError("Tensor lr must be 1-element")
    if not 0.0 <= lr:
        raise ValueError(f"Invalid learning rate: {lr}")


def _plain_lr(lr, differentiable):
    """A Tensor lr stays a tensor only when autograd must see it."""
    if isinstance(lr, torch.Tensor):
        if differentiable and lr.requires_grad:
            return lr.reshape(())
        return lr.item()
    return lr


class _StepMixin:
    """step(closure) as torch.optim's: closure under grad mode, the update under no_grad
    unless the optimizer is differentiable."""

    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        with torch.set_grad_enabled(bool(self.defaults["differentiable"])):
            self._update()
        return loss


class Lion(_StepMixin, Optimizer):
    def __init__(self, params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0, *, maximize=False,
                 differentiable=False):
        _check_lr(lr)
        if not 0.0 <= betas[0] <= 1.0:
            raise ValueError(f"Invalid beta parameter at index 0: {betas[0]}")
        if not 0.0 <= betas[1] <= 1.0:
            raise ValueError(f"Invalid beta parameter at index 1: {betas[1]}")
        if not 0.0 <= weight_decay:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        super().__init__(params, dict(lr=lr, betas=betas, weight_decay=weight_decay,
                                      maximize=maximize, differentiable=differentiable))

    def _update(self):
        for group in self.param_groups:
            diff = group["differentiable"]
            lr = _plain_lr(group["lr"], diff)
            beta1, beta2 = (float(b) for b in group["betas"])
            wd = float(group["weight_decay"])
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("Lion does not support sparse gradients")
                state = self.state[p]
                if len(state) == 0:
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                grad = _as_real(-p.grad if group["maximize"] else p.grad)
                exp_avg = _as_real(state["exp_avg"])
                param = _as_real(p)
                direction = exp_avg.mul(beta1).add(grad, alpha=1 - beta1)
                if wd != 0:
                    param.mul_(1 - lr * wd)
                if isinstance(lr, torch.Tensor):
                    param.sub_(direction.sign() * lr)
                else:
                    param.add_(direction.sign(), alpha=-lr)
                exp_avg.mul_(beta2).add_(grad, alpha=1 - beta2)


class LAMB(_StepMixin, Optimizer):
    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01, *,
                 bias_correction=True, grad_averaging=True, decoupled_weight_decay=True,
                 max_grad_norm=None, always_adapt=False, maximize=False, differentiable=False):
        _check_lr(lr)
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
        super().__init__(params, dict(
            lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
            bias_correction=bias_correction, grad_averaging=grad_averaging,
            decoupled_weight_decay=decoupled_weight_decay, max_grad_norm=max_grad_norm,
            always_adapt=always_adapt, maximize=maximize, differentiable=differentiable))

    def _global_grad_norm(self, differentiable):
        """sqrt of the sum of squared grads over every param of every group with a grad."""
        sq = []
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("LAMB does not support sparse gradients")
                g = _as_real(p.grad)
                if differentiable:
                    sq.append(_whole(g.to(torch.float64).pow(2).sum()))
                else:
                    sq.append(_whole(torch.linalg.vector_norm(g.detach(), dtype=torch.float64)).item() ** 2)
        if differentiable:
            return torch.stack(sq).sum().sqrt() if sq else torch.zeros((), dtype=torch.float64)
        return math.sqrt(sum(sq))

    def _update(self):
        total_norm = None
        for group in self.param_groups:
            diff = group["differentiable"]
            lr = _plain_lr(group["lr"], diff)
            beta1, beta2 = (float(b) for b in group["betas"])
            eps, wd = float(group["eps"]), float(group["weight_decay"])
            beta3 = 1 - beta1 if group["grad_averaging"] else 1.0
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            for p in params:
                if p.grad.is_sparse:
                    raise RuntimeError("LAMB does not support sparse gradients")
            clip = 1.0
            if group["max_grad_norm"]:
                if total_norm is None:  # once per step, over all groups
                    total_norm = self._global_grad_norm(diff)
                if isinstance(total_norm, torch.Tensor):
                    clip = torch.clamp(total_norm / group["max_grad_norm"], min=1.0)
                else:
                    clip = max(total_norm / group["max_grad_norm"], 1.0)
            for p in params:
                state = self.state[p]
                if len(state) == 0:
                    state["step"] = torch.zeros((), dtype=_scalar_dtype())
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                t = state["step"].item()
                bc1 = 1 - beta1 ** t if group["bias_correction"] else 1.0
                bc2 = 1 - beta2 ** t if group["bias_correction"] else 1.0

                grad = _as_real(-p.grad if group["maximize"] else p.grad)
                param = _as_real(p)
                m, v = _as_real(state["exp_avg"]), _as_real(state["exp_avg_sq"])
                if isinstance(clip, torch.Tensor):
                    grad = grad / clip.to(grad.dtype)
                elif clip != 1.0:
                    grad = grad / clip
                if wd != 0 and not group["decoupled_weight_decay"]:
                    grad = grad.add(param, alpha=wd)
                m.mul_(beta1).add_(grad, alpha=beta3)
                v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                update = (m / bc1) / ((v / bc2).sqrt() + eps)
                if wd != 0 and group["decoupled_weight_decay"]:
                    update = update.add(param, alpha=wd)
                if wd != 0 or group["always_adapt"]:
                    if diff:
                        p_norm = _whole(torch.linalg.vector_norm(param.clone()))
                        u_norm = _whole(torch.linalg.vector_norm(update))
                        ratio = torch.where((p_norm > 0) & (u_norm > 0),
                                            p_norm / torch.where(u_norm > 0, u_norm, 1.0), 1.0)
                    else:
                        p_norm = _whole(torch.linalg.vector_norm(param, dtype=torch.float64)).item()
                        u_norm = _whole(torch.linalg.vector_norm(update, dtype=torch.float64)).item()
                        ratio = p_norm / u_norm if p_norm != 0 and u_norm != 0 else 1.0
                else:
                    ratio = 1.0
                if isinstance(lr, torch.Tensor) or isinstance(ratio, torch.Tensor):
                    param.sub_(update * (lr * ratio))
                else:
                    param.add_(update, alpha=-lr * ratio)
