"""Plain-torch update rules: the reference path and a test oracle beside torch.optim.

Each function updates a list of params in place from their grads and per-param state dicts,
with torch.optim's single-tensor order of operations, so results match torch.optim's
for-loop implementation. They also run with autograd enabled (differentiable=True): ops that
would overwrite a tensor autograd still needs work on clones, as in torch.optim.
See NOTE: [Reference path] in optimizer.py.
"""

import torch

from fusedoptim import _dtensor


def _lr_value(lr):
    return lr if isinstance(lr, torch.Tensor) and lr.requires_grad else (lr.item() if isinstance(lr, torch.Tensor) else lr)


def sgd(params, states, *, lr, momentum, dampening, weight_decay, nesterov, maximize):
    lr = _lr_value(lr)
    # Read every momentum buffer before updating any, as torch.optim does: a param listed
    # twice then starts both of its buffers from the grad on its first step.
    buffers = [state.get("momentum_buffer") for state in states]
    for param, state, buf in zip(params, states, buffers):
        grad = param.grad if not maximize else -param.grad
        if weight_decay != 0:
            if isinstance(weight_decay, torch.Tensor) and weight_decay.requires_grad:
                grad = grad.addcmul_(param.clone(), weight_decay)
            else:
                grad = grad.add(param, alpha=weight_decay)
        if momentum != 0:
            if buf is None:
                buf = grad.detach().clone()
            else:
                buf.mul_(momentum).add_(grad, alpha=1 - dampening)
            state["momentum_buffer"] = buf
            grad = grad.add(buf, alpha=momentum) if nesterov else buf
        if isinstance(lr, torch.Tensor):
            param.addcmul_(grad, lr, value=-1)
        else:
            param.add_(grad, alpha=-lr)


def adam(params, states, *, lr, beta1, beta2, eps, weight_decay, amsgrad, maximize,
         decoupled_weight_decay, differentiable, step_dtype, step_on_param_device, capturable=False):
    # capturable: torch's capturable (not fused) arithmetic for params off the CPU (where torch
    # refuses capturable; on the CPU its Python-float arithmetic), tensor expressions on the
    # device `step` with no host sync, as differentiable=True's.
    if isinstance(lr, torch.Tensor) and lr.dim() != 0:
        lr = lr.squeeze()
    for param, state in zip(params, states):
        if len(state) == 0:
            state["step"] = torch.zeros((), dtype=step_dtype, device=param.device if step_on_param_device else "cpu")
            state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
            if amsgrad:
                state["max_exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        grad = param.grad if not maximize else -param.grad
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        max_exp_avg_sq = state.get("max_exp_avg_sq")
        step_t = state["step"]
        step_t += 1

        if weight_decay != 0:
            if decoupled_weight_decay:
                param.mul_(1 - lr * weight_decay)
            else:
                grad = grad.add(param, alpha=weight_decay)

        if torch.is_complex(param):
            grad = torch.view_as_real(grad)
            exp_avg = torch.view_as_real(exp_avg)
            exp_avg_sq = torch.view_as_real(exp_avg_sq)
            if amsgrad:
                max_exp_avg_sq = torch.view_as_real(max_exp_avg_sq)
            param = torch.view_as_real(param)

        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)

        if differentiable or (capturable and step_t.device.type != "cpu"):
            # The step as a tensor expression, so autograd sees every dependency (and a
            # capturable step reads no device value on the host).
            bias_correction1 = 1 - beta1 ** step_t
            bias_correction2 = 1 - beta2 ** step_t
            step_size_neg = (lr / bias_correction1).neg()
            bias_correction2_sqrt = bias_correction2.sqrt()
            if amsgrad:
                max_exp_avg_sq.copy_(torch.maximum(max_exp_avg_sq.clone(), exp_avg_sq))
                second_moment = max_exp_avg_sq
            else:
                second_moment = exp_avg_sq
            denom = (second_moment.sqrt() / (bias_correction2_sqrt * step_size_neg)).add_(eps / step_size_neg)
            param.addcdiv_(exp_avg.clone() if differentiable else exp_avg, denom)
        else:
            step = step_t.item()
            bias_correction1 = 1 - beta1 ** step
            bias_correction2 = 1 - beta2 ** step
            step_size = lr / bias_correction1
            bias_correction2_sqrt = bias_correction2 ** 0.5
            if amsgrad:
                torch.maximum(max_exp_avg_sq, exp_avg_sq, out=max_exp_avg_sq)
                second_moment = max_exp_avg_sq
            else:
                second_moment = exp_avg_sq
            denom = (second_moment.sqrt() / bias_correction2_sqrt).add_(eps)
            param.addcdiv_(exp_avg, denom, value=-step_size)



def torch_init_group(torch_cls, optimizer, group, params, num_lists):
    """torch.optim's own state initialisation for `params` of `group`, on `optimizer`'s state.

    torch_cls._init_group creates missing state exactly as torch.optim does and gathers the
    per-param lists (params, grads, then num_lists state lists in _init_group's order); the
    caller hands them to torch's functional API (torch.optim.<module>.<algorithm>) with
    foreach=False, so the reference path is torch's single-tensor implementation itself.
    Returns the lists and _init_group's result (has_complex, or a tuple for Adagrad).
    """
    lists = [[] for _ in range(2 + num_lists)]
    flags = torch_cls._init_group(optimizer, dict(group, params=params), *lists)
    return lists, flags


def _real(tensor):
    return torch.view_as_real(tensor) if tensor.is_complex() else tensor


def lion(params, states, *, lr, beta1, beta2, weight_decay, maximize):
    """Lion (fusedoptim.Lion's docstring), on complex params as real pairs."""
    lr = _lr_value(lr)
    for param, state in zip(params, states):
        if len(state) == 0:
            state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        grad = _real(param.grad if not maximize else -param.grad)
        exp_avg = _real(state["exp_avg"])
        param = _real(param)
        direction = (exp_avg * beta1).add_(grad, alpha=1 - beta1)
        if weight_decay != 0:
            param.mul_(1 - lr * weight_decay)
        param.sub_(direction.sign_().mul_(lr))  # lr may be a Tensor that requires grad
        exp_avg.mul_(beta2).add_(grad, alpha=1 - beta2)


def lamb(params, states, *, lr, beta1, beta2, eps, weight_decay, bias_correction, grad_averaging,
         decoupled_weight_decay, always_adapt, maximize, clip, step_dtype, differentiable=False):
    """LAMB (fusedoptim.LAMB's docstring), one param at a time; clip is the global grad-norm divisor."""
    lr = _lr_value(lr)
    beta3 = 1 - beta1 if grad_averaging else 1.0
    for param, state in zip(params, states):
        if len(state) == 0:
            state["step"] = torch.zeros((), dtype=step_dtype)
            state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        state["step"] += 1
        step = state["step"].item()
        bias_correction1 = 1 - beta1**step if bias_correction else 1.0
        bias_correction2 = 1 - beta2**step if bias_correction else 1.0
        grad = _real(param.grad if not maximize else -param.grad)
        exp_avg, exp_avg_sq, param = _real(state["exp_avg"]), _real(state["exp_avg_sq"]), _real(param)
        if clip != 1.0:
            grad = grad / clip
        if weight_decay != 0 and not decoupled_weight_decay:
            grad = grad + weight_decay * param
        exp_avg.mul_(beta1).add_(beta3 * grad)
        exp_avg_sq.mul_(beta2).add_((1 - beta2) * grad * grad)
        update = (exp_avg / bias_correction1) / ((exp_avg_sq / bias_correction2).sqrt() + eps)
        if weight_decay != 0 and decoupled_weight_decay:
            update = update + weight_decay * param
        if not (weight_decay != 0 or always_adapt):
            param.sub_(update * lr)
        elif differentiable:
            # Tensors, not .item(): autograd sees the ratio (and a Tensor lr).
            param_norm = _dtensor.whole_norm(param.clone().norm())  # param changes below
            update_norm = _dtensor.whole_norm(update.norm())
            ratio = torch.where((param_norm != 0) & (update_norm != 0), param_norm / update_norm, 1.0)
            param.sub_(update * (lr * ratio))
        else:
            # A DTensor's norm is partial on each rank: whole_norm all-reduces it.
            param_norm = _dtensor.whole_norm(param.norm()).item()
            update_norm = _dtensor.whole_norm(update.norm()).item()
            ratio = param_norm / update_norm if param_norm != 0 and update_norm != 0 else 1.0
            param.add_(update, alpha=-lr * ratio)
