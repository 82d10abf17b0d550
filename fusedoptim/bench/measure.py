"""What the benchmark measures besides step times: the bandwidth ceiling, peak extra
memory during a step, memory available for the parameter copies, and the machine."""

from __future__ import annotations

import datetime as _dt
import gc
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Callable, Dict, List, Optional, Tuple

import torch


def synchronizer(device: torch.device) -> Callable[[], None]:
    """Waits for the device's queued work, so wall-clock times cover it (a no-op on CPU)."""
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


class BandwidthProbe:
    """Large (beyond-cache) streaming ops on the device: the bandwidth ceiling. Bytes follow
    the STREAM convention (each array read or written once; write-allocate traffic not
    counted), so values slightly over 100% of the ceiling are possible on CPUs."""

    def __init__(self, device: torch.device, mb_per_array: int):
        n = mb_per_array * (1 << 20) // 4
        self.mb_per_array = mb_per_array
        self.sync = synchronizer(device)
        a = torch.ones(n, device=device)
        b = torch.full((n,), 2.0, device=device)
        c = torch.zeros(n, device=device)
        self.nbytes = n * 4
        # name -> (op, arrays streamed)
        self.ops: Dict[str, Tuple[Callable[[], object], int]] = {
            "copy c=a": (lambda: c.copy_(a), 2),
            "add c=a+b": (lambda: torch.add(a, b, out=c), 3),
            "add_ a+=b": (lambda: a.add_(b, alpha=1e-30), 3),
            "addcmul_ a+=b*c": (lambda: a.addcmul_(b, c, value=1e-30), 4),
        }
        self.best_op = "add_ a+=b"

    def time_op(self, name: str) -> float:
        """One call of op `name`; returns GB/s (1e9 B/s)."""
        op, narrays = self.ops[name]
        self.sync()
        t0 = time.perf_counter()
        op()
        self.sync()
        return narrays * self.nbytes / (time.perf_counter() - t0) / 1e9

    def measure(self, reps: int = 7) -> Dict[str, object]:
        """Each op: one warm-up call and the median of `reps`. The best op becomes the one
        timed inside every case's rotation."""
        results = {}
        for name in self.ops:
            self.time_op(name)
            results[name] = round(statistics.median(self.time_op(name) for _ in range(reps)), 2)
        self.best_op = max(results, key=results.get)
        return {"ceiling_gbps": results[self.best_op], "best_op": self.best_op,
                "ops_gbps": results, "mb_per_array": self.mb_per_array, "reps": reps}

    def close(self) -> None:
        self.ops.clear()
        gc.collect()


# --------------------------------------------------------------------------------------
# Peak extra memory during one step
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


def peak_extra_mb(step: Callable[[], None], device: torch.device) -> Optional[float]:
    """Run step(); return the peak memory it added, in MiB, or None where unmeasurable.
    CUDA: torch's caching allocator peak. CPU (Linux): peak RSS growth (writing 5 to
    /proc/self/clear_refs resets VmHWM); temporaries served from memory the allocator
    already holds are not seen."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        step()
        torch.cuda.synchronize(device)
        return max(0, torch.cuda.max_memory_allocated(device) - before) / 2**20
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        step()
        return None
    before = _proc_status_kb("VmRSS")
    step()
    peak = _proc_status_kb("VmHWM")
    if before is None or peak is None:
        return None
    return max(0, peak - before) / 1024.0


def available_bytes(device: torch.device) -> Optional[int]:
    """Memory free for new tensors on `device` (None if unknown)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


# --------------------------------------------------------------------------------------
# The machine
# --------------------------------------------------------------------------------------


def loadavg() -> Optional[List[float]]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _cpuinfo_field(name: str) -> Optional[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(name):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_model() -> Optional[str]:
    return _cpuinfo_field("model name") or platform.processor() or None


def cpu_flags() -> List[str]:
    flags = (_cpuinfo_field("flags") or "").split()
    return sorted(f for f in flags
                  if f in ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_bf16"))


def _git(*args: str) -> Optional[str]:
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(["git", "-C", here, *args], capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def machine_metadata(device: torch.device, fusedoptim_mod, fusedoptim_error: Optional[str]
                     ) -> Dict[str, object]:
    meta: Dict[str, object] = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "device": str(device),
        "device_name": (torch.cuda.get_device_name(device) if device.type == "cuda"
                        else cpu_model()),
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "platform": platform.platform(),
        "cpu_model": cpu_model(),
        "cpu_flags": cpu_flags(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "loadavg_before": loadavg(),
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": None,
        "argv": sys.argv,
        "fusedoptim": None,
    }
    status = _git("status", "--porcelain", "--untracked-files=no")
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
