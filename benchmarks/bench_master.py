#!/usr/bin/env python
"""bf16 + master_weights AdamW against the bytes it must move: one step() of fusedoptim.AdamW on
bf16 params with master_weights=True (reads the bf16 grad, the fp32 master and both fp32
states: 14 bytes; writes the bf16 param, the master and both states: 14 bytes; 28 bytes a
param), interleaved with fp32 AdamW (28 bytes), plain bf16 AdamW (14 bytes), bf16 AdamW with
stochastic_rounding=True (14 bytes) and a bandwidth probe (the best of large copy_ and add_
ops, counted as bytes read + written).

Run:  python benchmarks/bench_master.py [--numel 16777216] [--tensors 16] [--runs 15] [--threads N]

`% of ceiling` = floor bytes / median step time / the probe's median bandwidth in the same
rotation. The targets (the mixed-precision issue): bf16 + master_weights >= 85% on the 2-core
CPU; stochastic rounding close to the round-to-nearest (plain bf16) step time.
Dependencies: torch and the standard library.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import fusedoptim  # noqa: E402


def make_step(dtype, numel, tensors, **options):
    g = torch.Generator().manual_seed(0)
    params = [torch.randn(numel // tensors, generator=g).to(dtype).requires_grad_() for _ in range(tensors)]
    for p in params:
        p.grad = torch.randn(p.shape, generator=g).to(dtype) * 1e-3
    opt = fusedoptim.AdamW(params, lr=1e-4, weight_decay=0.01, **options)
    opt.step()  # allocates the state
    return opt.step


def make_probe(numel):
    a, b = torch.randn(numel), torch.randn(numel)

    def copy():
        a.copy_(b)
        return 8 * numel

    def add():
        a.add_(b)
        return 12 * numel

    return copy, add


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--numel", type=int, default=1 << 24)
    parser.add_argument("--tensors", type=int, default=16)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    n = args.numel
    steps = {
        "bf16 + master_weights": (make_step(torch.bfloat16, n, args.tensors, master_weights=True), 28),
        "fp32": (make_step(torch.float32, n, args.tensors), 28),
        "bf16 (plain)": (make_step(torch.bfloat16, n, args.tensors), 14),
        "bf16 + stochastic_rounding": (make_step(torch.bfloat16, n, args.tensors, stochastic_rounding=True), 14),
    }
    copy, add = make_probe(n)
    times = {name: [] for name in steps}
    bandwidth = []
    gc.disable()
    try:
        for run in range(args.runs):
            names = list(steps)
            names = names[run % len(names):] + names[:run % len(names)]
            for name in names:
                start = time.perf_counter()
                steps[name][0]()
                times[name].append(time.perf_counter() - start)
            best = 0.0
            for probe in (copy, add):
                start = time.perf_counter()
                moved = probe()
                best = max(best, moved / (time.perf_counter() - start))
            bandwidth.append(best)
    finally:
        gc.enable()
    ceiling = statistics.median(bandwidth)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, cpu capability {fusedoptim.cpu_capability()}, "
          f"{n:,} params in {args.tensors} tensors, {args.runs} runs; probe ceiling {ceiling / 1e9:.1f} GB/s")
    print(f"{'AdamW step':26s} {'ms':>8s} {'bytes/param':>12s} {'GB/s':>7s} {'% of ceiling':>13s}")
    for name, (_, bytes_per_param) in steps.items():
        t = statistics.median(times[name])
        rate = bytes_per_param * n / t
        print(f"{name:26s} {t * 1e3:8.2f} {bytes_per_param:12d} {rate / 1e9:7.1f} {100 * rate / ceiling:12.0f}%")
    nearest = statistics.median(times["bf16 (plain)"])
    print(f"stochastic_rounding / round to nearest (bf16): "
          f"{statistics.median(times['bf16 + stochastic_rounding']) / nearest:.2f}x")


if __name__ == "__main__":
    main()
