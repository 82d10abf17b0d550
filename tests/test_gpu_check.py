"""benchmarks/gpu_check.py turns the benchmark's rows and pytest's JUnit XML into the JSON the
CUDA issue asks for (the GPU run itself needs a GPU; this checks the bookkeeping on any machine)."""

import importlib.util
import json
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
gpu_check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_check)


def _row(layout, algo, impl, median, error=None):
    return {"layout": layout, "algo": algo, "dtype": "float32", "impl": impl, "numel": 1000,
            "bytes_per_step": 28000, "median_ms": median, "error": error}


def test_assemble_has_the_issue_schema():
    bench = {"rows": [
        _row("small", "adam", "fusedoptim", 0.5), _row("small", "adam", "torch.fused", 10.0),
        _row("small", "adam", "torch.foreach", 12.0), _row("llama", "rprop", "fusedoptim", 3.0),
        _row("llama", "rprop", "torch.foreach", 9.0), _row("llama", "rprop", "torch.for-loop", 99.0),
        _row("llama", "adam", "torch.fused", None, error="out of memory"),
    ]}
    tests = {"passed": 10, "failed": 0, "skipped": 2}
    result = gpu_check.assemble(bench, tests, "a" * 40, "NVIDIA H100 80GB HBM3", "2.11.0+cu130", 3000.0)
    assert set(result) == {"commit", "device", "torch", "tests", "copy_gbps", "rows"}
    json.dumps(result)
    rows = {(r["layout"], r["algo"]): r for r in result["rows"]}
    assert [(r["layout"], r["algo"]) for r in result["rows"]] == [("llama", "adam"), ("llama", "rprop"), ("small", "adam")]
    for row in result["rows"]:
        assert set(row) == {"layout", "algo", "dtype", "numel", "bytes", "ours_ms", "torch_fused_ms", "torch_foreach_ms"}
    assert rows[("small", "adam")]["ours_ms"] == 0.5 and rows[("small", "adam")]["torch_fused_ms"] == 10.0
    assert rows[("llama", "rprop")]["torch_fused_ms"] is None and rows[("llama", "rprop")]["torch_foreach_ms"] == 9.0
    assert rows[("llama", "adam")]["torch_fused_ms"] is None  # the failed run is not a time
    assert rows[("small", "adam")]["bytes"] == 28000


def test_counts_from_junit(tmp_path):
    junit = tmp_path / "junit.xml"
    junit.write_text('<?xml version="1.0"?><testsuites><testsuite name="pytest" errors="1" failures="2" '
                     'skipped="3" tests="20"></testsuite></testsuites>')
    assert gpu_check.test_counts(junit) == {"passed": 14, "failed": 3, "skipped": 3}


def test_counts_without_junit(tmp_path):
    assert gpu_check.test_counts(tmp_path / "missing.xml") == {"passed": None, "failed": None, "skipped": None}


def test_option_row_takes_the_option_run_and_the_floor():
    rows = [_row("llama", "adamw", "fusedoptim", 20.0), _row("llama", "adamw", "torch.fused", 25.0),
            _row("llama", "adamw", "torch.foreach", None, error="out of memory")]
    row = gpu_check.option_row("bf16+master_weights", "adamw", "bfloat16", 1000, 28, rows)
    assert row == {"case": "bf16+master_weights", "layout": "llama", "algo": "adamw", "dtype": "bfloat16",
                   "numel": 1000, "bytes": 28000, "ours_ms": 20.0, "torch_fused_ms": 25.0}
    assert [case[0] for case in gpu_check.OPTION_CASES] == ["bf16+master_weights", "max_grad_norm"]
