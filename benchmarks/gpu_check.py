"""The benchmark half of benchmarks/gpu_check.sh: measures a device-to-device copy, runs
`python -m fusedoptim.bench` on the llama and small layouts for every algorithm in fp32 and
bf16 (fusedoptim, torch foreach, torch fused), and writes the issue's JSON:

    {"commit", "device", "torch", "tests": {"passed", "failed", "skipped"}, "copy_gbps",
     "rows": [{"layout", "algo", "dtype", "numel", "bytes", "ours_ms", "torch_fused_ms",
               "torch_foreach_ms"}, ...]}

`bytes` is the floor of a step (bytes read plus written); times are medians in ms; null where
an implementation does not exist (torch has no fused kernel for most algorithms) or failed.
An extra key, `options`, holds issue 5's GPU targets on llama: fusedoptim with each option of
OPTION_CASES next to its plain step and torch's fused step in the same run.

    python benchmarks/gpu_check.py --junit junit.xml --out benchmarks/results/NAME.json
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ElementTree

ROOT = pathlib.Path(__file__).resolve().parents[1]
LAYOUTS = ("llama", "small")
DTYPES = ("float32", "bfloat16")
IMPLS = ("fusedoptim", "torch.fused", "torch.foreach")


def copy_gbps(device="cuda", numel=2**28, reps=20):
    """A device-to-device copy of 1 GiB of fp32, bytes read plus written per second (median)."""
    import torch

    src = torch.randn(numel, device=device)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    times.sort()
    return 2 * src.numel() * src.element_size() / times[len(times) // 2] / 1e9


# Issue 5's GPU targets: (case, algo, dtype, fusedoptim options, bytes per param of the floor).
# bf16 params with fp32 master weights: AdamW reads the grad (2), master and states (12) and
# writes param (2), master and states (12); max_grad_norm adds a read of the fp32 grads (4) to
# the 28 bytes of the plain step, whose time is the target's base (<= 1.3x).
OPTION_CASES = (
    ("bf16+master_weights", "adamw", "bfloat16", ["master_weights=True"], 28),
    ("max_grad_norm", "adamw", "float32", ["max_grad_norm=1.0"], 32),
)


def option_row(case, algo, dtype, numel, bytes_per_param, bench_rows):
    """One `options` entry from the benchmark's rows of one option run (fusedoptim with the
    option; torch fused without it) and the main run's plain fusedoptim time."""
    times = {row["impl"]: row.get("median_ms") for row in bench_rows if row.get("error") is None}
    return {"case": case, "layout": "llama", "algo": algo, "dtype": dtype, "numel": numel,
            "bytes": numel * bytes_per_param, "ours_ms": times.get("fusedoptim"),
            "torch_fused_ms": times.get("torch.fused")}


def run_option_cases(cli, result):
    """Adds `options` to `result`: each OPTION_CASES run on llama, with the plain step's time."""
    plain = {(r["algo"], r["dtype"]): r["ours_ms"] for r in result["rows"] if r["layout"] == "llama"}
    result["options"] = []
    for case, algo, dtype, options, bytes_per_param in OPTION_CASES:
        with tempfile.TemporaryDirectory() as tmp:
            raw = pathlib.Path(tmp) / "bench.json"
            cli.main(["--device", "cuda", "--layouts", "llama", "--algos", algo, "--dtypes", dtype,
                      "--impls", "fusedoptim,torch.fused", "--runs", "5", "--no-progress", "--no-check",
                      "--json", str(raw)] + [arg for option in options for arg in ("--fusedoptim-option", option)])
            rows = json.loads(raw.read_text())["rows"] if raw.exists() else []
        numel = rows[0]["numel"] if rows else None
        row = option_row(case, algo, dtype, numel or 0, bytes_per_param, rows)
        row["plain_ours_ms"] = plain.get((algo, dtype))
        result["options"].append(row)


def test_counts(junit_path):
    """{"passed", "failed", "skipped"} from pytest's JUnit XML (errors count as failed); all
    None when pytest wrote none (it was killed, or crashed)."""
    try:
        root = ElementTree.parse(junit_path).getroot()
    except (OSError, ElementTree.ParseError):
        return {"passed": None, "failed": None, "skipped": None}
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    total = failed = skipped = 0
    for suite in suites:
        total += int(suite.get("tests", 0))
        failed += int(suite.get("failures", 0)) + int(suite.get("errors", 0))
        skipped += int(suite.get("skipped", 0))
    return {"passed": total - failed - skipped, "failed": failed, "skipped": skipped}


def assemble(bench, tests, commit, device, torch_version, gbps):
    """The issue's JSON from the benchmark's own (`python -m fusedoptim.bench --json`)."""
    cases = {}
    for row in bench["rows"]:
        key = (row["layout"], row["algo"], row["dtype"])
        case = cases.setdefault(key, {
            "layout": row["layout"], "algo": row["algo"], "dtype": row["dtype"], "numel": row["numel"],
            "bytes": row["bytes_per_step"], "ours_ms": None, "torch_fused_ms": None, "torch_foreach_ms": None,
        })
        field = {"fusedoptim": "ours_ms", "torch.fused": "torch_fused_ms", "torch.foreach": "torch_foreach_ms"}.get(
            row["impl"])
        if field is not None and row.get("error") is None and row.get("median_ms") is not None:
            case[field] = row["median_ms"]
    return {
        "commit": commit, "device": device, "torch": torch_version, "tests": tests, "copy_gbps": gbps,
        "rows": sorted(cases.values(), key=lambda c: (LAYOUTS.index(c["layout"]) if c["layout"] in LAYOUTS else 9,
                                                      c["algo"], c["dtype"])),
    }


def commit_hash():
    if os.environ.get("FUSEDOPTIM_COMMIT"):
        return os.environ["FUSEDOPTIM_COMMIT"]
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--junit", required=True, help="pytest --junitxml output of the test run")
    parser.add_argument("--out", required=True, help="the JSON to write")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--algos", default="all")
    args = parser.parse_args(argv)

    import torch

    sys.path.insert(0, str(ROOT))
    from fusedoptim.bench import cli

    gbps = copy_gbps()
    print(f"device-to-device copy: {gbps:.0f} GB/s (read + write)", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        raw = pathlib.Path(tmp) / "bench.json"
        status = cli.main([
            "--device", "cuda", "--layouts", ",".join(LAYOUTS), "--algos", args.algos, "--dtypes", ",".join(DTYPES),
            "--impls", ",".join(IMPLS), "--runs", str(args.runs), "--no-progress", "--require-fusedoptim",
            "--json", str(raw),
        ])
        bench = json.loads(raw.read_text()) if raw.exists() else {"rows": []}
    result = assemble(bench, test_counts(args.junit), commit_hash(), torch.cuda.get_device_name(),
                      torch.__version__, gbps)
    run_option_cases(cli, result)
    pathlib.Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"{'layout':6} {'algo':8} {'dtype':8} {'ours ms':>9} {'% copy':>7} {'fused ms':>9} {'foreach ms':>10}")
    for row in result["rows"]:
        ours = row["ours_ms"]
        pct = 100 * row["bytes"] / (ours / 1e3) / 1e9 / gbps if ours else None
        show = lambda v: f"{v:9.3f}" if v is not None else f"{'-':>9}"  # noqa: E731
        print(f"{row['layout']:6} {row['algo']:8} {row['dtype']:8} {show(ours)} "
              f"{(f'{pct:6.1f}%' if pct else '      -'):>7} {show(row['torch_fused_ms'])} "
              f"{show(row['torch_foreach_ms']):>10}")
    for row in result["options"]:
        ours = row["ours_ms"]
        pct = f"{100 * row['bytes'] / (ours / 1e3) / 1e9 / gbps:.1f}% copy" if ours else "-"
        print(f"llama {row['algo']} {row['dtype']} {row['case']}: {ours} ms ({pct}), plain {row['plain_ours_ms']} ms, "
              f"torch fused {row['torch_fused_ms']} ms")
    print(f"wrote {args.out}: tests {result['tests']}, commit {result['commit']}")
    return status


if __name__ == "__main__":
    sys.exit(main())
