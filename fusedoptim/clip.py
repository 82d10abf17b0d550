"""fusedoptim.clip_grad_norm_: torch.nn.utils.clip_grad_norm_ as one fused reduction over the
grads and one fused scaling pass.

NOTE: [Fused grad norms]
torch computes a norm per grad and then the norm of those norms, each in the grads' dtype;
here the CPU grads of a supported dtype are reduced in one multi-tensor pass (grouped by
dtype, each group cut into fixed segments: NOTE: [Deterministic reductions] in
csrc/include/fusedoptim/cpu/sweep.h; no Bucket: NOTE: [Grad lists without buckets] in
csrc/cpu/grad_norm_cpu.cpp) to sum |g|^p (max |g| for inf), in double, and the
total's 1/p power is rounded once to the result dtype. That dtype and device are torch's: the
promotion of the grads' (real) dtypes, on the first grad's device. So the result is torch's
within its own rounding: identical up to ~1e-16 relative for fp64 grads, within a few fp32
ulps for fp32 (torch sums in fp32 and rounds each tensor's norm), and for bf16/fp16 grads
ours is the exact norm rounded once where torch rounds every tensor's norm to 16 bits first.

The clip coefficient is torch's expression on the returned tensor, `clamp(max_norm /
(total + 1e-6), max=1)`, in its dtype, and the scaling multiplies each grad by it as torch's
`mul_` does (in fp32 for bf16/fp16 grads, rounded once). A coefficient of exactly 1 skips the
pass (multiplying by 1 changes nothing). Norm types 1, 2 and inf have their own kernels;
other p > 0 use pow per element. What the kernels can't take (grads off the CPU, strided or
sparse grads, tensor subclasses, complex grads with p != 2, norm types <= 0) is left to
torch's own functions, and their norms combined with ours as torch combines per-tensor norms.
No host sync beyond reading the CPU results (grads all on CUDA never sync: torch computes
their norm and scales them with its foreach kernels): error_if_nonfinite checks the returned
tensor as torch does.
"""

import functools
import math
import types
import warnings

import torch

from fusedoptim import _extension
from fusedoptim.optimizer import _real_dtype

__all__ = ["clip_grad_norm_"]


def _has_fused_kernel(norm_type):
    """Whether the fused reduction takes this norm type: p > 0, or inf."""
    return norm_type > 0 and not math.isnan(norm_type)


def _combine_reduced(a, b, norm_type):
    """Two reduced values (sums of |g|^p, or maxima for inf) as one, NaN kept: Python floats,
    or 0-dim tensors (CUDA buckets')."""
    if not math.isinf(norm_type):
        return a + b
    if isinstance(a, torch.Tensor):
        return torch.maximum(a, b)
    return a if math.isnan(a) else b if math.isnan(b) else max(a, b)


def _norm_of_reduced(reduced, norm_type):
    """The norm from the reduced value (a Python float or a 0-dim tensor): sum |g|^p -> its
    1/p power; max |g| as is."""
    if math.isinf(norm_type) or norm_type == 1.0:
        return reduced
    if isinstance(reduced, torch.Tensor):
        return torch.sqrt(reduced) if norm_type == 2.0 else torch.pow(reduced, 1.0 / norm_type)
    if norm_type == 2.0:
        return math.sqrt(reduced)
    return reduced ** (1.0 / norm_type)


def _result_dtype(tensors):
    return functools.reduce(torch.promote_types, {_real_dtype(t.dtype) for t in tensors})


def _combine_norms(fused_norm, other_grads, dtype, device, norm_type, foreach=None):
    """The total norm tensor, of `dtype` on `device` (torch's: the grads' promoted dtype, the
    first grad's device), from the fused grads' norm (a Python float) and the grads torch
    computes itself."""
    if not other_grads:
        return torch.tensor(fused_norm, dtype=dtype, device=device)
    other_norm = torch.nn.utils.get_total_norm(other_grads, norm_type, False, foreach)
    norms = [torch.tensor(fused_norm, dtype=dtype).to(device), other_norm.to(device, dtype)]
    return torch.linalg.vector_norm(torch.stack(norms), norm_type)


def _check_finite(total_norm, norm_type, error_if_nonfinite):
    if error_if_nonfinite and torch.logical_or(total_norm.isnan(), total_norm.isinf()):
        raise RuntimeError(
            f"The total norm of order {norm_type} for gradients from "
            "`parameters` is non-finite, so it cannot be clipped. To disable "
            "this error and scale the gradients by the non-finite norm anyway, "
            "set `error_if_nonfinite=False`"
        )


def _total_norm(grads, norm_type, error_if_nonfinite, foreach):
    """torch.nn.utils.get_total_norm over `grads`, fused where the kernels can."""
    norm_type = float(norm_type)
    if len(grads) == 0:
        return torch.tensor(0.0)
    if not _extension.extension_available() or not _has_fused_kernel(norm_type):
        return torch.nn.utils.get_total_norm(grads, norm_type, error_if_nonfinite, foreach)
    reduced, other_indices = _extension._C.grad_norm_list(grads, norm_type)
    if len(other_indices) == len(grads):
        return torch.nn.utils.get_total_norm(grads, norm_type, error_if_nonfinite, foreach)
    total_norm = _combine_norms(_norm_of_reduced(reduced, norm_type), [grads[i] for i in other_indices],
                                _result_dtype(grads), grads[0].device, norm_type, foreach)
    _check_finite(total_norm, norm_type, error_if_nonfinite)
    return total_norm


def _clip_coefficient(max_norm, total_norm):
    """torch's clip coefficient, in total_norm's dtype."""
    return torch.clamp(float(max_norm) / (total_norm + 1e-6), max=1.0)


def _clip_grads_with_norm(grads, max_norm, total_norm):
    if len(grads) == 0:
        return
    coef = _clip_coefficient(max_norm, total_norm)
    others = grads
    if _extension.extension_available() and any(g.device.type == "cpu" for g in grads):
        # The CPU kernels take the coefficient by value: a host sync only where a CPU grad
        # needs it, as torch's own coef.to("cpu") would be for grads on the CPU.
        value = coef.item() if coef.device.type == "cpu" else coef.to("cpu").item()
        others = [] if value == 1.0 else [grads[i] for i in _extension._C.scale_grad_list(grads, value)]
    groups = {}
    for g in others:
        groups.setdefault((g.device, g.dtype), []).append(g)
    for (device, _), group_grads in groups.items():
        device_coef = coef.to(device)
        if device.type != "cpu" and all(g.layout == torch.strided for g in group_grads):
            torch._foreach_mul_(group_grads, device_coef)  # as torch: multi-tensor kernels, no sync
        else:
            for g in group_grads:
                g.mul_(device_coef)


@torch.no_grad()
def clip_grad_norm_(parameters, max_norm, norm_type=2.0, error_if_nonfinite=False, foreach=None):
    r"""Clip the gradient norm of an iterable of parameters: torch.nn.utils.clip_grad_norm_,
    fused.

    The norm is computed over the norms of the individual gradients of all parameters,
    as if the norms of the individual gradients were concatenated into a single vector.
    Gradients are modified in-place: multiplied by
    :math:`\min(\text{max\_norm} / (\text{total\_norm} + 10^{-6}), 1)`.

    Args:
        parameters (Iterable[Tensor] or Tensor): an iterable of Tensors or a
            single Tensor that will have gradients normalized
        max_norm (float): max norm of the gradients
        norm_type (float, optional): type of the used p-norm. Can be ``'inf'`` for
            infinity norm. Default: 2.0
        error_if_nonfinite (bool, optional): if True, an error is thrown if the total
            norm of the gradients from :attr:`parameters` is ``nan``,
            ``inf``, or ``-inf``. Default: False
        foreach (bool, optional): passed to torch for the gradients it handles itself
            (not on the CPU, strided, sparse); the CPU gradients always take the fused
            kernels. Default: None

    Returns:
        Total norm of the parameter gradients (viewed as a single vector), a 0-dim tensor
        of the gradients' promoted dtype on the first gradient's device, as torch returns.

    fusedoptim: CPU gradients are reduced in one deterministic multi-tensor pass (in double)
    and scaled in one more; see NOTE: [Fused grad norms] in fusedoptim/clip.py for how the
    result compares with torch's.
    """
    if isinstance(parameters, torch.Tensor):
        parameters = [parameters]
    else:
        is_generator = isinstance(parameters, types.GeneratorType)
        parameters = list(parameters)
        if is_generator and len(parameters) == 0:
            warnings.warn("`parameters` is an empty generator, no gradient clipping will occur.", stacklevel=3)
    grads = [p.grad for p in parameters if p.grad is not None]
    total_norm = _total_norm(grads, norm_type, error_if_nonfinite, foreach)
    _clip_grads_with_norm(grads, max_norm, total_norm)
    return total_norm
