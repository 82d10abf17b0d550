"""Parameter layouts the benchmark steps: lists of tensor shapes.

A layout is named (`gpt2`, `llama`, `small`) or given as `module:callable`, a function
that returns an `nn.Module`; the benchmark then steps tensors of the shapes of that
module's trainable parameters (the module itself is built on the meta device when the
callable accepts a `device` argument, so a large model costs no memory here).
"""

from __future__ import annotations

import importlib
import inspect
import math
from typing import Callable, Dict, List, Sequence, Tuple

import torch

Shape = Tuple[int, ...]


def gpt2_shapes(n_layer: int = 12, d: int = 768, vocab: int = 50257, ctx: int = 1024
                ) -> List[Shape]:
    """GPT-2 small's blocks (12, d=768) with a quarter of the vocabulary embedding
    (so that four copies of every tensor fit a small machine), the position embedding and
    the final layernorm: 148 tensors, 95.5M params."""
    shapes: List[Shape] = [(vocab // 4, d), (ctx, d)]
    for _ in range(n_layer):
        shapes += [
            (d,), (d,),                  # ln_1 weight, bias
            (d, 3 * d), (3 * d,),        # attn.c_attn W, b
            (d, d), (d,),                # attn.c_proj W, b
            (d,), (d,),                  # ln_2 weight, bias
            (d, 4 * d), (4 * d,),        # mlp.c_fc W, b
            (4 * d, d), (d,),            # mlp.c_proj W, b
        ]
    return shapes + [(d,), (d,)]         # ln_f weight, bias


def llama_shapes(n_layer: int = 24, d: int = 2048, ffn: int = 5632, vocab: int = 32000
                 ) -> List[Shape]:
    """A LLaMA-like model of ~1.36B params: per layer the q, k, v, o projections (d x d),
    the SwiGLU gate, up (ffn x d) and down (d x ffn) matrices and two RMSNorm weights;
    token embedding, final norm and an untied head (vocab x d): 219 tensors."""
    shapes: List[Shape] = [(vocab, d)]
    for _ in range(n_layer):
        shapes += [(d,), (d, d), (d, d), (d, d), (d, d),   # attn norm, q k v o
                   (d,), (ffn, d), (ffn, d), (d, ffn)]     # mlp norm, gate up down
    return shapes + [(d,), (vocab, d)]


def small_shapes(n: int = 10_000, numel: int = 1_000) -> List[Shape]:
    """Many small tensors: per-parameter overhead dominates."""
    return [(numel,)] * n


LAYOUTS: Dict[str, Callable[[], List[Shape]]] = {
    "gpt2": gpt2_shapes,
    "llama": llama_shapes,
    "small": small_shapes,
}


def module_shapes(spec: str) -> List[Shape]:
    """Shapes of the trainable parameters of the nn.Module that `module:callable` returns."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"layout {spec!r}: expected a name from {sorted(LAYOUTS)} or "
                         f"'module:callable' returning an nn.Module")
    try:
        factory = importlib.import_module(module_name)
        for part in attr.split("."):
            factory = getattr(factory, part)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"layout {spec!r}: cannot load {attr!r} from {module_name!r}: {e}"
                         ) from e
    kwargs = {}
    try:
        if "device" in inspect.signature(factory).parameters:
            kwargs["device"] = "meta"
    except (TypeError, ValueError):
        pass
    model = factory(**kwargs)
    if not isinstance(model, torch.nn.Module):
        raise ValueError(f"layout {spec!r}: the callable returned {type(model).__name__}, "
                         f"not an nn.Module")
    shapes = [tuple(p.shape) for p in model.parameters() if p.requires_grad]
    if not shapes:
        raise ValueError(f"layout {spec!r}: the module has no trainable parameters")
    return shapes


def layout_shapes(name: str) -> List[Shape]:
    if name in LAYOUTS:
        return LAYOUTS[name]()
    return module_shapes(name)


def numel_of(shapes: Sequence[Shape]) -> int:
    return sum(math.prod(s) for s in shapes)
