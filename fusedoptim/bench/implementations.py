"""The algorithms the benchmark times and the implementations it compares.

An implementation is a factory `params -> optimizer`. fusedoptim and torch.optim's three
(`foreach=False` for-loop, `foreach=True`, `fused=True`) are always tried; Apex,
DeepSpeed and bitsandbytes are tried when importable and skipped with a note otherwise.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

Factory = Callable[[List[torch.Tensor]], torch.optim.Optimizer]


@dataclass(frozen=True)
class Algo:
    name: str
    cls_name: str                 # class name in torch.optim / fusedoptim
    kwargs: Dict[str, float]
    bytes_per_fp32_elem: int      # memory floor per element per step in fp32
    torch_impls: Tuple[str, ...] = ("torch.for-loop", "torch.foreach")

    @property
    def label(self) -> str:
        """How tables name it: the class, and the option that sets its floor."""
        return f"{self.cls_name} momentum" if self.kwargs.get("momentum") else self.cls_name

    @property
    def num_states(self) -> int:
        """State tensors per param: the floor reads grad + (param + states) and writes
        (param + states), 4 bytes each in fp32."""
        return (self.bytes_per_fp32_elem // 4 - 1) // 2 - 1


_ALL_TORCH = ("torch.for-loop", "torch.foreach", "torch.fused")
# Floors: every param, grad and state element read once and written once (grad only read).
ALGOS: Dict[str, Algo] = {
    "sgd": Algo("sgd", "SGD", {"lr": 1e-3, "momentum": 0.9}, 20, _ALL_TORCH),   # p g buf; p buf
    "adam": Algo("adam", "Adam", {"lr": 1e-3}, 28, _ALL_TORCH),                 # p g m v; p m v
    "adamw": Algo("adamw", "AdamW", {"lr": 1e-3, "weight_decay": 1e-2}, 28, _ALL_TORCH),
    "adagrad": Algo("adagrad", "Adagrad", {"lr": 1e-2}, 20, _ALL_TORCH),        # p g sum; p sum
    "adadelta": Algo("adadelta", "Adadelta", {"lr": 1.0}, 28),
    "adamax": Algo("adamax", "Adamax", {"lr": 2e-3}, 28),
    "asgd": Algo("asgd", "ASGD", {"lr": 1e-2}, 20),
    "nadam": Algo("nadam", "NAdam", {"lr": 2e-3}, 28),
    "radam": Algo("radam", "RAdam", {"lr": 1e-3}, 28),
    "rmsprop": Algo("rmsprop", "RMSprop", {"lr": 1e-2}, 20),
    "rprop": Algo("rprop", "Rprop", {"lr": 1e-2}, 28),
    # Not in torch.optim: "torch.for-loop" is plain torch ops one param at a time, the
    # formulas of fusedoptim's docstrings (fusedoptim/_reference.py).
    "lion": Algo("lion", "Lion", {"lr": 1e-4, "weight_decay": 1e-2}, 20, ("torch.for-loop",)),
    # LAMB's floor counts one pass; its per-tensor trust ratio makes ours two (40 bytes).
    "lamb": Algo("lamb", "LAMB", {"lr": 1e-3}, 28, ("torch.for-loop",)),
}

TORCH_IMPLS: Dict[str, Dict[str, bool]] = {
    "torch.for-loop": {"foreach": False},
    "torch.foreach": {"foreach": True},
    "torch.fused": {"fused": True},
}
THIRD_PARTY = ("apex", "deepspeed", "bitsandbytes")
IMPL_NAMES = ["fusedoptim", *TORCH_IMPLS, *THIRD_PARTY]


class PlainTorchOptimizer(torch.optim.Optimizer):
    """LAMB or Lion in plain torch ops, one param at a time: what a user without fusedoptim
    runs (torch.optim has neither)."""

    def __init__(self, params, algo: Algo, **options):
        import fusedoptim
        probe = getattr(fusedoptim, algo.cls_name)([torch.zeros(1, requires_grad=True)],
                                                   **{**algo.kwargs, **options})
        super().__init__(params, dict(probe.defaults))
        self._algo = algo

    @torch.no_grad()
    def step(self, closure=None):
        from fusedoptim import _reference
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        global_norm = None
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            beta1, beta2 = group["betas"]
            states = [self.state[p] for p in params]
            if self._algo.cls_name == "Lion":
                _reference.lion(params, states, lr=group["lr"], beta1=beta1, beta2=beta2,
                                weight_decay=group["weight_decay"], maximize=group["maximize"])
            else:
                clip = 1.0
                if group["max_grad_norm"]:
                    if global_norm is None:
                        global_norm = torch.linalg.vector_norm(
                            torch.stack([torch.linalg.vector_norm(g.double()) for g in grads]))
                    clip = max(global_norm.item() / group["max_grad_norm"], 1.0)
                _reference.lamb(params, states, lr=group["lr"], beta1=beta1, beta2=beta2,
                                eps=group["eps"], weight_decay=group["weight_decay"],
                                bias_correction=group["bias_correction"],
                                grad_averaging=group["grad_averaging"],
                                decoupled_weight_decay=group["decoupled_weight_decay"],
                                always_adapt=group["always_adapt"], maximize=group["maximize"],
                                clip=clip, step_dtype=torch.float32)


# (module, {algo: class name}) per third-party library and device type. Adam/AdamW share a
# class with a mode flag; `_MODE_FLAGS` sets it. 32-bit bitsandbytes optimizers keep fp32
# states, the like-for-like comparison.
_THIRD_PARTY_CLASSES: Dict[Tuple[str, str], Tuple[str, Dict[str, str]]] = {
    ("apex", "cuda"): ("apex.optimizers", {
        "adam": "FusedAdam", "adamw": "FusedAdam", "sgd": "FusedSGD", "lamb": "FusedLAMB"}),
    ("deepspeed", "cuda"): ("deepspeed.ops.adam", {"adam": "FusedAdam", "adamw": "FusedAdam"}),
    ("deepspeed", "cpu"): ("deepspeed.ops.adam", {
        "adam": "DeepSpeedCPUAdam", "adamw": "DeepSpeedCPUAdam"}),
    ("bitsandbytes", "cuda"): ("bitsandbytes.optim", {
        "adam": "Adam32bit", "adamw": "AdamW32bit", "sgd": "SGD32bit", "lion": "Lion32bit",
        "lamb": "LAMB32bit", "adagrad": "Adagrad32bit", "rmsprop": "RMSprop32bit"}),
}
_MODE_FLAGS: Dict[Tuple[str, str], Dict[str, Dict[str, bool]]] = {
    ("apex", "FusedAdam"): {"adam": {"adam_w_mode": False}, "adamw": {"adam_w_mode": True}},
    ("deepspeed", "FusedAdam"): {"adam": {"adam_w_mode": False}, "adamw": {"adam_w_mode": True}},
    ("deepspeed", "DeepSpeedCPUAdam"): {"adam": {"adamw_mode": False},
                                        "adamw": {"adamw_mode": True}},
}


def load_fusedoptim(cpu_capability: Optional[str] = None):
    """Import fusedoptim; return (module or None, reason-if-None)."""
    try:
        import fusedoptim
    except Exception as e:  # ImportError, or a broken extension
        return None, f"{type(e).__name__}: {e}"
    if cpu_capability:
        fusedoptim.set_cpu_capability(cpu_capability)
    return fusedoptim, None


def make_factory(impl: str, algo: Algo, device: torch.device, options: Dict[str, object],
                 fusedoptim_options: Dict[str, object], fusedoptim_mod=None
                 ) -> Tuple[Optional[Factory], Optional[str]]:
    """(factory, None) if `impl` can run `algo` on `device`, else (None, why not)."""
    kwargs = {**algo.kwargs, **options}
    if impl == "fusedoptim":
        if fusedoptim_mod is None:
            return None, "fusedoptim is not importable"
        cls = getattr(fusedoptim_mod, algo.cls_name)
        return (lambda params: cls(params, **kwargs, **fusedoptim_options)), None
    if impl in TORCH_IMPLS:
        if impl not in algo.torch_impls:
            return None, f"torch has no {impl.split('.')[1]} {algo.cls_name}"
        if impl == "torch.fused" and algo.name == "adagrad" and device.type != "cpu":
            return None, "torch's fused Adagrad is CPU only"
        if not hasattr(torch.optim, algo.cls_name):
            return (lambda params: PlainTorchOptimizer(params, algo, **options)), None
        cls = getattr(torch.optim, algo.cls_name)
        return (lambda params: cls(params, **kwargs, **TORCH_IMPLS[impl])), None
    entry = _THIRD_PARTY_CLASSES.get((impl, device.type))
    if entry is None or algo.name not in entry[1]:
        return None, f"{impl} has no {algo.cls_name} for {device.type}"
    module_name, classes = entry
    try:
        module = importlib.import_module(module_name)
        cls = getattr(module, classes[algo.name])
    except Exception as e:  # not installed, or installed without its compiled ops
        return None, f"{impl} not importable ({type(e).__name__}: {e})"
    extra = _MODE_FLAGS.get((impl, classes[algo.name]), {}).get(algo.name, {})
    return (lambda params: cls(params, **kwargs, **extra)), None


def resolve_impls(requested: Sequence[str], algo: Algo, device: torch.device,
                  options: Dict[str, object], fusedoptim_options: Dict[str, object],
                  fusedoptim_mod) -> Tuple[Dict[str, Factory], Dict[str, str]]:
    """The requested implementations that can run `algo` here, and a note for each other."""
    factories: Dict[str, Factory] = {}
    skipped: Dict[str, str] = {}
    for impl in requested:
        factory, why_not = make_factory(impl, algo, device, options, fusedoptim_options,
                                        fusedoptim_mod)
        if factory is None:
            skipped[impl] = why_not
        else:
            factories[impl] = factory
    return factories, skipped
