"""Fake implementations of the registered ops, torch.ops.fusedoptim.* (csrc/ops.cpp), so
torch.compile and torch.library.opcheck can trace them: every step op updates its lists in
place and returns nothing; grad_squares returns a float64 scalar.

`BUCKET_METHOD_OPS` maps each compiled Bucket method to the op that takes the same
hyperparameters (NOTE: [Ops and buckets] in csrc/ops.cpp).
"""

import torch

STEP_OPS = ("sgd_", "adam_", "adadelta_", "adagrad_", "adamax_", "asgd_", "nadam_", "radam_", "rmsprop_",
            "rprop_", "lion_", "lamb_")
BUCKET_METHOD_OPS = {name.rstrip("_"): name for name in STEP_OPS}


def _register_fakes():
    for name in STEP_OPS:
        torch.library.register_fake(f"fusedoptim::{name}")(_no_output)
    torch.library.register_fake("fusedoptim::grad_squares")(_grad_squares_fake)


def _no_output(*args, **kwargs):
    return None


def _grad_squares_fake(grads):
    return torch.empty((), dtype=torch.float64)


_register_fakes()
