#!/usr/bin/env python
"""CPU benchmark: fusedoptim vs torch.optim (for-loop, foreach, fused).

Run:  python benchmarks/bench_cpu.py [--layouts gpt2,small] [--algos sgd,adam,adamw]
                                     [--dtype float32|bfloat16] [--runs 7] [--warmup 2]
                                     [--threads N] [--json PATH]

All implementations run in the same process, each on its own copy of the same
parameters and gradients. Timing is interleaved: for every run r, one step() of
each implementation is timed in turn (rotating the order each run), so machine
noise hits all of them alike; the median over runs is reported.

Everything except ``main()``'s argument parsing lives in importable functions so
that the module can later become ``python -m fusedoptim.bench``.
Dependencies: torch and the standard library only.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

# --------------------------------------------------------------------------------------
# Layouts
# --------------------------------------------------------------------------------------

GPT2_D = 768
GPT2_LAYERS = 12
GPT2_VOCAB = 50257
GPT2_CTX = 1024


def gpt2_shapes(n_layer: int = GPT2_LAYERS, d: int = GPT2_D) -> List[Tuple[int, ...]]:
    """Parameter shapes of GPT-2 small (12 blocks, d=768) with a quarter of the vocabulary
    embedding (50257//4 x 768), the position embedding (1024 x 768) and the final layernorm."""
    shapes: List[Tuple[int, ...]] = [(GPT2_VOCAB // 4, d), (GPT2_CTX, d)]  # wte/4, wpe
    for _ in range(n_layer):
        shapes += [
            (d,), (d,),                  # ln_1 weight, bias
            (d, 3 * d), (3 * d,),        # attn.c_attn W, b
            (d, d), (d,),                # attn.c_proj W, b
            (d,), (d,),                  # ln_2 weight, bias
            (d, 4 * d), (4 * d,),        # mlp.c_fc W, b
            (4 * d, d), (d,),            # mlp.c_proj W, b
        ]
    shapes += [(d,), (d,)]  # ln_f weight, bias
    return shapes


def small_shapes(n: int = 10_000, numel: int = 1_000) -> List[Tuple[int, ...]]:
    """Many small tensors: stresses per-parameter overhead."""
    return [(numel,)] * n


LAYOUTS: Dict[str, Callable[[], List[Tuple[int, ...]]]] = {
    "gpt2": gpt2_shapes,
    "small": small_shapes,
}


def numel_of(shapes: Sequence[Tuple[int, ...]]) -> int:
    total = 0
    for s in shapes:
        n = 1
        for d in s:
            n *= d
        total += n
    return total


def make_base_tensors(shapes: Sequence[Tuple[int, ...]], dtype: torch.dtype, seed: int = 0
                      ) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
    """Random parameter values and gradients (plain tensors, no autograd)."""
    g = torch.Generator().manual_seed(seed)
    values, grads = [], []
    for s in shapes:
        values.append((torch.randn(s, generator=g) * 0.02).to(dtype))
        grads.append((torch.randn(s, generator=g) * 1e-2).to(dtype))
    return values, grads


def clone_params(values: Sequence[torch.Tensor], grads: Sequence[torch.Tensor]
                 ) -> List[torch.Tensor]:
    """Fresh leaf tensors (requires_grad=True) with .grad set, same values as the base."""
    params = []
    for v, gr in zip(values, grads):
        p = v.detach().clone().requires_grad_(True)
        p.grad = gr.detach().clone()
        params.append(p)
    return params


class ParamSets:
    """One copy of the parameters (+ .grad) per implementation, all with the base values.
    Allocating ~3 GB of fresh memory is slow on some VMs (first-touch page faults), so the
    copies are made once per layout and `reset()` (in-place copy from the base) between
    algorithms instead of re-allocated."""

    def __init__(self, shapes: Sequence[Tuple[int, ...]], dtype: torch.dtype,
                 impls: Sequence[str], seed: int = 0):
        self.shapes = list(shapes)
        self.dtype = dtype
        self.values, self.grads = make_base_tensors(shapes, dtype, seed)
        self.params: Dict[str, List[torch.Tensor]] = {
            name: clone_params(self.values, self.grads) for name in impls}

    def reset(self) -> None:
        with torch.no_grad():
            for params in self.params.values():
                for p, v, g in zip(params, self.values, self.grads):
                    p.copy_(v)
                    if p.grad is None or p.grad.shape != g.shape or p.grad.dtype != g.dtype:
                        p.grad = g.clone()
                    else:
                        p.grad.copy_(g)


# --------------------------------------------------------------------------------------
# Algorithms and implementations
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Algo:
    name: str
    cls_name: str                 # class name in torch.optim / fusedoptim
    kwargs: Dict[str, float]
    bytes_per_fp32_elem: int      # minimum memory traffic per element per step (fp32)
    torch_impls: Tuple[str, ...] = ("torch.for-loop", "torch.foreach")  # what torch offers


_ALL_TORCH = ("torch.for-loop", "torch.foreach", "torch.fused")
# Minimum traffic: every param, grad and state element read once and written once (the
# grad only read), 4 B each in fp32.
ALGOS: Dict[str, Algo] = {
    "sgd": Algo("sgd", "SGD", {"lr": 1e-3, "momentum": 0.9}, 20, _ALL_TORCH),  # p g buf; p buf
    "adam": Algo("adam", "Adam", {"lr": 1e-3}, 28, _ALL_TORCH),  # p g m v; p m v
    "adamw": Algo("adamw", "AdamW", {"lr": 1e-3, "weight_decay": 1e-2}, 28, _ALL_TORCH),
    "adagrad": Algo("adagrad", "Adagrad", {"lr": 1e-2}, 20, _ALL_TORCH),  # p g sum; p sum
    "adadelta": Algo("adadelta", "Adadelta", {"lr": 1.0}, 28),  # p g sq acc; p sq acc
    "adamax": Algo("adamax", "Adamax", {"lr": 2e-3}, 28),  # p g m inf; p m inf
    "asgd": Algo("asgd", "ASGD", {"lr": 1e-2}, 20),  # p g ax; p ax
    "nadam": Algo("nadam", "NAdam", {"lr": 2e-3}, 28),  # p g m v; p m v
    "radam": Algo("radam", "RAdam", {"lr": 1e-3}, 28),  # p g m v; p m v
    "rmsprop": Algo("rmsprop", "RMSprop", {"lr": 1e-2}, 20),  # p g sq; p sq
    "rprop": Algo("rprop", "Rprop", {"lr": 1e-2}, 28),  # p g prev step; p prev step
    # Not in torch.optim: the comparison is plain torch ops, one param at a time (the
    # formulas of fusedoptim's docstrings, fusedoptim/_reference.py).
    "lion": Algo("lion", "Lion", {"lr": 1e-4, "weight_decay": 1e-2}, 20, ("torch.for-loop",)),  # p g m; p m
    # LAMB's floor counts one pass (p g m v; p m v); the per-tensor norms make ours two.
    "lamb": Algo("lamb", "LAMB", {"lr": 1e-3}, 28, ("torch.for-loop",)),
}

IMPL_NAMES = ["fusedoptim", "torch.for-loop", "torch.foreach", "torch.fused"]
TORCH_IMPLS = {
    "torch.for-loop": {"foreach": False},
    "torch.foreach": {"foreach": True},
    "torch.fused": {"fused": True},
}


class PlainTorchOptimizer(torch.optim.Optimizer):
    """LAMB or Lion in plain torch ops, one param at a time: what a user without fusedoptim
    would run (torch.optim has neither)."""

    def __init__(self, params, algo: Algo):
        import fusedoptim
        self._fused_cls = getattr(fusedoptim, algo.cls_name)
        probe = self._fused_cls([torch.zeros(1, requires_grad=True)], **algo.kwargs)
        super().__init__(params, dict(probe.defaults))
        self._algo = algo

    @torch.no_grad()
    def step(self, closure=None):
        from fusedoptim import _reference
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            beta1, beta2 = group["betas"]
            states = [self.state[p] for p in params]
            if self._algo.cls_name == "Lion":
                _reference.lion(params, states, lr=group["lr"], beta1=beta1, beta2=beta2,
                                weight_decay=group["weight_decay"], maximize=False)
            else:
                _reference.lamb(params, states, lr=group["lr"], beta1=beta1, beta2=beta2,
                                eps=group["eps"], weight_decay=group["weight_decay"],
                                bias_correction=True, grad_averaging=True,
                                decoupled_weight_decay=True, always_adapt=False, maximize=False,
                                clip=1.0, step_dtype=torch.float32)


def bytes_per_step(algo: Algo, numel: int, dtype: torch.dtype) -> int:
    elem = torch.empty((), dtype=dtype).element_size()
    return numel * algo.bytes_per_fp32_elem * elem // 4


def load_fusedoptim(cpu_capability: Optional[str] = None):
    """Import fusedoptim; return (module or None, reason-if-None)."""
    try:
        import fusedoptim  # noqa: F401
    except Exception as e:  # ImportError, or a broken extension
        return None, f"{type(e).__name__}: {e}"
    if cpu_capability:
        fusedoptim.set_cpu_capability(cpu_capability)
    return fusedoptim, None


def make_factory(impl: str, algo: Algo, fusedoptim_mod=None
                 ) -> Callable[[List[torch.Tensor]], torch.optim.Optimizer]:
    if impl == "fusedoptim":
        if fusedoptim_mod is None:
            raise RuntimeError("fusedoptim is not importable")
        cls = getattr(fusedoptim_mod, algo.cls_name)
        return lambda params: cls(params, **algo.kwargs)
    if not hasattr(torch.optim, algo.cls_name):
        return lambda params: PlainTorchOptimizer(params, algo)
    cls = getattr(torch.optim, algo.cls_name)
    extra = TORCH_IMPLS[impl]
    return lambda params: cls(params, **algo.kwargs, **extra)


# --------------------------------------------------------------------------------------
# Memory (optional): peak RSS growth during one step, via /proc (Linux only)
# --------------------------------------------------------------------------------------


def _proc_status_kb(key: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Writing 5 to /proc/self/clear_refs resets VmHWM (peak RSS) to the current RSS."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_growth_mb(fn: Callable[[], None]) -> Optional[float]:
    """Run fn(); return (peak RSS during fn) - (RSS before fn) in MiB, or None if unsupported.
    Approximate: temporaries served from memory the allocator already holds are not seen."""
    if not _reset_peak_rss():
        fn()
        return None
    before = _proc_status_kb("VmRSS")
    fn()
    peak = _proc_status_kb("VmHWM")
    if before is None or peak is None:
        return None
    return max(0, peak - before) / 1024.0


# --------------------------------------------------------------------------------------
# Streaming-bandwidth ceiling
# --------------------------------------------------------------------------------------


class BandwidthProbe:
    """Large (beyond-cache) multi-threaded torch ops used as the streaming-bandwidth ceiling.
    Byte counts follow the STREAM convention (write-allocate traffic not counted)."""

    def __init__(self, mb_per_array: int = 256):
        n = mb_per_array * (1 << 20) // 4
        self.mb_per_array = mb_per_array
        self.a = torch.ones(n, dtype=torch.float32)
        self.b = torch.full((n,), 2.0, dtype=torch.float32)
        self.c = torch.zeros(n, dtype=torch.float32)
        self.nbytes = n * 4
        a, b, c = self.a, self.b, self.c
        # name -> (fn, number of arrays streamed)
        self.ops: Dict[str, Tuple[Callable[[], object], int]] = {
            "copy c=a": (lambda: c.copy_(a), 2),
            "add c=a+b": (lambda: torch.add(a, b, out=c), 3),
            "add_ a+=b": (lambda: a.add_(b, alpha=1e-30), 3),
            "addcmul_ a+=b*c": (lambda: a.addcmul_(b, c, value=1e-30), 4),
        }
        self.best_op = "add_ a+=b"

    def time_op(self, name: str) -> float:
        """One call of op `name`; returns GB/s (1e9 B/s)."""
        fn, narrays = self.ops[name]
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        return narrays * self.nbytes / dt / 1e9

    def measure(self, reps: int = 7) -> Dict[str, object]:
        """Each op: one warm-up call, `reps` timed calls, median. Ceiling = best op median;
        that op becomes `best_op` (the one timed inside each case)."""
        results = {}
        for name in self.ops:
            self.time_op(name)
            results[name] = round(statistics.median(self.time_op(name) for _ in range(reps)), 2)
        self.best_op = max(results, key=results.get)
        return {"ceiling_gbps": results[self.best_op], "best_op": self.best_op,
                "ops_gbps": results, "mb_per_array": self.mb_per_array, "reps": reps}

    def close(self) -> None:
        del self.a, self.b, self.c, self.ops
        gc.collect()


def measure_bandwidth(mb_per_array: int = 256, reps: int = 7) -> Dict[str, object]:
    """Stand-alone ceiling measurement (allocates and frees the arrays)."""
    probe = BandwidthProbe(mb_per_array)
    try:
        return probe.measure(reps)
    finally:
        probe.close()


# --------------------------------------------------------------------------------------
# One benchmark case (layout x algo x dtype)
# --------------------------------------------------------------------------------------


@dataclass
class Row:
    layout: str
    algo: str
    dtype: str
    impl: str
    n_tensors: int
    numel: int
    bytes_per_step: int
    runs: int
    ceiling_gbps: Optional[float] = None             # bandwidth probe, timed in this case
    median_ms: Optional[float] = None
    min_ms: Optional[float] = None
    max_ms: Optional[float] = None
    gbps: Optional[float] = None
    pct_ceiling: Optional[float] = None
    speedup_vs_best_torch: Optional[float] = None   # best torch median / this median
    peak_extra_mb: Optional[float] = None
    max_abs_diff_vs_loop: Optional[float] = None
    step_paths: Optional[Dict[str, int]] = None      # fusedoptim: last_step_paths
    warnings: List[str] = field(default_factory=list)
    error: Optional[str] = None
    times_ms: List[float] = field(default_factory=list)


def _timed_step(opt) -> float:
    t0 = time.perf_counter()
    opt.step()
    return time.perf_counter() - t0


def run_case(layout: str, algo_name: str, dtype: torch.dtype, impls: Sequence[str],
             runs: int, warmup: int, probe: Optional[BandwidthProbe] = None,
             fusedoptim_mod=None,
             check: bool = True, measure_memory: bool = True, seed: int = 0,
             param_sets: Optional[ParamSets] = None,
             log: Callable[[str], None] = lambda s: None) -> List[Row]:
    """Benchmark one (layout, algo, dtype) case; returns one Row per implementation.
    `param_sets` (optional) are reused parameter copies for this layout/dtype; they are
    reset to the base values first. Without it, fresh copies are made."""
    algo = ALGOS[algo_name]
    impls = [name for name in impls if not name.startswith("torch.") or name in algo.torch_impls]
    shapes = LAYOUTS[layout]()
    numel = numel_of(shapes)
    nbytes = bytes_per_step(algo, numel, dtype)
    dtype_name = str(dtype).replace("torch.", "")
    rows = {name: Row(layout, algo_name, dtype_name, name, len(shapes), numel, nbytes, runs)
            for name in impls}

    if param_sets is None:
        param_sets = ParamSets(shapes, dtype, impls, seed)
    else:
        param_sets.reset()
    opts: Dict[str, object] = {}
    params_of: Dict[str, List[torch.Tensor]] = {}
    for name in impls:
        try:
            params = param_sets.params[name]
            with warnings.catch_warnings(record=True) as ws:
                warnings.simplefilter("always")
                opts[name] = make_factory(name, algo, fusedoptim_mod)(params)
            rows[name].warnings += [str(w.message) for w in ws]
            params_of[name] = params
        except Exception as e:
            rows[name].error = f"{type(e).__name__}: {e}"
            log(f"  {name}: construction failed: {rows[name].error}")
    del param_sets

    def _drop(name: str, e: Exception) -> None:
        rows[name].error = f"{type(e).__name__}: {e}"
        log(f"  {name}: step failed: {rows[name].error}")
        opts.pop(name, None)
        params_of.pop(name, None)

    # Warm-up (the first step allocates optimizer state). Peak RSS growth is measured on
    # the last warm-up step (state already allocated), so it only sees step temporaries.
    gc.collect()
    for w in range(warmup):
        for name in list(opts):
            opt = opts[name]
            try:
                with warnings.catch_warnings(record=True) as ws:
                    warnings.simplefilter("always")
                    if measure_memory and w == warmup - 1 and w >= 1:
                        rows[name].peak_extra_mb = peak_rss_growth_mb(opt.step)
                    else:
                        opt.step()
                rows[name].warnings += [str(x.message) for x in ws]
            except Exception as e:
                _drop(name, e)

    # Timed, interleaved runs; order rotates each run. The bandwidth probe (one large
    # streaming op) takes part in the rotation, so the ceiling sees the same noise.
    PROBE = "<bandwidth probe>"
    order = list(opts) + ([PROBE] if probe is not None else [])
    probe_gbps: List[float] = []
    if probe is not None:
        probe.time_op(probe.best_op)
    gc.collect()
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for r in range(runs if order else 0):
            k = r % len(order)
            for name in order[k:] + order[:k]:
                if name == PROBE:
                    probe_gbps.append(probe.time_op(probe.best_op))
                    continue
                if name not in opts:
                    continue
                try:
                    rows[name].times_ms.append(_timed_step(opts[name]) * 1e3)
                except Exception as e:
                    _drop(name, e)
    finally:
        if gc_was_enabled:
            gc.enable()

    for name, opt in opts.items():
        paths = getattr(opt, "last_step_paths", None)
        if paths is not None:
            rows[name].step_paths = dict(paths)

    # Sanity check: every surviving implementation took warmup+runs steps from the same
    # start, so its parameters should match the for-loop reference closely.
    if check and "torch.for-loop" in params_of:
        ref = params_of["torch.for-loop"]
        for name, params in params_of.items():
            d = 0.0
            with torch.no_grad():
                for p, q in zip(params, ref):
                    d = max(d, (p.float() - q.float()).abs().max().item())
            rows[name].max_abs_diff_vs_loop = d

    # Statistics.
    ceiling_gbps = statistics.median(probe_gbps) if probe_gbps else None
    for row in rows.values():
        row.ceiling_gbps = ceiling_gbps
        if row.times_ms and row.error is None:
            row.median_ms = statistics.median(row.times_ms)
            row.min_ms = min(row.times_ms)
            row.max_ms = max(row.times_ms)
            row.gbps = nbytes / (row.median_ms / 1e3) / 1e9
            if ceiling_gbps:
                row.pct_ceiling = 100.0 * row.gbps / ceiling_gbps
    torch_meds = [r.median_ms for n, r in rows.items()
                  if n.startswith("torch.") and r.median_ms is not None]
    if torch_meds:
        best = min(torch_meds)
        for row in rows.values():
            if row.median_ms:
                row.speedup_vs_best_torch = best / row.median_ms

    del opts, params_of
    gc.collect()
    return [rows[n] for n in impls]


# --------------------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------------------


def _fmt(v, spec: str, none: str = "-") -> str:
    return none if v is None else format(v, spec)


def format_table(rows: Sequence[Row]) -> str:
    header = ["layout", "algo", "dtype", "impl", "median ms", "min ms", "GB/s",
              "% ceil", "vs best torch", "peak+ MB", "max|d| vs loop", "paths f/r"]
    lines: List[List[str]] = []
    for r in rows:
        paths = "-"
        if r.step_paths is not None:
            paths = f"{r.step_paths.get('fused', '?')}/{r.step_paths.get('reference', '?')}"
        if r.error:
            lines.append([r.layout, r.algo, r.dtype, r.impl, "ERROR", "", "", "", "", "", "",
                          r.error[:60]])
            continue
        lines.append([
            r.layout, r.algo, r.dtype, r.impl,
            _fmt(r.median_ms, ".2f"), _fmt(r.min_ms, ".2f"), _fmt(r.gbps, ".1f"),
            _fmt(r.pct_ceiling, ".0f"),
            _fmt(r.speedup_vs_best_torch, ".2f") + ("x" if r.speedup_vs_best_torch else ""),
            _fmt(r.peak_extra_mb, ".0f"), _fmt(r.max_abs_diff_vs_loop, ".1e"), paths,
        ])
    widths = [max(len(h), *(len(l[i]) for l in lines)) if lines else len(h)
              for i, h in enumerate(header)]
    left = {0, 1, 2, 3}

    def render(cells):
        return "  ".join(c.ljust(w) if i in left else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    out = [render(header), render(["-" * w for w in widths])]
    prev = None
    for r, l in zip(rows, lines):
        key = (r.layout, r.algo, r.dtype)
        if prev is not None and key != prev:
            out.append("")
        prev = key
        out.append(render(l))
    return "\n".join(out)


def summary_lines(rows: Sequence[Row]) -> List[str]:
    """One line per case: fusedoptim speedup vs the fastest torch implementation."""
    out = []
    cases: Dict[Tuple[str, str, str], List[Row]] = {}
    for r in rows:
        cases.setdefault((r.layout, r.algo, r.dtype), []).append(r)
    for (layout, algo, dtype), rs in cases.items():
        fo = next((r for r in rs if r.impl == "fusedoptim" and r.median_ms), None)
        torch_rows = [r for r in rs if r.impl.startswith("torch.") and r.median_ms]
        if fo is None or not torch_rows:
            continue
        best = min(torch_rows, key=lambda r: r.median_ms)
        out.append(f"{layout:6s} {algo:8s} {dtype:8s} fusedoptim {fo.median_ms:8.2f} ms vs "
                   f"{best.impl:14s} {best.median_ms:8.2f} ms -> "
                   f"{best.median_ms / fo.median_ms:.2f}x")
    return out


def _bw_line(m: Dict[str, object]) -> str:
    ops = ", ".join(f"{k}: {v:.1f}" for k, v in m["ops_gbps"].items())
    return (f"{m['ceiling_gbps']:.1f} GB/s  ({ops}; {m['mb_per_array']} MiB/array, "
            f"median of {m['reps']})")


def _loadavg() -> Optional[List[float]]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _cpu_model() -> Optional[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _cpu_flags() -> List[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = line.split(":", 1)[1].split()
                    return sorted(f for f in flags if f in ("avx2", "fma", "avx512f", "avx512bw",
                                                            "avx512vl", "avx512_bf16"))
    except OSError:
        pass
    return []


def _git(*args: str) -> Optional[str]:
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(["git", "-C", here, *args], capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def collect_metadata(fusedoptim_mod, fusedoptim_error: Optional[str], threads: int
                     ) -> Dict[str, object]:
    meta: Dict[str, object] = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "platform": platform.platform(),
        "cpu_model": _cpu_model(),
        "cpu_flags": _cpu_flags(),
        "cpu_count": os.cpu_count(),
        "threads": threads,
        "loadavg_before": _loadavg(),
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": None,
        "argv": sys.argv,
        "fusedoptim": None,
    }
    status = _git("status", "--porcelain")
    if status is not None:
        meta["git_dirty"] = bool(status)
    if fusedoptim_mod is not None:
        info: Dict[str, object] = {"file": getattr(fusedoptim_mod, "__file__", None),
                                   "version": getattr(fusedoptim_mod, "__version__", None)}
        for fn in ("cpu_capability", "available_cpu_capabilities",
                   "compiled_cpu_capabilities", "extension_available"):
            try:
                info[fn] = getattr(fusedoptim_mod, fn)()
            except Exception as e:
                info[fn] = f"error: {type(e).__name__}: {e}"
        meta["fusedoptim"] = info
    else:
        meta["fusedoptim_import_error"] = fusedoptim_error
    return meta


# --------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------


def _csv(choices: Sequence[str]):
    def parse(s: str) -> List[str]:
        items = [x.strip() for x in s.split(",") if x.strip()]
        bad = [x for x in items if x not in choices]
        if bad:
            raise argparse.ArgumentTypeError(f"unknown {bad}; choose from {list(choices)}")
        return items
    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layouts", type=_csv(list(LAYOUTS)), default=list(LAYOUTS),
                   help="comma list from %(default)s")
    p.add_argument("--algos", type=_csv(list(ALGOS)), default=list(ALGOS),
                   help="comma list from %(default)s")
    p.add_argument("--impls", type=_csv(IMPL_NAMES), default=list(IMPL_NAMES),
                   help="comma list from %(default)s")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    p.add_argument("--runs", type=int, default=7, help="timed steps per implementation")
    p.add_argument("--warmup", type=int, default=2,
                   help="untimed steps per implementation first (first allocates state)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads (default: torch's, %d here)"
                   % torch.get_num_threads())
    p.add_argument("--cpu-capability", default=None,
                   help="force fusedoptim ISA (fusedoptim.set_cpu_capability)")
    p.add_argument("--bandwidth-mb", type=int, default=256,
                   help="MiB per array for the bandwidth ceiling (0 = skip)")
    p.add_argument("--no-check", action="store_true",
                   help="skip comparing final params against the torch for-loop result")
    p.add_argument("--no-memory", action="store_true", help="skip peak-RSS measurement")
    p.add_argument("--require-fusedoptim", action="store_true",
                   help="fail instead of skipping when fusedoptim is not importable")
    p.add_argument("--json", metavar="PATH", default=None, help="write rows + metadata")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    t_start = time.perf_counter()
    if args.runs < 1 or args.warmup < 1:
        print("--runs and --warmup must be >= 1", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    dtype = getattr(torch, args.dtype)

    def log(s: str) -> None:
        print(s, file=sys.stderr, flush=True)

    impls = list(args.impls)
    fusedoptim_mod, fo_err = (None, None)
    if "fusedoptim" in impls:
        fusedoptim_mod, fo_err = load_fusedoptim(args.cpu_capability)
        if fusedoptim_mod is None:
            if args.require_fusedoptim:
                log(f"fusedoptim not importable: {fo_err}")
                return 1
            log(f"NOTE: fusedoptim not importable ({fo_err}); benchmarking torch only.")
            impls.remove("fusedoptim")
    meta = collect_metadata(fusedoptim_mod, fo_err, threads)

    print(f"torch {meta['torch_version']} | CPU: {meta['cpu_model']} "
          f"({' '.join(meta['cpu_flags'])}) | threads: {threads} | dtype: {args.dtype} | "
          f"runs: {args.runs} (median), warmup: {args.warmup} | "
          f"loadavg: {meta['loadavg_before']}")
    if meta["fusedoptim"]:
        fo = meta["fusedoptim"]
        print(f"fusedoptim: {fo['file']} | extension_available: {fo['extension_available']} | "
              f"cpu_capability: {fo['cpu_capability']} | available: "
              f"{fo['available_cpu_capabilities']}")
    for layout in args.layouts:
        shapes = LAYOUTS[layout]()
        print(f"layout {layout}: {len(shapes):,} tensors, {numel_of(shapes):,} params")

    bw: Dict[str, object] = {}
    probe = None
    if args.bandwidth_mb > 0:
        probe = BandwidthProbe(args.bandwidth_mb)
        bw["before"] = probe.measure()
        print("bandwidth ceiling before sweep: " + _bw_line(bw["before"]))
    print(flush=True)

    rows: List[Row] = []
    for layout in args.layouts:
        t0 = time.perf_counter()
        param_sets = ParamSets(LAYOUTS[layout](), dtype, impls)
        log(f"[{layout}] {len(impls)} parameter copies made in "
            f"{time.perf_counter() - t0:.1f} s")
        for algo in args.algos:
            t0 = time.perf_counter()
            rows += run_case(layout, algo, dtype, impls, args.runs, args.warmup, probe,
                             fusedoptim_mod, check=not args.no_check,
                             measure_memory=not args.no_memory, param_sets=param_sets,
                             log=log)
            log(f"[{layout} / {algo}] done in {time.perf_counter() - t0:.1f} s")
        del param_sets
        gc.collect()

    if probe is not None:
        bw["after"] = probe.measure()
        probe.close()

    print(format_table(rows))
    if probe is not None:
        print("\nbandwidth ceiling before sweep: " + _bw_line(bw["before"]))
        print("bandwidth ceiling after sweep:  " + _bw_line(bw["after"]))
        print(f"per-case ceiling (used for '% ceil'; probe op {bw['before']['best_op']!r} "
              f"timed once per run inside the interleaved loop, median):")
        seen = set()
        for r in rows:
            key = (r.layout, r.algo, r.dtype)
            if key not in seen and r.ceiling_gbps:
                seen.add(key)
                print(f"  {r.layout:6s} {r.algo:8s} {r.dtype:8s} {r.ceiling_gbps:6.1f} GB/s")
    summ = summary_lines(rows)
    if summ:
        print("\nfusedoptim speedup vs fastest torch implementation:")
        for s in summ:
            print("  " + s)
    for r in rows:
        if r.step_paths and r.step_paths.get("reference"):
            print(f"WARNING: {r.layout}/{r.algo}/{r.impl}: {r.step_paths['reference']} params "
                  f"took the reference path")
        for w in sorted(set(r.warnings)):
            print(f"warning ({r.layout}/{r.algo}/{r.impl}): {w}")
    wall = time.perf_counter() - t_start
    meta["loadavg_after"] = _loadavg()
    print(f"\ntotal wall time: {wall:.1f} s | loadavg before: {meta['loadavg_before']}, "
          f"after: {meta['loadavg_after']} (1/5/15 min; this run itself adds ~{threads})")

    if args.json:
        meta["bandwidth"] = bw or None
        meta["runs"] = args.runs
        meta["warmup"] = args.warmup
        meta["dtype"] = args.dtype
        meta["wall_time_s"] = round(wall, 2)
        with open(args.json, "w") as f:
            json.dump({"metadata": meta, "rows": [asdict(r) for r in rows]}, f, indent=2)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
