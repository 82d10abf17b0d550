#!/usr/bin/env python
"""Clip + step benchmark: fusedoptim's max_grad_norm step against its plain step, against
fusedoptim.clip_grad_norm_ + step, and against torch.nn.utils.clip_grad_norm_ + torch's fastest
step, interleaved.

Run:  python benchmarks/bench_clip.py [--algos adamw,sgd] [--layouts large,many] [--runs 15]
                                      [--threads N] [--json PATH]

Layouts: `large` is 24 fp32 tensors of 1,048,576 elements (25M params: streaming-bound);
`many` is 10,000 fp32 tensors of 256 elements (per-tensor costs dominate).

Method: every implementation steps its own copy of the same params and grads. In each of
`--runs` runs each implementation takes one step (order rotated per run, GC off), timed with
time.perf_counter(); the table gives medians over runs and ratios of medians. torch's
clip_grad_norm_ scales the grads in place, so its copies' grads shrink run after run; that
changes no work (it multiplies every grad whatever the coefficient). max_grad_norm is small
enough that fusedoptim always clips. The target (docs: the mixed-precision issue) is a
max_grad_norm step at most 1.3x the plain fused step.
Dependencies: torch and the standard library.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import fusedoptim  # noqa: E402

LAYOUTS = {"large": (24, 1 << 20), "many": (10_000, 256)}
MAX_NORM = 1e-3
ALGOS = {
    "adamw": (fusedoptim.AdamW, torch.optim.AdamW, dict(lr=1e-3, weight_decay=0.01)),
    "sgd": (fusedoptim.SGD, torch.optim.SGD, dict(lr=1e-3, momentum=0.9)),
}


def make_params(layout, seed=0):
    count, numel = LAYOUTS[layout]
    g = torch.Generator().manual_seed(seed)
    params = [torch.randn(numel, generator=g) for _ in range(count)]
    grads = [torch.randn(numel, generator=g) for _ in range(count)]
    return params, grads


def copies(params, grads):
    out = [p.clone().requires_grad_(True) for p in params]
    for p, g in zip(out, grads):
        p.grad = g.clone()
    return out


def implementations(algo, params, grads):
    fused_cls, torch_cls, kwargs = ALGOS[algo]
    impls = {}

    def add(name, make):
        ps = copies(params, grads)
        impls[name] = make(ps)

    add("fusedoptim step", lambda ps: fused_cls(ps, **kwargs).step)
    add("fusedoptim max_grad_norm step", lambda ps: fused_cls(ps, max_grad_norm=MAX_NORM, **kwargs).step)

    def fused_clip_then_step(ps):
        opt = fused_cls(ps, **kwargs)
        return lambda: (fusedoptim.clip_grad_norm_(ps, MAX_NORM), opt.step())

    add("fusedoptim.clip_grad_norm_ + step", fused_clip_then_step)
    for variant in ("fused", "foreach"):
        def torch_step(ps, variant=variant):
            return torch_cls(ps, **{variant: True}, **kwargs).step

        def torch_clip_then_step(ps, variant=variant):
            opt = torch_cls(ps, **{variant: True}, **kwargs)
            return lambda: (torch.nn.utils.clip_grad_norm_(ps, MAX_NORM), opt.step())

        add(f"torch {variant} step", torch_step)
        add(f"torch clip_grad_norm_ + {variant} step", torch_clip_then_step)
    return impls


def measure(algo, layout, runs):
    params, grads = make_params(layout)
    impls = implementations(algo, params, grads)
    names = list(impls)
    for name in names:  # first steps allocate state
        impls[name]()
    times = {name: [] for name in names}
    gc.disable()
    try:
        for run in range(runs):
            order = names[run % len(names):] + names[:run % len(names)]
            for name in order:
                start = time.perf_counter()
                impls[name]()
                times[name].append(time.perf_counter() - start)
    finally:
        gc.enable()
    return {name: statistics.median(t) * 1e3 for name, t in times.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--algos", default="adamw,sgd")
    parser.add_argument("--layouts", default="large,many")
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    results = []
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, cpu capability "
          f"{fusedoptim.cpu_capability()}, {args.runs} runs, medians in ms")
    for algo in args.algos.split(","):
        for layout in args.layouts.split(","):
            ms = measure(algo, layout, args.runs)
            plain = ms["fusedoptim step"]
            clipped = ms["fusedoptim max_grad_norm step"]
            torch_best = min(ms["torch clip_grad_norm_ + fused step"], ms["torch clip_grad_norm_ + foreach step"])
            torch_step = min(ms["torch fused step"], ms["torch foreach step"])
            count, numel = LAYOUTS[layout]
            print(f"\n{algo} / {layout} ({count} x {numel} fp32)")
            for name, value in ms.items():
                print(f"  {name:40s} {value:9.3f}")
            print(f"  max_grad_norm step / plain fused step:           {clipped / plain:.2f}x")
            print(f"  torch clip + fastest torch step / max_grad_norm: {torch_best / clipped:.2f}x")
            print(f"  fastest torch step alone / plain fused step:     {torch_step / plain:.2f}x")
            results.append({"algo": algo, "layout": layout, "ms": ms})
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"torch": torch.__version__, "threads": torch.get_num_threads(), "runs": args.runs,
                       "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
