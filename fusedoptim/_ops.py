"""Fake implementations of the registered ops, torch.ops.fusedoptim.* (csrc/ops.cpp and
csrc/cpu/lbfgs_cpu.cpp), so torch.compile and torch.library.opcheck can trace them: every step
op (and scale_grads_) updates its lists in place and returns nothing; grad_squares and
grad_norm return a float64 scalar; the
lbfgs_* passes return flat vectors and 0-dim scalars of the flat dtype.

`BUCKET_METHOD_OPS` maps each compiled Bucket method to the op that takes the same
hyperparameters (NOTE: [Ops and buckets] in csrc/ops.cpp).
"""

import torch

STEP_OPS = ("sgd_", "adam_", "adadelta_", "adagrad_", "adamax_", "asgd_", "nadam_", "radam_", "rmsprop_",
            "rprop_", "lion_", "lamb_")
BUCKET_METHOD_OPS = {name.rstrip("_"): name for name in STEP_OPS}


def _register_fakes():
    for name in STEP_OPS + ("lbfgs_add_step", "scale_grads_"):
        torch.library.register_fake(f"fusedoptim::{name}")(_no_output)
    torch.library.register_fake("fusedoptim::grad_squares")(_grad_squares_fake)
    torch.library.register_fake("fusedoptim::grad_norm")(_grad_norm_fake)
    for name, fake in _LBFGS_FAKES.items():
        torch.library.register_fake(f"fusedoptim::{name}")(fake)


def _no_output(*args, **kwargs):
    return None


def _grad_squares_fake(grads):
    return torch.empty((), dtype=torch.float64)


def _grad_norm_fake(grads, norm_type):
    return torch.empty((), dtype=torch.float64)


def _flat_like(params):
    """The flat vector of `params` (complex ones count twice, in their real dtype)."""
    dtype = params[0].dtype.to_real()
    numel = sum(p.numel() * (2 if p.is_complex() else 1) for p in params)
    return torch.empty(numel, dtype=dtype)


def _scalar_like(vector):
    return vector.new_empty(())


def _lbfgs_gather_grads_fake(params, grads, direction):
    flat = _flat_like(params)
    return flat, _scalar_like(flat), _scalar_like(flat)


def _lbfgs_first_direction_fake(grad):
    return torch.empty_like(grad), _scalar_like(grad), _scalar_like(grad), _scalar_like(grad)


def _lbfgs_update_memory_fake(grad, prev_grad, direction, t):
    return torch.empty_like(grad), torch.empty_like(grad), _scalar_like(grad), _scalar_like(grad)


def _lbfgs_two_loop_fake(grad, old_dirs, old_stps, ro, h_diag):
    return torch.empty_like(grad), grad.new_empty((len(old_dirs),)), _scalar_like(grad), _scalar_like(grad)


_LBFGS_FAKES = {
    "lbfgs_gather_grads": _lbfgs_gather_grads_fake,
    "lbfgs_gather_params": _flat_like,
    "lbfgs_first_direction": _lbfgs_first_direction_fake,
    "lbfgs_update_memory": _lbfgs_update_memory_fake,
    "lbfgs_two_loop": _lbfgs_two_loop_fake,
    "lbfgs_max_abs_and_dot": lambda v, direction: (_scalar_like(v), _scalar_like(v)),
}

_register_fakes()
