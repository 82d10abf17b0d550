#!/usr/bin/env python
"""LBFGS benchmark: one step() of fusedoptim.LBFGS vs torch.optim.LBFGS, interleaved.

Run:  python benchmarks/bench_lbfgs.py [--dtypes float64,float32] [--line-search strong_wolfe,none]
                                       [--starts fresh,full] [--runs 5] [--threads N] [--json PATH]

Problem: 1,000,000 params in 100 tensors of 10,000, f(x) = sum_i c_i x_i^2 / 2 + x_i^4 / 4
with c_i log-uniform in [1e-2, 1e2] (seeded): smooth, separable, ill-conditioned enough that
every step of the default LBFGS (max_iter=20, history_size=100) does its 20 iterations.

Closure: deliberately cheap, so that what is timed is mostly the optimizer. It is the same
function for both: one `cat` of the params, then x*x, two dots for the loss and the gradient
x * (c + x*x) written into a flat buffer whose views are the params' .grad; it writes into
buffers it allocated once (a new 8 MB tensor costs ~6 ms of page faults on the 2-core VM,
more than the closure's arithmetic). Its own time per evaluation is measured in the same
rotation and printed, with each optimizer's overhead (step time minus evaluations x closure
time).

Starts: `fresh` times the first step of a new optimizer (its history grows from 0 to ~18
pairs); `full` times a step that starts with a full history of 100 pairs: torch.optim.LBFGS
is run 5 steps once, and each timed run loads its params and state_dict (both optimizers load
torch's state).

Method: for each of `--runs` runs, each implementation (order rotated per run, GC off) gets
fresh copies of the same params and state and one step() is timed with time.perf_counter();
so is the closure alone (median of 10 calls). The table gives medians over runs and the ratio
of the medians; `max rel diff` is the largest |ours - torch| / max|torch| of the params after
the step, over all runs (fp64: rounding only; the evaluation and iteration counts must match).
Dependencies: torch and the standard library (and fusedoptim.bench for metadata).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
from typing import Dict, List

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from fusedoptim.bench.measure import loadavg, machine_metadata  # noqa: E402

NUM_TENSORS = 100
TENSOR_NUMEL = 10_000
FULL_HISTORY_STEPS = 5  # torch steps before a `full` start: 5 x 20 iterations fill 100 pairs
CLOSURE_CALLS = 10


def make_problem(dtype: torch.dtype, seed: int = 0):
    """Initial point and curvatures, generated in fp64 and cast."""
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(NUM_TENSORS * TENSOR_NUMEL, generator=g, dtype=torch.float64)
    curvature = 10 ** (4 * torch.rand(NUM_TENSORS * TENSOR_NUMEL, generator=g, dtype=torch.float64) - 2)
    return x0.to(dtype), curvature.to(dtype)


def make_closure(params: List[torch.Tensor], curvature: torch.Tensor):
    flat_grad = torch.zeros_like(curvature)
    x, x2 = torch.empty_like(curvature), torch.empty_like(curvature)
    for p, view in zip(params, flat_grad.split([p.numel() for p in params])):
        p.grad = view.view_as(p)

    def closure():
        torch.cat([p.detach().reshape(-1) for p in params], out=x)
        torch.mul(x, x, out=x2)
        loss = 0.5 * curvature.dot(x2) + 0.25 * x2.dot(x2)
        torch.mul(x, x2.add_(curvature), out=flat_grad)
        return loss

    return closure


def as_params(flat: torch.Tensor) -> List[torch.Tensor]:
    return [t.clone().requires_grad_() for t in flat.split(TENSOR_NUMEL)]


def flat_of(params: List[torch.Tensor]) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in params])


def loadable_copy(state_dict):
    """A state_dict the optimizer may own: torch's load_state_dict aliases the tensors, and
    prev_flat_grad is the one state tensor LBFGS writes in place."""
    state = {k: dict(v) for k, v in state_dict["state"].items()}
    for entry in state.values():
        entry["prev_flat_grad"] = entry["prev_flat_grad"].clone()
    return {"state": state, "param_groups": state_dict["param_groups"]}


def full_history_start(x0, curvature, line_search_fn, log):
    """Params and state after FULL_HISTORY_STEPS steps of torch.optim.LBFGS."""
    params = as_params(x0)
    opt = torch.optim.LBFGS(params, line_search_fn=line_search_fn)
    closure = make_closure(params, curvature)
    t0 = time.perf_counter()
    for _ in range(FULL_HISTORY_STEPS):
        opt.step(closure)
    state = opt.state[params[0]]
    log(f"    start: {FULL_HISTORY_STEPS} torch steps in {time.perf_counter() - t0:.1f} s, "
        f"{len(state['old_dirs'])} history pairs")
    return flat_of(params), opt.state_dict()


def run_case(fusedoptim_mod, dtype, line_search_fn, start, runs, log) -> Dict[str, object]:
    x0, curvature = make_problem(dtype)
    state_dict = None
    if start == "full":
        x0, state_dict = full_history_start(x0, curvature, line_search_fn, log)
    impls = {"torch": torch.optim.LBFGS, "fusedoptim": fusedoptim_mod.LBFGS}
    times = {name: [] for name in impls}
    closure_times, counts, rel_diffs = [], {name: set() for name in impls}, []

    def timed_step(cls):
        params = as_params(x0)
        opt = cls(params, line_search_fn=line_search_fn)
        if state_dict is not None:
            opt.load_state_dict(loadable_copy(state_dict))
        closure = make_closure(params, curvature)
        state = opt.state[params[0]]
        evals, iters = state.get("func_evals", 0), state.get("n_iter", 0)
        gc.collect()
        gc.disable()
        try:
            t0 = time.perf_counter()
            opt.step(closure)
            elapsed = time.perf_counter() - t0
        finally:
            gc.enable()
        return elapsed, (state["func_evals"] - evals, state["n_iter"] - iters), flat_of(params)

    def timed_closure():
        params = as_params(x0)
        closure = make_closure(params, curvature)
        closure()
        samples = []
        for _ in range(CLOSURE_CALLS):
            t0 = time.perf_counter()
            closure()
            samples.append(time.perf_counter() - t0)
        return statistics.median(samples)

    jobs = list(impls) + ["closure"]
    for r in range(runs):
        order = jobs[r % len(jobs):] + jobs[:r % len(jobs)]
        results = {}
        for name in order:
            if name == "closure":
                closure_times.append(timed_closure())
                continue
            elapsed, count, params = timed_step(impls[name])
            times[name].append(elapsed)
            counts[name].add(count)
            results[name] = params
        expected = results["torch"]
        rel_diffs.append(((results["fusedoptim"] - expected).abs().max() / expected.abs().max()).item())
        log(f"    run {r + 1}/{runs}: torch {times['torch'][-1] * 1e3:.0f} ms, "
            f"fusedoptim {times['fusedoptim'][-1] * 1e3:.0f} ms, closure {closure_times[-1] * 1e3:.2f} ms")
        del results, expected

    torch_ms = statistics.median(times["torch"]) * 1e3
    ours_ms = statistics.median(times["fusedoptim"]) * 1e3
    closure_ms = statistics.median(closure_times) * 1e3
    evals, iters = sorted(counts["torch"])[0]
    return {
        "dtype": str(dtype).replace("torch.", ""),
        "line_search_fn": line_search_fn or "none",
        "start": start,
        "runs": runs,
        "torch_ms": torch_ms,
        "fusedoptim_ms": ours_ms,
        "ratio": torch_ms / ours_ms,
        "per_run_ratios": [t / f for t, f in zip(times["torch"], times["fusedoptim"])],
        "torch_times_ms": [t * 1e3 for t in times["torch"]],
        "fusedoptim_times_ms": [t * 1e3 for t in times["fusedoptim"]],
        "evals": evals,
        "iterations": iters,
        "counts_match": counts["torch"] == counts["fusedoptim"] and len(counts["torch"]) == 1,
        "closure_ms": closure_ms,
        "torch_overhead_ms": torch_ms - evals * closure_ms,
        "fusedoptim_overhead_ms": ours_ms - evals * closure_ms,
        "max_rel_diff": max(rel_diffs),
    }


def format_table(rows) -> str:
    header = ["dtype", "line search", "start", "evals/iters", "torch ms", "fusedoptim ms", "ratio",
              "ratio range", "closure ms", "overhead torch/ours ms", "max rel diff"]
    lines = [header]
    for r in rows:
        lines.append([
            r["dtype"], r["line_search_fn"], r["start"],
            f"{r['evals']}/{r['iterations']}" + ("" if r["counts_match"] else " (differ!)"),
            f"{r['torch_ms']:.0f}", f"{r['fusedoptim_ms']:.0f}", f"{r['ratio']:.2f}x",
            f"{min(r['per_run_ratios']):.2f}-{max(r['per_run_ratios']):.2f}",
            f"{r['closure_ms']:.2f}",
            f"{r['torch_overhead_ms']:.0f} / {r['fusedoptim_overhead_ms']:.0f}",
            f"{r['max_rel_diff']:.1e}",
        ])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    render = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"
    out = [render(lines[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [render(line) for line in lines[1:]]
    return "\n".join(out)


def _csv(choices):
    def parse(text):
        values = [v for v in text.split(",") if v]
        bad = [v for v in values if v not in choices]
        if bad:
            raise argparse.ArgumentTypeError(f"unknown {bad}; choose from {list(choices)}")
        return values
    return parse


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtypes", type=_csv(["float64", "float32"]), default=["float64", "float32"])
    parser.add_argument("--line-search", type=_csv(["strong_wolfe", "none"]), default=["strong_wolfe", "none"])
    parser.add_argument("--starts", type=_csv(["fresh", "full"]), default=["fresh", "full"])
    parser.add_argument("--runs", type=int, default=5, help="timed steps per implementation and case")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--json", metavar="PATH", default=None, help="write rows + metadata")
    args = parser.parse_args(argv)

    import fusedoptim
    if not fusedoptim.extension_available():
        print("fusedoptim's extension is not built: nothing to compare", file=sys.stderr)
        return 1
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    log = lambda s: print(s, file=sys.stderr, flush=True)
    meta = machine_metadata(torch.device("cpu"), fusedoptim, None)
    log(f"fusedoptim from {fusedoptim.__file__}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"load {meta['loadavg_before']}")

    rows = []
    for dtype in args.dtypes:
        for line_search in args.line_search:
            for start in args.starts:
                log(f"  {dtype} / {line_search} / {start}")
                rows.append(run_case(fusedoptim, getattr(torch, dtype),
                                     None if line_search == "none" else line_search, start, args.runs, log))
    meta["loadavg_after"] = loadavg()
    print(f"fusedoptim.LBFGS vs torch.optim.LBFGS: one step(), {NUM_TENSORS} x {TENSOR_NUMEL:,} params, "
          f"median of {args.runs} interleaved runs, {torch.get_num_threads()} threads")
    print(format_table(rows))
    print(f"load average before/after: {meta['loadavg_before']} / {meta['loadavg_after']}")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"metadata": meta, "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
