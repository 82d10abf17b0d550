"""`python -m fusedoptim.bench`: time one optimizer step of fusedoptim against torch.optim
(for-loop, foreach, fused) and, when importable, Apex, DeepSpeed and bitsandbytes.

Examples:
  python -m fusedoptim.bench                                  # gpt2 + small, SGD/Adam/AdamW
  python -m fusedoptim.bench --algos all --json out.json --plot out.png
  python -m fusedoptim.bench --device cuda --layouts llama,small --dtypes float32,bfloat16
  python -m fusedoptim.bench --layouts mypkg.models:make_model --algos adamw \\
      --option weight_decay=0.1 --option "betas=(0.9, 0.95)"

All implementations run in one process, each on its own copy of the same params and
grads. Steps are timed interleaved (one step of each implementation in turn, the order
rotating every run, a bandwidth probe among them) and the median over runs is reported,
so machine noise hits all alike. The ceiling is the best of a few large streaming ops on
the same device; the floor of a step is the bytes it must read plus write.
"""

from __future__ import annotations

import argparse
import ast
import gc
import json
import sys
import time
from dataclasses import asdict
from typing import Dict, List, Optional, Sequence, TextIO, Tuple

import torch

from .implementations import ALGOS, IMPL_NAMES, load_fusedoptim, resolve_impls
from .layouts import LAYOUTS, layout_shapes, numel_of
from .measure import BandwidthProbe, loadavg, machine_metadata
from .report import format_table, plot_png, summary_lines
from .runner import ParamSets, Row, plan_memory, run_case

DTYPES = ("float32", "bfloat16", "float16", "float64")
DEFAULT_ALGOS = ("sgd", "adam", "adamw")


class ProgressBar:
    """A one-line progress bar on a terminal; on anything else, one line per case."""

    def __init__(self, total: int, enabled: bool, stream: TextIO = sys.stderr):
        self.total, self.done = max(total, 1), 0
        self.stream = stream
        self.enabled = enabled
        self.live = enabled and stream.isatty()
        self.case = ""
        self.t0 = time.perf_counter()

    def start_case(self, case: str) -> None:
        self.case = case
        if self.enabled and not self.live:
            print(f"[{self.done * 100 // self.total:3d}%] {case}", file=self.stream, flush=True)

    def advance(self, n: int, label: str) -> None:
        self.done = min(self.total, self.done + n)
        if not self.live:
            return
        elapsed = time.perf_counter() - self.t0
        eta = elapsed / self.done * (self.total - self.done) if self.done else 0.0
        filled = self.done * 24 // self.total
        line = (f"\r[{'#' * filled}{'.' * (24 - filled)}] {self.done * 100 // self.total:3d}% "
                f"{elapsed:5.0f}s, ~{eta:.0f}s left | {self.case}: {label}")
        self.stream.write(line[:160].ljust(100))
        self.stream.flush()

    def close(self) -> None:
        if self.live:
            self.stream.write("\r" + " " * 160 + "\r")
            self.stream.flush()


def _csv(choices: Optional[Sequence[str]], all_value: Optional[Sequence[str]] = None):
    def parse(text: str) -> List[str]:
        items = [x.strip() for x in text.split(",") if x.strip()]
        if all_value is not None and items == ["all"]:
            return list(all_value)
        bad = [x for x in items if choices is not None and x not in choices]
        if bad:
            raise argparse.ArgumentTypeError(f"unknown {bad}; choose from {list(choices)}")
        return items
    return parse


def _option(text: str) -> Tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key.strip(), ast.literal_eval(value.strip())
    except (ValueError, SyntaxError):
        return key.strip(), value.strip()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fusedoptim.bench",
                                description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--layouts", type=_csv(None), default=["gpt2", "small"],
                   help=f"comma list of {', '.join(LAYOUTS)} or module:callable returning "
                        f"an nn.Module (default gpt2,small)")
    p.add_argument("--algos", type=_csv(list(ALGOS), list(ALGOS)), default=list(DEFAULT_ALGOS),
                   help=f"comma list of {', '.join(ALGOS)}, or all (default "
                        f"{','.join(DEFAULT_ALGOS)})")
    p.add_argument("--impls", type=_csv(IMPL_NAMES, IMPL_NAMES), default=list(IMPL_NAMES),
                   help=f"comma list of {', '.join(IMPL_NAMES)} (default all; unavailable "
                        f"ones are skipped with a note)")
    p.add_argument("--dtypes", type=_csv(DTYPES, DTYPES), default=["float32"],
                   help=f"param dtypes, comma list of {', '.join(DTYPES)} (default float32)")
    p.add_argument("--option", type=_option, action="append", default=[], metavar="KEY=VALUE",
                   help="constructor option for every implementation, e.g. weight_decay=0.1 "
                        "(repeatable; an implementation that rejects it shows an ERROR row)")
    p.add_argument("--fusedoptim-option", type=_option, action="append", default=[],
                   metavar="KEY=VALUE", help="constructor option for fusedoptim only")
    p.add_argument("--runs", type=int, default=5, help="timed steps per implementation (5)")
    p.add_argument("--warmup", type=int, default=2,
                   help="untimed steps first; the first allocates state (2)")
    p.add_argument("--threads", type=int, default=None,
                   help=f"torch.set_num_threads (default torch's: {torch.get_num_threads()})")
    p.add_argument("--cpu-capability", default=None,
                   help="force fusedoptim's CPU instruction set (scalar, avx2, avx512)")
    p.add_argument("--bandwidth-mb", type=int, default=None,
                   help="MiB per array of the bandwidth probe (default 256 CPU, 1024 CUDA; "
                        "0 skips the ceiling)")
    p.add_argument("--no-check", action="store_true",
                   help="skip comparing every implementation's final params with torch's")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory step")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--require-fusedoptim", action="store_true",
                   help="fail instead of benchmarking torch alone when fusedoptim is missing")
    p.add_argument("--json", metavar="PATH", help="write rows and metadata as JSON")
    p.add_argument("--plot", metavar="PATH", help="write a PNG bar chart (needs matplotlib)")
    return p


def _print_notes(skipped: List[Dict[str, str]], rows: Sequence[Row]) -> None:
    by_reason: Dict[Tuple[str, str], List[str]] = {}
    for s in skipped:
        by_reason.setdefault((s["impl"], s["reason"]), [])
        if s["algo"] not in by_reason[(s["impl"], s["reason"])]:
            by_reason[(s["impl"], s["reason"])].append(s["algo"])
    if by_reason:
        print("\nnot measured:")
        for (impl, reason), algos in by_reason.items():
            print(f"  {impl} ({', '.join(algos)}): {reason}")
    for r in rows:
        if r.step_paths and r.step_paths.get("reference"):
            print(f"NOTE: {r.layout}/{r.algo}/{r.dtype}/{r.impl}: "
                  f"{r.step_paths['reference']} params took the reference path")
        if r.shared_params and r.impl == "fusedoptim":
            print(f"NOTE: {r.layout}/{r.dtype}: all implementations stepped one shared set of "
                  f"params (memory); final params not compared")
        for w in r.warnings:
            print(f"warning ({r.layout}/{r.algo}/{r.dtype}/{r.impl}): {w}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    t_start = time.perf_counter()
    if args.runs < 1 or args.warmup < 1:
        print("--runs and --warmup must be >= 1", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"--device {args.device}: torch {torch.__version__} has no CUDA device here",
              file=sys.stderr)
        return 2
    if device.type not in ("cpu", "cuda"):
        print(f"--device {args.device}: only cpu and cuda are supported", file=sys.stderr)
        return 2
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    if args.threads:
        torch.set_num_threads(args.threads)
    options = dict(args.option)
    fusedoptim_options = dict(args.fusedoptim_option)

    fusedoptim_mod, fusedoptim_error = None, None
    impls = list(args.impls)
    if "fusedoptim" in impls:
        fusedoptim_mod, fusedoptim_error = load_fusedoptim(args.cpu_capability)
        if fusedoptim_mod is None:
            if args.require_fusedoptim:
                print(f"fusedoptim is not importable: {fusedoptim_error}", file=sys.stderr)
                return 1
            print(f"NOTE: fusedoptim is not importable ({fusedoptim_error}); "
                  f"benchmarking the others only.", file=sys.stderr)
    shapes_of: Dict[str, List[Tuple[int, ...]]] = {}
    for layout in args.layouts:
        try:
            shapes_of[layout] = layout_shapes(layout)
        except ValueError as e:
            print(f"--layouts: {e}", file=sys.stderr)
            return 2

    # Which implementations run which case; the rest are reported as not measured.
    plan = []
    skipped: List[Dict[str, str]] = []
    for layout in args.layouts:
        for dtype_name in args.dtypes:
            for algo_name in args.algos:
                algo = ALGOS[algo_name]
                factories, why_not = resolve_impls(impls, algo, device, options,
                                                   fusedoptim_options, fusedoptim_mod)
                plan.append((layout, dtype_name, algo, factories))
                skipped += [{"layout": layout, "algo": algo_name, "dtype": dtype_name,
                             "impl": impl, "reason": reason} for impl, reason in why_not.items()]

    meta = machine_metadata(device, fusedoptim_mod, fusedoptim_error)
    print(f"torch {meta['torch_version']} | {device}: {meta['device_name']} | CPU: "
          f"{meta['cpu_model']} ({' '.join(meta['cpu_flags'])}) | threads: {meta['threads']} | "
          f"runs: {args.runs} (median), warm-up: {args.warmup} | loadavg: "
          f"{meta['loadavg_before']}")
    if meta["fusedoptim"]:
        info = meta["fusedoptim"]
        print(f"fusedoptim {info['version']}: {info['file']} | extension: "
              f"{info['extension_available']} | CPU kernels: {info['cpu_capability']}")
    load = meta["loadavg_before"]
    if device.type == "cpu" and load and load[0] > 0.5 * (meta["cpu_count"] or 1):
        print(f"WARNING: load average {load[0]} on {meta['cpu_count']} CPUs: other work is "
              f"running, and torch's multithreaded per-tensor paths (fused=True on many small "
              f"tensors) slow down many times under contention. Compare ratios with care.")
    for layout, shapes in shapes_of.items():
        print(f"layout {layout}: {len(shapes):,} tensors, {numel_of(shapes):,} params")

    bandwidth: Dict[str, object] = {}
    probe = None
    mb = args.bandwidth_mb if args.bandwidth_mb is not None else (
        1024 if device.type == "cuda" else 256)
    if mb > 0:
        probe = BandwidthProbe(device, mb)
        bandwidth["before"] = probe.measure()
        print(f"bandwidth ceiling: {bandwidth['before']['ceiling_gbps']:.1f} GB/s "
              f"({bandwidth['before']['best_op']}, {mb} MiB arrays)")
    print(flush=True)

    total_steps = sum((args.warmup + args.runs) * len(f) for *_, f in plan)
    progress = ProgressBar(total_steps, enabled=not args.no_progress)
    rows: List[Row] = []
    try:
        for layout in args.layouts:
            shapes = shapes_of[layout]
            for dtype_name in args.dtypes:
                dtype = getattr(torch, dtype_name)
                cases = [c for c in plan if c[0] == layout and c[1] == dtype_name and c[3]]
                if not cases:
                    continue
                max_impls = max(len(c[3]) for c in cases)
                max_states = max(c[2].num_states for c in cases)
                shared, why = plan_memory(numel_of(shapes), dtype, device, max_impls, max_states)
                if shared is None:
                    print(f"{layout}/{dtype_name}: skipped, {why}")
                    skipped += [{"layout": layout, "algo": c[2].name, "dtype": dtype_name,
                                 "impl": impl, "reason": why} for c in cases for impl in c[3]]
                    progress.advance(sum((args.warmup + args.runs) * len(c[3]) for c in cases),
                                     "skipped")
                    continue
                if why:
                    print(f"{layout}/{dtype_name}: {why}")
                progress.start_case(f"{layout} {dtype_name}: making params")
                param_sets = ParamSets(shapes, dtype, device, shared)
                for _, _, algo, factories in cases:
                    progress.start_case(f"{layout} {algo.name} {dtype_name}")
                    rows += run_case(layout, shapes, algo, dtype, factories, param_sets,
                                     args.runs, args.warmup, probe, check=not args.no_check,
                                     measure_memory=not args.no_memory,
                                     progress=progress.advance)
                del param_sets
                gc.collect()
    finally:
        progress.close()

    if probe is not None:
        bandwidth["after"] = probe.measure()
        probe.close()
    print(format_table(rows))
    if probe is not None:
        print(f"\nbandwidth ceiling before / after the sweep: "
              f"{bandwidth['before']['ceiling_gbps']:.1f} / "
              f"{bandwidth['after']['ceiling_gbps']:.1f} GB/s; '% ceil' uses the probe "
              f"timed inside each case's rotation")
    summary = summary_lines(rows)
    if summary:
        print("\nfusedoptim vs the fastest other implementation:")
        for line in summary:
            print("  " + line)
    _print_notes(skipped, rows)
    wall = time.perf_counter() - t_start
    meta["loadavg_after"] = loadavg()
    print(f"\ntotal wall time: {wall:.1f} s | loadavg before: {meta['loadavg_before']}, "
          f"after: {meta['loadavg_after']}")

    if args.json:
        meta.update(bandwidth=bandwidth or None, runs=args.runs, warmup=args.warmup,
                    dtypes=args.dtypes, options={k: repr(v) for k, v in options.items()},
                    fusedoptim_options={k: repr(v) for k, v in fusedoptim_options.items()},
                    wall_time_s=round(wall, 2))
        with open(args.json, "w") as f:
            json.dump({"metadata": meta, "rows": [asdict(r) for r in rows],
                       "skipped": skipped}, f, indent=2)
        print(f"wrote {args.json}")
    if args.plot:
        try:
            plot_png(rows, args.plot, title=str(meta["device_name"] or ""))
        except RuntimeError as e:
            print(f"--plot: {e}", file=sys.stderr)
            return 1
        print(f"wrote {args.plot}")
    return 0
