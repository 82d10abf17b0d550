"""Benchmark of fusedoptim against torch.optim and other fused optimizers:
`python -m fusedoptim.bench --help`."""

from .cli import main

__all__ = ["main"]
