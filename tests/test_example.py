"""examples/train_lm.py: fusedoptim and torch.optim give the same loss curve on a real model,
the model learns, --plot writes a PNG, and the command line runs."""

import copy
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fusedoptim

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_PATH = ROOT / "examples" / "train_lm.py"

# A model small enough that a step takes milliseconds on 2 cores.
TINY_MODEL = dict(context=16, d_model=32, n_layers=1, n_heads=2)
TINY_FLAGS = ["--context", "16", "--d-model", "32", "--n-layers", "1", "--n-heads", "2",
              "--batch-size", "8"]
STEPS = 16

# fusedoptim matches torch.optim to fp32 rounding per step, and both runs start from the same
# weights and see the same batches, so the first loss is bit-identical and later ones differ by
# a few units in the last place of the fp32 loss (one ulp is 0.6e-7 to 1.2e-7 relative for
# losses of 2-4). Measured over these 16 steps, seeds 0-2, every pair below: at most 3.6e-7
# relative. 5e-6 leaves more than 10x margin for other CPUs and BLAS libraries and still catches
# a real deviation in the update rule: a 0.1% error in the lr shows as 1e-4, beta2 = 0.998
# instead of 0.999 as 1e-5, within four steps.
LOSS_RTOL = 5e-6

# Started from random weights the loss is about ln(66) = 4.19 nats/char; after 16 steps every
# configuration below is near 3, and an optimizer that does not move the weights stays at 4.2.
MIN_LOSS_DECREASE = 0.5

ALGORITHM_PAIRS = [
    pytest.param(fusedoptim.Adam, torch.optim.Adam, dict(lr=1e-2), id="Adam"),
    pytest.param(fusedoptim.AdamW, torch.optim.AdamW, dict(lr=1e-2, weight_decay=0.1),
                 id="AdamW"),
    pytest.param(fusedoptim.SGD, torch.optim.SGD, dict(lr=0.3, momentum=0.9, nesterov=True),
                 id="SGD-nesterov"),
]


@pytest.fixture(scope="module")
def train_lm():
    # examples/ is not a package: load the script as a module from its path.
    spec = importlib.util.spec_from_file_location("train_lm", EXAMPLE_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def corpus(train_lm):
    return train_lm.CharCorpus(train_lm.load_text())


@pytest.mark.parametrize("fused_class, torch_class, kwargs", ALGORITHM_PAIRS)
def test_loss_curves_coincide_and_decrease(train_lm, corpus, fused_class, torch_class, kwargs):
    initial_model = train_lm.build_model(corpus.vocab_size, seed=0, **TINY_MODEL)
    fused_losses, torch_losses = (
        train_lm.train(copy.deepcopy(initial_model), optimizer_class, kwargs, corpus,
                       steps=STEPS, batch_size=8, seed=0, log_every=0)["losses"]
        for optimizer_class in (fused_class, torch_class)
    )

    # Same weights, same batch, no dropout: the first forward pass cannot differ at all.
    assert fused_losses[0] == torch_losses[0]
    torch.testing.assert_close(torch.tensor(fused_losses), torch.tensor(torch_losses),
                               rtol=LOSS_RTOL, atol=0)
    final_loss = sum(fused_losses[-4:]) / 4
    assert final_loss < fused_losses[0] - MIN_LOSS_DECREASE, fused_losses


def test_compare_reports_curve_difference_and_plot_is_png(train_lm, tmp_path):
    pytest.importorskip("matplotlib")
    plot_path = tmp_path / "lm.png"
    log_lines = []
    result = train_lm.run_experiment(
        train_lm.parse_args(TINY_FLAGS + [
            "--optim", "fusedoptim.Adam", "--compare", "torch.optim.Adam", "--steps", "4",
            "--lr", "1e-2", "--eval-every", "2", "--log-every", "0", "--plot", str(plot_path),
        ]),
        log=log_lines.append,
    )

    fused_run, torch_run = result["runs"]
    assert [fused_run["label"], torch_run["label"]] == ["fusedoptim.Adam", "torch.optim.Adam"]
    assert len(fused_run["step_times"]) == 4 and all(t > 0 for t in fused_run["step_times"])
    assert [step for step, _ in fused_run["val_losses"]] == [2, 4]
    assert result["comparison"]["max_rel"] <= LOSS_RTOL
    assert result["comparison"]["identical_steps"] >= 1
    assert any("speedup" in line for line in log_lines)

    png = plot_path.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(png) > 10_000  # two panels with curves, legends and labels, not an empty canvas


def test_plot_without_matplotlib_fails_before_training(train_lm, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    log_lines = []
    args = train_lm.parse_args(TINY_FLAGS + ["--steps", "1", "--plot", str(tmp_path / "lm.png")])
    with pytest.raises(SystemExit, match="--plot needs matplotlib"):
        train_lm.run_experiment(args, log=log_lines.append)
    assert log_lines == []


@pytest.mark.parametrize("dotted_path", ["torch.nn.Linear", "Adam", "torch.optim.LBFGS"])
def test_rejects_what_is_not_a_usable_optimizer_class(train_lm, dotted_path):
    with pytest.raises(ValueError):
        train_lm.resolve_optimizer_class(dotted_path)


def test_command_line(tmp_path):
    completed = subprocess.run(
        [sys.executable, str(EXAMPLE_PATH), *TINY_FLAGS, "--steps", "3", "--log-every", "1",
         "--optim", "fusedoptim.AdamW", "--weight-decay", "0.01",
         "--optim-kwargs", '{"betas": [0.9, 0.95]}', "--sample", "20"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    out = completed.stdout
    assert "'betas': (0.9, 0.95)" in out and "'weight_decay': 0.01" in out
    for step in (1, 2, 3):
        assert f"step {step:5d}/3  loss " in out
    assert "opt.step" in out and " ms" in out
    assert "fusedoptim.AdamW: final loss" in out and "median" in out
    assert "sample from fusedoptim.AdamW:" in out
