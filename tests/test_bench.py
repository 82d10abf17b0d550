"""`python -m fusedoptim.bench`: layouts, the CLI end to end on a tiny model (JSON and PNG
written and checked), third-party adapters, memory planning and the README's tables."""

import io
import json
import os
import subprocess
import sys
import textwrap
import types

import pytest
import torch

from fusedoptim.bench import cli, implementations, layouts, report, runner

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def tiny_model_module(tmp_path, monkeypatch):
    """A module `tiny_bench_model` whose `make` returns a small nn.Module (on the device
    it is asked for, as the layout loader asks for meta)."""
    (tmp_path / "tiny_bench_model.py").write_text(textwrap.dedent("""
        import torch.nn as nn

        def make(device=None):
            return nn.Sequential(nn.Linear(37, 29, device=device), nn.ReLU(),
                                 nn.LayerNorm(29, device=device), nn.Linear(29, 3, bias=False,
                                                                           device=device))

        def not_a_module():
            return 42
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("tiny_bench_model", None)
    yield "tiny_bench_model:make"
    sys.modules.pop("tiny_bench_model", None)


def test_builtin_layouts():
    gpt2 = layouts.layout_shapes("gpt2")
    assert (len(gpt2), layouts.numel_of(gpt2)) == (148, 95_491_584)
    llama = layouts.layout_shapes("llama")
    # 24 x (4 d^2 + 3 d ffn + 2 d) + 2 vocab d + d with d=2048, ffn=5632, vocab=32000
    assert (len(llama), layouts.numel_of(llama)) == (219, 1_364_297_728)
    assert llama.count((2048, 5632)) == 24 and llama.count((5632, 2048)) == 48
    small = layouts.layout_shapes("small")
    assert (len(small), layouts.numel_of(small)) == (10_000, 10_000_000)


def test_module_layout(tiny_model_module):
    assert layouts.layout_shapes(tiny_model_module) == [(29, 37), (29,), (29,), (29,), (3, 29)]


@pytest.mark.parametrize("spec, message", [
    ("nolayout", "expected a name from"),
    ("no_such_module_xyz:make", "cannot load"),
    ("tiny_bench_model:missing", "cannot load"),
    ("tiny_bench_model:not_a_module", "not an nn.Module"),
])
def test_module_layout_errors(tiny_model_module, spec, message):
    with pytest.raises(ValueError, match=message):
        layouts.layout_shapes(spec)


def _run_cli(args, capsys):
    code = cli.main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_tiny_run_writes_json_and_png(tiny_model_module, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    json_path, png_path = tmp_path / "out.json", tmp_path / "out.png"
    code, out, err = _run_cli(
        ["--layouts", tiny_model_module, "--algos", "adam,lion", "--dtypes", "float32,bfloat16",
         "--runs", "3", "--warmup", "2", "--bandwidth-mb", "4", "--no-progress",
         "--json", str(json_path), "--plot", str(png_path)], capsys)
    assert code == 0, err
    assert "fusedoptim vs the fastest other implementation" in out
    doc = json.loads(json_path.read_text())
    numel = 29 * 37 + 29 * 3 + 3 * 29
    rows = {(r["algo"], r["dtype"], r["impl"]): r for r in doc["rows"]}
    expected_impls = {"adam": {"fusedoptim", "torch.for-loop", "torch.foreach", "torch.fused"},
                      "lion": {"fusedoptim", "torch.for-loop"}}
    for algo, impls in expected_impls.items():
        for dtype in ("float32", "bfloat16"):
            case = {k[2]: r for k, r in rows.items() if k[:2] == (algo, dtype)}
            assert set(case) == impls
            elem = 4 if dtype == "float32" else 2
            floor = {"adam": 28, "lion": 20}[algo] * numel * elem // 4
            for impl, r in case.items():
                assert r["error"] is None, r["error"]
                assert (r["numel"], r["n_tensors"], r["bytes_per_step"]) == (numel, 5, floor)
                assert len(r["times_ms"]) == 3 and r["median_ms"] > 0
                assert r["gbps"] == pytest.approx(floor / r["median_ms"] * 1e-6)
                assert r["pct_ceiling"] == pytest.approx(100 * r["gbps"] / r["ceiling_gbps"])
                fastest_other = min(o["median_ms"] for n, o in case.items() if n != impl)
                assert r["speedup_vs_fastest_other"] == pytest.approx(
                    fastest_other / r["median_ms"])
                # Five steps from the same start: every implementation ran the same algorithm.
                assert r["diff_reference"] == "torch.for-loop"
                assert r["max_abs_diff"] <= (1e-6 if dtype == "float32" else 2e-2)
            assert case["fusedoptim"]["step_paths"] == {"fused": 5, "reference": 0}
    skipped = {(s["impl"], s["algo"]) for s in doc["skipped"]}
    assert {("apex", "adam"), ("torch.fused", "lion"), ("torch.foreach", "lion")} <= skipped
    meta = doc["metadata"]
    assert meta["device"] == "cpu" and meta["runs"] == 3 and meta["torch_version"]
    assert meta["bandwidth"]["before"]["ceiling_gbps"] > 0
    png = png_path.read_bytes()
    assert png.startswith(PNG_SIGNATURE) and len(png) > 5000
    # The README's table generator reads what the CLI wrote.
    table = report.markdown_results(doc)
    assert "| Adam | float32 |" in table and "| Lion | bfloat16 |" in table
    assert "python -m fusedoptim.bench" not in table or "--layouts" in table


def test_cli_options_reach_every_implementation(tiny_model_module, tmp_path, capsys):
    json_path = tmp_path / "out.json"
    code, out, err = _run_cli(
        ["--layouts", tiny_model_module, "--algos", "sgd", "--runs", "1", "--warmup", "1",
         "--bandwidth-mb", "0", "--no-progress", "--impls", "fusedoptim,torch.for-loop",
         "--option", "nesterov=True", "--option", "weight_decay=0.5",
         "--json", str(json_path)], capsys)
    assert code == 0, err
    rows = json.loads(json_path.read_text())["rows"]
    assert [r["impl"] for r in rows] == ["fusedoptim", "torch.for-loop"]
    assert all(r["error"] is None for r in rows)
    assert rows[0]["max_abs_diff"] < 1e-6 and rows[0]["ceiling_gbps"] is None

    factories, _ = implementations.resolve_impls(
        ["fusedoptim", "torch.foreach"], implementations.ALGOS["sgd"], torch.device("cpu"),
        {"weight_decay": 0.5, "nesterov": True}, {}, __import__("fusedoptim"))
    for factory in factories.values():
        group = factory([torch.zeros(3, requires_grad=True)]).param_groups[0]
        assert (group["weight_decay"], group["nesterov"], group["momentum"]) == (0.5, True, 0.9)


def test_cli_rejected_option_is_an_error_row(tiny_model_module, tmp_path, capsys):
    json_path = tmp_path / "out.json"
    code, out, _ = _run_cli(
        ["--layouts", tiny_model_module, "--algos", "adam", "--runs", "1", "--warmup", "1",
         "--bandwidth-mb", "0", "--no-progress", "--impls", "fusedoptim,torch.for-loop",
         "--fusedoptim-option", "no_such_option=1", "--json", str(json_path)], capsys)
    assert code == 0
    rows = {r["impl"]: r for r in json.loads(json_path.read_text())["rows"]}
    assert "no_such_option" in rows["fusedoptim"]["error"]
    assert rows["torch.for-loop"]["error"] is None and rows["torch.for-loop"]["median_ms"]
    assert "ERROR" in out


@pytest.mark.parametrize("argv, message", [
    (["--layouts", "nolayout"], "expected a name from"),
    (["--runs", "0"], "--runs and --warmup must be >= 1"),
])
def test_cli_bad_arguments(argv, message, capsys):
    code, _, err = _run_cli(argv, capsys)
    assert code == 2 and message in err


def test_cli_bad_choice_names_the_option(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--algos", "adam,nosuch"])
    assert exc.value.code == 2 and "--algos" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_cli_cuda_without_cuda(capsys):
    code, _, err = _run_cli(["--device", "cuda"], capsys)
    assert code == 2 and "no CUDA device" in err


def test_module_entry_point_help():
    out = subprocess.run([sys.executable, "-m", "fusedoptim.bench", "--help"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for flag in ("--device", "--layouts", "--algos", "--impls", "--dtypes", "--option",
                 "--runs", "--json", "--plot"):
        assert flag in out.stdout


@pytest.fixture
def fake_deepspeed(monkeypatch):
    """A stand-in for deepspeed.ops.adam.DeepSpeedCPUAdam built on torch.optim, to check the
    adapter passes the mode flag and runs like any other implementation."""
    made = []

    def DeepSpeedCPUAdam(params, adamw_mode=True, **kwargs):
        made.append(adamw_mode)
        cls = torch.optim.AdamW if adamw_mode else torch.optim.Adam
        return cls(params, foreach=False, **kwargs)

    modules = {name: types.ModuleType(name)
               for name in ("deepspeed", "deepspeed.ops", "deepspeed.ops.adam")}
    modules["deepspeed.ops.adam"].DeepSpeedCPUAdam = DeepSpeedCPUAdam
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    return made


def test_third_party_implementation_runs_when_importable(fake_deepspeed):
    shapes = [(50,), (7, 9)]
    param_sets = runner.ParamSets(shapes, torch.float32, torch.device("cpu"), shared=False)
    for algo_name, mode in (("adam", False), ("adamw", True)):
        algo = implementations.ALGOS[algo_name]
        factories, skipped = implementations.resolve_impls(
            ["deepspeed", "torch.for-loop", "apex"], algo, torch.device("cpu"), {}, {}, None)
        assert list(factories) == ["deepspeed", "torch.for-loop"]
        assert "apex" in skipped
        rows = runner.run_case("t", shapes, algo, torch.float32, factories, param_sets,
                               runs=2, warmup=1, check=True, measure_memory=False)
        ds = next(r for r in rows if r.impl == "deepspeed")
        assert ds.error is None and ds.median_ms > 0 and ds.max_abs_diff == 0.0
        assert fake_deepspeed[-1] is mode


def test_plan_memory(monkeypatch):
    numel, cpu = 1_000_000, torch.device("cpu")
    tensor = numel * 4
    separate = tensor * (2 + 4 * (2 + 2) + 2)
    shared = tensor * (2 + 4 * 2 + 2)
    for free, expected in ((separate * 2, False), (separate, True), (shared * 1.2, None)):
        monkeypatch.setattr(runner, "available_bytes", lambda device, free=free: int(free))
        is_shared, why = runner.plan_memory(numel, torch.float32, cpu, 4, 2)
        assert is_shared is expected
        assert (why == "") == (expected is False)


def test_shared_params_skip_the_comparison():
    shapes = [(100,), (10, 10)]
    param_sets = runner.ParamSets(shapes, torch.float32, torch.device("cpu"), shared=True)
    assert param_sets.params("a") is param_sets.params("b")
    algo = implementations.ALGOS["sgd"]
    factories, _ = implementations.resolve_impls(
        ["fusedoptim", "torch.foreach"], algo, torch.device("cpu"), {}, {},
        __import__("fusedoptim"))
    rows = runner.run_case("t", shapes, algo, torch.float32, factories, param_sets, runs=2,
                           warmup=1, measure_memory=False)
    assert all(r.shared_params and r.max_abs_diff is None and r.median_ms for r in rows)


def test_progress_bar_live_and_plain():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    live = Terminal()
    bar = cli.ProgressBar(10, enabled=True, stream=live)
    bar.start_case("gpt2 adam float32")
    bar.advance(5, "torch.fused run 1/5")
    assert " 50%" in live.getvalue() and "gpt2 adam float32: torch.fused run 1/5" in live.getvalue()
    plain = io.StringIO()
    bar = cli.ProgressBar(10, enabled=True, stream=plain)
    bar.advance(3, "x")
    bar.start_case("small sgd float32")
    assert plain.getvalue() == "[ 30%] small sgd float32\n"
    silent = io.StringIO()
    bar = cli.ProgressBar(10, enabled=False, stream=silent)
    bar.start_case("c")
    bar.advance(1, "x")
    assert silent.getvalue() == ""


def test_markdown_results_from_rows():
    def row(impl, ms, pct=None):
        return {"layout": "small", "algo": "adam", "dtype": "float32", "impl": impl,
                "median_ms": ms, "pct_ceiling": pct, "n_tensors": 10_000, "numel": 10_000_000}
    doc = {"metadata": {"device_name": "Some CPU", "threads": 2, "torch_version": "2.13.0",
                        "git_commit": "0123456789abcdef", "date": "2026-11-22T01:00:00+00:00",
                        "argv": ["/x/fusedoptim/bench/__main__.py", "--layouts", "small"]},
           "rows": [row("fusedoptim", 10.0, 71.5), row("torch.fused", 150.0),
                    row("torch.foreach", 450.0)]}
    table = report.markdown_results(doc)
    assert "Some CPU, 2 threads, torch 2.13.0, commit `0123456`, 2026-11-22" in table
    assert "python -m fusedoptim.bench --layouts small" in table
    assert "| Adam | float32 | 10.00 | torch.fused | 150.00 | 15.00x | 72 |" in table


def test_readme_results_tables_are_generated():
    """README's results tables are what scripts/update_readme_results.py makes of the
    committed JSON: regenerate them instead of editing by hand."""
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    assert "<!-- results: " in text
    assert report.render_readme_results(text, ROOT) == text
