"""Train a small character-level Transformer language model with any optimizer class.

The model is a decoder-only Transformer (token and position embeddings, pre-LayerNorm blocks
with causal self-attention and an MLP, a final LayerNorm, a linear head) trained on
Shakespeare's Sonnets (``examples/data/shakespeare_sonnets.txt``, public domain, 95 KB).
It needs only torch; ``--plot`` also needs matplotlib.

Usage::

    python examples/train_lm.py --optim fusedoptim.Adam
    python examples/train_lm.py --optim fusedoptim.AdamW --weight-decay 0.1 \\
        --optim-kwargs '{"betas": [0.9, 0.95]}'
    python examples/train_lm.py --optim fusedoptim.Adam --compare torch.optim.Adam \\
        --steps 200 --plot lm.png --sample 300

``--optim`` and ``--compare`` take any dotted path to a ``torch.optim.Optimizer`` subclass
(``fusedoptim.Lion``, ``torch.optim.SGD``, ...). ``--lr`` is always passed, ``--weight-decay``
only when given, ``--optim-kwargs`` adds any other constructor argument (JSON lists become
tuples). Every ``--log-every`` steps the script prints the training loss and the time spent in
``optimizer.step()`` alone (``time.perf_counter`` around the call, after a CUDA synchronize on
GPUs); at the end it prints per run the mean and median optimizer step time and the final
loss, and with ``--compare`` the difference between the two loss curves and the speedup.

Why the two curves of ``--compare`` coincide
--------------------------------------------
Both runs start from the same weights (the model is built once and deep-copied), see the same
batches in the same order (each run draws them from its own ``torch.Generator`` seeded with
``--seed``), and the model has no dropout, so nothing else random happens: the first loss and
the first gradients are bit-identical. fusedoptim computes each step to within fp32 rounding
of torch.optim (its test suite checks every algorithm side by side), so after a step the
weights differ by at most a few units in the last place, and so do the next losses. A neural
network can amplify such differences over many steps, most where training is unstable, but
they stay orders of magnitude below the step-to-step noise of the loss: the curves coincide.

Measured with the default settings (fp32, lr 1e-3, 422K parameters, 2 CPU cores, AVX2)::

    python examples/train_lm.py --optim fusedoptim.Adam --compare torch.optim.Adam --steps 200

- 200 steps: the losses are bit-identical for the first 10 steps, and differ by at most
  2.4e-7 (1.1e-7 relative, one ulp of the fp32 loss) over the 200; final loss 2.134263 for
  both. torch.optim.Adam(fused=True) differs from torch.optim.Adam by 4.8e-7 on this run.
- 1000 steps (``--steps 1000 --threads 1``): at most 4.8e-7 (3.4e-7 relative); final loss
  1.508638 for both.
- ``--lr 3e-3``, 200 steps: the loss spikes at step 9 and the differences grow there, to at
  most 3.0e-5 (1.1e-5 relative); torch.optim.Adam(fused=True) against torch.optim.Adam differs
  as much on that run (2.6e-5), so this is the sensitivity of the training, not an error.
- ``--dtype bfloat16``: fusedoptim updates 16-bit params in fp32 and rounds once, where
  torch.optim.Adam rounds to bf16 after every operation, so the curves agree only to bf16
  precision: at most 5.4e-3 (1.8e-3 relative) over 20 steps, and 2.2e-3 against
  torch.optim.Adam(fused=True), which also computes in fp32.

On this small model ``optimizer.step()`` takes about 0.65 ms with fusedoptim.Adam against
3.9 ms with torch.optim.Adam (6x), out of an iteration of about 70 ms.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

DEFAULT_DATA_PATH = Path(__file__).resolve().parent / "data" / "shakespeare_sonnets.txt"
VALIDATION_FRACTION = 0.1
EVAL_BATCHES = 8
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


# ---------------------------------------------------------------------------------------------
# Data


def load_text(path: str | Path = DEFAULT_DATA_PATH) -> str:
    return Path(path).read_text(encoding="utf-8")


class CharCorpus:
    """The text as a tensor of character ids, split into a training and a validation part."""

    def __init__(self, text: str):
        self.chars = sorted(set(text))
        self.char_to_id = {c: i for i, c in enumerate(self.chars)}
        ids = torch.tensor([self.char_to_id[c] for c in text], dtype=torch.long)
        split = int(len(ids) * (1 - VALIDATION_FRACTION))
        self.train_ids = ids[:split]
        self.val_ids = ids[split:]

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def decode(self, ids) -> str:
        return "".join(self.chars[int(i)] for i in ids)


def get_batch(ids, batch_size, context, generator, device):
    """Random windows of ``context + 1`` characters: inputs and next-character targets.

    The offsets come from ``generator`` only, so two runs with identically seeded generators
    see the same batches whatever else uses the global RNG.
    """
    starts = torch.randint(len(ids) - context - 1, (batch_size,), generator=generator)
    windows = torch.stack([ids[s : s + context + 1] for s in starts.tolist()])
    return windows[:, :-1].to(device), windows[:, 1:].to(device)


# ---------------------------------------------------------------------------------------------
# Model


class CausalSelfAttention(nn.Module):
    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        self.n_heads = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x):
        batch, length, width = x.shape
        q, k, v = self.qkv(x).split(width, dim=2)
        q, k, v = (t.view(batch, length, self.n_heads, -1).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(batch, length, width))


class Block(nn.Module):
    """Pre-LayerNorm Transformer block (no dropout, so training is deterministic)."""

    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.ln_attn = nn.LayerNorm(d_model)
        self.attn = CausalSelfAttention(d_model, n_heads)
        self.ln_mlp = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model)
        )

    def forward(self, x):
        x = x + self.attn(self.ln_attn(x))
        return x + self.mlp(self.ln_mlp(x))


class CharTransformer(nn.Module):
    def __init__(self, vocab_size: int, context: int, d_model: int, n_layers: int, n_heads: int):
        super().__init__()
        self.context = context
        self.token_embedding = nn.Embedding(vocab_size, d_model)
        self.position_embedding = nn.Embedding(context, d_model)
        self.blocks = nn.Sequential(*(Block(d_model, n_heads) for _ in range(n_layers)))
        self.ln_final = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size)
        self.apply(_init_weights)

    def forward(self, ids, targets=None):
        positions = torch.arange(ids.shape[1], device=ids.device)
        x = self.token_embedding(ids) + self.position_embedding(positions)
        logits = self.head(self.ln_final(self.blocks(x)))
        if targets is None:
            return logits, None
        # The loss in fp32 even for bf16 params: a bf16 log-softmax would round it to 3 digits.
        loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
        return logits, loss

    @torch.no_grad()
    def generate(self, prompt_ids, num_chars, temperature=0.8, generator=None):
        """Append ``num_chars`` sampled ids to ``prompt_ids`` (1-D); temperature 0 is greedy."""
        ids = prompt_ids.unsqueeze(0)
        for _ in range(num_chars):
            logits, _ = self(ids[:, -self.context :])
            last = logits[0, -1].float()
            if temperature <= 0:
                next_id = last.argmax()
            else:
                probs = torch.softmax(last / temperature, dim=-1)
                next_id = torch.multinomial(probs.cpu(), 1, generator=generator)[0]
            ids = torch.cat([ids, next_id.view(1, 1).to(ids.device)], dim=1)
        return ids[0]


def _init_weights(module):
    # GPT-2's initialization: small normal weights train faster than torch's defaults here.
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)


def build_model(vocab_size, context=64, d_model=128, n_layers=2, n_heads=4, seed=0,
                device="cpu", dtype=torch.float32) -> CharTransformer:
    torch.manual_seed(seed)
    model = CharTransformer(vocab_size, context, d_model, n_layers, n_heads)
    return model.to(device=device, dtype=dtype)


# ---------------------------------------------------------------------------------------------
# Optimizer and training


def resolve_optimizer_class(dotted_path: str) -> type:
    """``"fusedoptim.Adam"`` -> the class, imported with importlib."""
    module_name, _, class_name = dotted_path.rpartition(".")
    if not module_name:
        raise ValueError(f"--optim needs a dotted path like fusedoptim.Adam, got {dotted_path!r}")
    cls = getattr(importlib.import_module(module_name), class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
        raise ValueError(f"{dotted_path} is not a torch.optim.Optimizer subclass")
    if class_name == "LBFGS":
        raise ValueError("LBFGS needs a closure re-evaluating the model; this example has none")
    return cls


def _tuples_for_lists(value):
    # JSON has no tuples; optimizers document betas, etas, step_sizes as tuples.
    if isinstance(value, list):
        return tuple(_tuples_for_lists(v) for v in value)
    if isinstance(value, dict):
        return {k: _tuples_for_lists(v) for k, v in value.items()}
    return value


def build_optimizer_kwargs(lr, weight_decay=None, extra_json=None) -> dict:
    kwargs = {"lr": lr}
    if weight_decay is not None:
        kwargs["weight_decay"] = weight_decay
    if extra_json:
        extra = json.loads(extra_json)
        if not isinstance(extra, dict):
            raise ValueError(f"expected a JSON object, got {extra_json!r}")
        kwargs.update(_tuples_for_lists(extra))
    return kwargs


def _synchronize(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def evaluate(model, corpus, batch_size, seed, device) -> float:
    """Mean loss on the same validation batches at every call (a generator of its own)."""
    generator = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(EVAL_BATCHES):
        inputs, targets = get_batch(corpus.val_ids, batch_size, model.context, generator, device)
        losses.append(model(inputs, targets)[1].item())
    return sum(losses) / len(losses)


def train(model, optimizer_class, optimizer_kwargs, corpus, *, steps, batch_size=32, seed=0,
          device="cpu", eval_every=0, log_every=10, label=None, log=print) -> dict:
    """Train ``model`` in place for ``steps`` steps and return the per-step curves.

    Returns a dict with ``label``, ``losses`` (training loss of each step's batch, before
    that step's update), ``step_times`` (seconds in ``optimizer.step()``), ``iter_times``
    (seconds for the whole iteration) and ``val_losses`` (``(step, loss)`` pairs).
    """
    label = label or f"{optimizer_class.__module__}.{optimizer_class.__name__}"
    optimizer = optimizer_class(model.parameters(), **optimizer_kwargs)
    batch_generator = torch.Generator().manual_seed(seed)
    result = {"label": label, "losses": [], "step_times": [], "iter_times": [], "val_losses": []}
    model.train()
    for step in range(1, steps + 1):
        iter_start = time.perf_counter()
        inputs, targets = get_batch(corpus.train_ids, batch_size, model.context,
                                    batch_generator, device)
        _, loss = model(inputs, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        _synchronize(device)
        step_start = time.perf_counter()
        optimizer.step()
        _synchronize(device)
        step_end = time.perf_counter()
        loss_value = loss.item()
        if not math.isfinite(loss_value):
            raise FloatingPointError(f"{label}: loss is {loss_value} at step {step}")
        result["losses"].append(loss_value)
        result["step_times"].append(step_end - step_start)
        result["iter_times"].append(step_end - iter_start)
        if log_every and (step % log_every == 0 or step in (1, steps)):
            log(f"[{label}] step {step:5d}/{steps}  loss {loss_value:.6f}  "
                f"opt.step {1e3 * (step_end - step_start):8.3f} ms  "
                f"iteration {1e3 * (step_end - iter_start):8.2f} ms")
        if eval_every and (step % eval_every == 0 or step == steps):
            model.eval()
            val_loss = evaluate(model, corpus, batch_size, seed + 1, device)
            model.train()
            result["val_losses"].append((step, val_loss))
            log(f"[{label}] step {step:5d}/{steps}  validation loss {val_loss:.6f}")
    return result


def compare_curves(reference, other) -> dict:
    """Differences between two runs' loss curves, and how many leading steps agree exactly."""
    abs_diffs = [abs(a - b) for a, b in zip(reference, other)]
    rel_diffs = [d / abs(a) for d, a in zip(abs_diffs, reference)]
    identical_prefix = next((i for i, d in enumerate(abs_diffs) if d != 0), len(abs_diffs))
    first10 = slice(0, 10)
    return {
        "max_abs": max(abs_diffs),
        "max_rel": max(rel_diffs),
        "max_abs_first10": max(abs_diffs[first10]),
        "max_rel_first10": max(rel_diffs[first10]),
        "identical_steps": identical_prefix,
    }


def summarize_times(seconds) -> dict:
    # Step 1 allocates the optimizer state, so the mean leaves it out (the median is robust).
    steady = seconds[1:] or seconds
    return {"mean": statistics.fmean(steady), "median": statistics.median(seconds)}


# ---------------------------------------------------------------------------------------------
# Plot


def _require_matplotlib():
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise SystemExit("--plot needs matplotlib: pip install matplotlib") from None


def plot_runs(runs, path, title=""):
    """One PNG: the loss curves on the left, the optimizer step times on the right."""
    _require_matplotlib()
    # A bare Figure renders with the Agg canvas and leaves pyplot's global backend alone.
    from matplotlib.figure import Figure
    from matplotlib.ticker import FormatStrFormatter

    fig = Figure(figsize=(12, 4.5))
    loss_axes, time_axes = fig.subplots(1, 2)
    # A wide pale line under a thin dashed one, so that coinciding curves stay both visible.
    styles = [dict(color="C0", linewidth=2.5, alpha=0.6),
              dict(color="C1", linewidth=1.0, linestyle="--")]
    for run, style in zip(runs, styles):
        steps = range(1, len(run["losses"]) + 1)
        loss_axes.plot(steps, run["losses"], label=run["label"], **style)
        if run["val_losses"]:
            val_steps, val_losses = zip(*run["val_losses"])
            loss_axes.plot(val_steps, val_losses, marker="o", markersize=3,
                           label=f"{run['label']} (validation)", **style)
        time_axes.plot(steps, [1e3 * t for t in run["step_times"]], label=run["label"],
                       **style)
    loss_axes.set(xlabel="step", ylabel="training loss (nats/char)", title="loss")
    time_axes.set(xlabel="step", ylabel="optimizer.step() time (ms)", yscale="log",
                  title="optimizer step time")
    for axis_formatter in (time_axes.yaxis.set_major_formatter,
                           time_axes.yaxis.set_minor_formatter):
        axis_formatter(FormatStrFormatter("%g"))  # 0.6, 2, 4 rather than 6x10^-1 on a log axis
    for axes in (loss_axes, time_axes):
        axes.grid(alpha=0.3)
        axes.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


# ---------------------------------------------------------------------------------------------
# Command line


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Train a character-level Transformer LM; compare optimizers.")
    optim = parser.add_argument_group("optimizer")
    optim.add_argument("--optim", default="fusedoptim.Adam",
                       help="dotted optimizer class (default: %(default)s)")
    optim.add_argument("--compare", metavar="OTHER_CLASS",
                       help="also train with this class from the same weights and batches")
    optim.add_argument("--lr", type=float, default=1e-3, help="(default: %(default)s)")
    optim.add_argument("--weight-decay", type=float, help="passed only when given")
    optim.add_argument("--optim-kwargs", metavar="JSON",
                       help='other constructor arguments, e.g. \'{"betas": [0.9, 0.95]}\'')
    training = parser.add_argument_group("training")
    training.add_argument("--steps", type=int, default=200, help="(default: %(default)s)")
    training.add_argument("--batch-size", type=int, default=32, help="(default: %(default)s)")
    training.add_argument("--seed", type=int, default=0,
                          help="weights, batch order and sampling (default: %(default)s)")
    training.add_argument("--device", default="cpu", help="(default: %(default)s)")
    training.add_argument("--dtype", choices=sorted(DTYPES), default="float32",
                          help="parameter dtype (default: %(default)s)")
    training.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    training.add_argument("--eval-every", type=int, default=0, metavar="N",
                          help="validation loss every N steps (default: never)")
    training.add_argument("--log-every", type=int, default=10, metavar="N",
                          help="print every N steps, 0 for the summary only "
                               "(default: %(default)s)")
    training.add_argument("--data", default=str(DEFAULT_DATA_PATH),
                          help="UTF-8 text (default: Shakespeare's Sonnets)")
    model = parser.add_argument_group("model")
    model.add_argument("--context", type=int, default=64,
                       help="characters per sequence (default: %(default)s)")
    model.add_argument("--d-model", type=int, default=128, help="(default: %(default)s)")
    model.add_argument("--n-layers", type=int, default=2, help="(default: %(default)s)")
    model.add_argument("--n-heads", type=int, default=4, help="(default: %(default)s)")
    output = parser.add_argument_group("output")
    output.add_argument("--plot", metavar="PATH", help="write the curves to this PNG")
    output.add_argument("--sample", type=int, default=0, metavar="N",
                        help="generate N characters with the (first) trained model")
    output.add_argument("--temperature", type=float, default=0.8,
                        help="for --sample, 0 for greedy (default: %(default)s)")
    args = parser.parse_args(argv)

    # Bad arguments fail here with a usage message, not with a traceback after loading data.
    if args.steps < 1:
        parser.error("--steps must be at least 1")
    if args.d_model % args.n_heads:
        parser.error(f"--d-model {args.d_model} is not divisible by --n-heads {args.n_heads}")
    for path in filter(None, (args.optim, args.compare)):
        try:
            resolve_optimizer_class(path)
        except (ImportError, ValueError) as error:
            parser.error(f"{path}: {error}")
    try:
        build_optimizer_kwargs(args.lr, args.weight_decay, args.optim_kwargs)
    except ValueError as error:
        parser.error(f"--optim-kwargs: {error}")
    return args


def run_experiment(args, log=print) -> dict:
    """Train with ``args.optim`` (and ``args.compare``); return the runs and their comparison."""
    if args.plot:
        _require_matplotlib()  # before training, not after
    if args.threads:
        torch.set_num_threads(args.threads)
    optimizer_paths = [args.optim] + ([args.compare] if args.compare else [])
    optimizer_classes = [resolve_optimizer_class(path) for path in optimizer_paths]
    kwargs = build_optimizer_kwargs(args.lr, args.weight_decay, args.optim_kwargs)
    corpus = CharCorpus(load_text(args.data))
    initial_model = build_model(corpus.vocab_size, args.context, args.d_model, args.n_layers,
                                args.n_heads, args.seed, args.device, DTYPES[args.dtype])
    log(f"{len(corpus.train_ids)} training characters, vocabulary {corpus.vocab_size}, "
        f"{sum(p.numel() for p in initial_model.parameters())} parameters ({args.dtype}), "
        f"{torch.get_num_threads()} threads, optimizer kwargs {kwargs}")

    runs, models = [], []
    for path, optimizer_class in zip(optimizer_paths, optimizer_classes):
        model = copy.deepcopy(initial_model)
        runs.append(train(model, optimizer_class, kwargs, corpus, steps=args.steps,
                          batch_size=args.batch_size, seed=args.seed, device=args.device,
                          eval_every=args.eval_every, log_every=args.log_every, label=path,
                          log=log))
        models.append(model)

    log("")
    for run in runs:
        times = summarize_times(run["step_times"])
        iteration = summarize_times(run["iter_times"])
        log(f"{run['label']}: final loss {run['losses'][-1]:.6f}, optimizer.step() "
            f"mean {1e3 * times['mean']:.3f} ms / median {1e3 * times['median']:.3f} ms "
            f"(whole iteration median {1e3 * iteration['median']:.1f} ms)")
    comparison = None
    if len(runs) == 2:
        comparison = compare_curves(runs[0]["losses"], runs[1]["losses"])
        comparison["speedup"] = (summarize_times(runs[1]["step_times"])["median"]
                                 / summarize_times(runs[0]["step_times"])["median"])
        log(f"loss curves over {args.steps} steps: max |difference| {comparison['max_abs']:.3g}"
            f" (relative {comparison['max_rel']:.3g}); first 10 steps: "
            f"{comparison['max_abs_first10']:.3g} (relative {comparison['max_rel_first10']:.3g})"
            f"; bit-identical for the first {comparison['identical_steps']} steps")
        log(f"optimizer.step() speedup of {runs[0]['label']} over {runs[1]['label']}: "
            f"{comparison['speedup']:.2f}x (ratio of medians)")

    if args.plot:
        title = f"char-level Transformer LM on {Path(args.data).name}, {args.dtype}"
        if comparison:
            title += f"; max |loss difference| {comparison['max_abs']:.2g}"
        plot_runs(runs, args.plot, title)
        log(f"wrote {args.plot}")

    if args.sample:
        model = models[0].eval()
        generator = torch.Generator().manual_seed(args.seed)
        prompt = corpus.train_ids[:1].to(args.device)  # the text's first character
        text = corpus.decode(model.generate(prompt, args.sample, args.temperature, generator))
        log(f"\nsample from {runs[0]['label']}:\n{text}")
    return {"runs": runs, "comparison": comparison}


def main(argv=None) -> int:
    args = parse_args(argv)
    run_experiment(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
