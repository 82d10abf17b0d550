"""One benchmark case (layout x algo x dtype): every implementation steps its own copy of
the same params and grads; steps are timed interleaved, so machine noise hits all alike."""

from __future__ import annotations

import gc
import statistics
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from .implementations import Algo, Factory
from .layouts import numel_of
from .measure import BandwidthProbe, available_bytes, peak_extra_mb, synchronizer

Progress = Callable[[int, str], None]   # (steps just done, what is running)


@dataclass
class Row:
    layout: str
    algo: str
    dtype: str
    impl: str
    device: str
    n_tensors: int
    numel: int
    bytes_per_step: int                 # the floor: bytes read plus written per step
    runs: int
    shared_params: bool = False         # all implementations stepped one copy (memory)
    ceiling_gbps: Optional[float] = None
    median_ms: Optional[float] = None
    min_ms: Optional[float] = None
    max_ms: Optional[float] = None
    gbps: Optional[float] = None
    pct_ceiling: Optional[float] = None
    speedup_vs_fastest_other: Optional[float] = None  # fastest other median / this median
    peak_extra_mb: Optional[float] = None
    max_abs_diff: Optional[float] = None              # vs `diff_reference`'s params
    diff_reference: Optional[str] = None
    step_paths: Optional[Dict[str, int]] = None       # fusedoptim: last_step_paths
    warnings: List[str] = field(default_factory=list)
    error: Optional[str] = None
    times_ms: List[float] = field(default_factory=list)


def bytes_per_step(algo: Algo, numel: int, dtype: torch.dtype) -> int:
    elem = torch.empty((), dtype=dtype).element_size()
    return numel * algo.bytes_per_fp32_elem * elem // 4


# NOTE: [Parameter copies]
# Every implementation steps its own copy of the same params and grads, so the final
# params can be compared (a sanity check that each ran the algorithm it claims) and no
# implementation sees another's cache state. Copies are made once per layout and reset
# in place between algorithms: fresh multi-GB allocations are slow on some VMs (page
# faults). When the copies cannot fit (llama on a small GPU or CPU), all implementations
# step one shared set instead: the timings stay valid (a step's cost does not depend on
# the values) but the comparison of final params is skipped.

def plan_memory(numel: int, dtype: torch.dtype, device: torch.device, num_impls: int,
                max_states: int) -> Tuple[Optional[bool], str]:
    """(shared?, explanation): False if separate copies fit in 80% of the free memory,
    True if only a shared set does, None if not even that."""
    tensor_bytes = numel * torch.empty((), dtype=dtype).element_size()
    free = available_bytes(device)
    # base values + grads, per implementation params + grads + states, and two
    # tensor-sized temporaries for torch's foreach paths.
    separate = tensor_bytes * (2 + num_impls * (2 + max_states) + 2)
    shared = tensor_bytes * (2 + num_impls * max_states + 2)
    if free is None or separate <= 0.8 * free:
        return False, ""
    gib = 2.0**30
    if shared <= 0.8 * free:
        return True, (f"separate copies need {separate / gib:.1f} GiB, {free / gib:.1f} GiB "
                      f"free: all implementations step one shared set of params")
    return None, (f"needs {shared / gib:.1f} GiB even with shared params, "
                  f"{free / gib:.1f} GiB free on {device}")


class ParamSets:
    """The parameter copies of one layout, made on first use per implementation."""

    def __init__(self, shapes: Sequence[Tuple[int, ...]], dtype: torch.dtype,
                 device: torch.device, shared: bool, seed: int = 0):
        self.dtype, self.device, self.shared = dtype, device, shared
        g = torch.Generator(device=device).manual_seed(seed)
        self.values, self.grads = [], []
        for s in shapes:
            self.values.append((torch.randn(s, generator=g, device=device) * 0.02).to(dtype))
            self.grads.append((torch.randn(s, generator=g, device=device) * 1e-2).to(dtype))
        self._params: Dict[str, List[torch.Tensor]] = {}
        if shared:
            self._shared_params = self._leaves(move=True)

    def _leaves(self, move: bool = False) -> List[torch.Tensor]:
        params = []
        for v, g in zip(self.values, self.grads):
            p = (v if move else v.clone()).requires_grad_(True)
            p.grad = g if move else g.clone()
            params.append(p)
        if move:
            self.values, self.grads = [], []
        return params

    def params(self, impl: str) -> List[torch.Tensor]:
        if self.shared:
            return self._shared_params
        if impl not in self._params:
            self._params[impl] = self._leaves()
        return self._params[impl]

    def reset(self) -> None:
        """Back to the initial values (separate copies only; shared params drift, which
        does not change what a step costs)."""
        with torch.no_grad():
            for params in self._params.values():
                for p, v, g in zip(params, self.values, self.grads):
                    p.copy_(v)
                    p.grad.copy_(g)


def _record_warnings(row: Row, fn: Callable[[], object]) -> object:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = fn()
    row.warnings += sorted({str(w.message) for w in caught} - set(row.warnings))
    return result


def run_case(layout: str, shapes: Sequence[Tuple[int, ...]], algo: Algo, dtype: torch.dtype,
             factories: Dict[str, Factory], param_sets: ParamSets, runs: int, warmup: int,
             probe: Optional[BandwidthProbe] = None, check: bool = True,
             measure_memory: bool = True, progress: Progress = lambda n, label: None
             ) -> List[Row]:
    """Time one (layout, algo, dtype) case; one Row per implementation in `factories`."""
    device = param_sets.device
    sync = synchronizer(device)
    numel = numel_of(shapes)
    nbytes = bytes_per_step(algo, numel, dtype)
    dtype_name = str(dtype).replace("torch.", "")
    rows = {name: Row(layout, algo.name, dtype_name, name, str(device), len(shapes), numel,
                      nbytes, runs, shared_params=param_sets.shared)
            for name in factories}
    param_sets.reset()
    opts: Dict[str, torch.optim.Optimizer] = {}

    def fail(name: str, what: str, e: Exception) -> None:
        rows[name].error = f"{what}: {type(e).__name__}: {e}"
        opts.pop(name, None)

    for name, factory in factories.items():
        try:
            opts[name] = _record_warnings(rows[name],
                                          lambda: factory(param_sets.params(name)))
        except Exception as e:
            fail(name, "construction failed", e)

    # Warm-up: the first step allocates state. Peak extra memory is measured on a later
    # warm-up step, so it sees only the step's temporaries.
    gc.collect()
    for w in range(warmup):
        for name in list(opts):
            progress(1, f"{name} warm-up")
            opt = opts[name]
            try:
                if measure_memory and w == warmup - 1 and w >= 1:
                    rows[name].peak_extra_mb = _record_warnings(
                        rows[name], lambda: peak_extra_mb(opt.step, device))
                else:
                    _record_warnings(rows[name], opt.step)
            except Exception as e:
                fail(name, "step failed", e)

    # Timed, interleaved runs, the order rotating every run. The bandwidth probe takes
    # part in the rotation, so the ceiling sees the same noise as the steps.
    probe_name = "<bandwidth probe>"
    order = list(opts) + ([probe_name] if probe is not None else [])
    probe_gbps: List[float] = []
    if probe is not None:
        probe.time_op(probe.best_op)
    gc.collect()
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for r in range(runs if opts else 0):
            k = r % len(order)
            for name in order[k:] + order[:k]:
                if name == probe_name:
                    probe_gbps.append(probe.time_op(probe.best_op))
                    continue
                if name not in opts:
                    continue
                progress(1, f"{name} run {r + 1}/{runs}")
                try:
                    sync()
                    t0 = time.perf_counter()
                    opts[name].step()
                    sync()
                    rows[name].times_ms.append((time.perf_counter() - t0) * 1e3)
                except Exception as e:
                    fail(name, "step failed", e)
    finally:
        if gc_was_enabled:
            gc.enable()

    for name, opt in opts.items():
        paths = getattr(opt, "last_step_paths", None)
        if paths is not None:
            rows[name].step_paths = dict(paths)

    # Every surviving implementation took warmup + runs steps from the same start, so its
    # params should match torch's closely.
    reference = next((n for n in ("torch.for-loop", "torch.foreach", "torch.fused")
                      if n in opts), None)
    if check and reference is not None and not param_sets.shared:
        ref_params = param_sets.params(reference)
        with torch.no_grad():
            for name in opts:
                diffs = [(p.double() - q.double()).abs().max()
                         for p, q in zip(param_sets.params(name), ref_params)]
                rows[name].max_abs_diff = torch.stack(diffs).max().item()
                rows[name].diff_reference = reference

    ceiling = statistics.median(probe_gbps) if probe_gbps else None
    for row in rows.values():
        row.ceiling_gbps = ceiling
        if row.times_ms and row.error is None:
            row.median_ms = statistics.median(row.times_ms)
            row.min_ms, row.max_ms = min(row.times_ms), max(row.times_ms)
            row.gbps = nbytes / (row.median_ms / 1e3) / 1e9
            if ceiling:
                row.pct_ceiling = 100.0 * row.gbps / ceiling
    for row in rows.values():
        others = [r.median_ms for r in rows.values() if r is not row and r.median_ms]
        if row.median_ms and others:
            row.speedup_vs_fastest_other = min(others) / row.median_ms

    opts.clear()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return list(rows.values())
