"""fusedoptim in the PyTorch ecosystem, side by side with torch.optim: every LR scheduler of
torch.optim.lr_scheduler and torch.optim.swa_utils, torch.amp.GradScaler (skipped overflow steps
included), and checkpoints (torch.save/torch.load with weights_only=True) that resume runs
exactly, load across implementations, devices and state layouts, and never alias their source.

test_state_dict.py covers the state_dict format, in-memory round trips and aliasing of torch's
dicts; test_interface.py a few schedulers per optimizer. This file covers the rest of those
workflows end to end."""

from __future__ import annotations

import copy
import dataclasses
import inspect
from typing import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim import lr_scheduler, swa_utils

import fusedoptim
from helpers import (
    accepts,
    as_params,
    assert_fused_path,
    assert_params_match,
    assert_runs_match,
    assert_state_dicts_match,
    assert_states_match,
    fused_cls,
    interface_kwargs,
    make_grad_values,
    make_param_values,
    outcome,
    run_steps,
    set_grads,
    tol_for,
    torch_cls,
)
from optim_configs import (
    ALL_CONFIGS,
    OPTIM_NAMES,
    REPRESENTATIVE_CONFIGS,
    TensorHP,
    config_ids,
)

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

# CUDA params take fusedoptim's reference path, which warns once per optimizer.
ignore_reference_path_warning = pytest.mark.filterwarnings(
    "ignore::fusedoptim.ReferencePathWarning"
)


@pytest.fixture(autouse=True)
def _one_thread():
    """These tests step tiny tensors: with two threads every parallel region (BatchNorm opens one
    per call, whatever the size) waits for a time slice on the shared 2-core machine and the file
    runs several times slower. Results do not depend on the thread count (test_isa, test_lbfgs)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ----------------------------------------------------------------------------- comparisons


def assert_bitwise_equal(actual, expected, path="value"):
    """Same structure, same types, and tensors equal bit for bit (dtype and device included)."""
    if isinstance(expected, torch.Tensor):
        assert isinstance(actual, torch.Tensor), f"{path}: {type(actual)} is not a Tensor"
        assert (actual.dtype, actual.shape, actual.device) == (expected.dtype, expected.shape, expected.device), (
            f"{path}: {actual.dtype}{tuple(actual.shape)}@{actual.device} != "
            f"{expected.dtype}{tuple(expected.shape)}@{expected.device}")
        assert torch.equal(actual, expected), f"{path}: {actual} != {expected}"
    elif isinstance(expected, dict):
        assert isinstance(actual, dict) and list(actual) == list(expected), (path, list(actual), list(expected))
        for key in expected:
            assert_bitwise_equal(actual[key], expected[key], f"{path}[{key!r}]")
    elif isinstance(expected, (list, tuple)):
        assert type(actual) is type(expected) and len(actual) == len(expected), (path, actual, expected)
        for i, (a, e) in enumerate(zip(actual, expected)):
            assert_bitwise_equal(a, e, f"{path}[{i}]")
    else:
        assert type(actual) is type(expected) and actual == expected, (path, actual, expected)


def bitwise_equal(actual, expected):
    try:
        assert_bitwise_equal(actual, expected)
    except AssertionError:
        return False
    return True


def through_file(obj, path):
    """What a checkpoint goes through: torch.save to a file, torch.load with weights_only=True."""
    torch.save(obj, path)
    return torch.load(path, weights_only=True)


def detached(params):
    return [p.detach() for p in params]


def plain(value):
    """A hyperparameter as a comparable value that keeps whether it was a Tensor."""
    if isinstance(value, torch.Tensor):
        return ("tensor", value.dtype, value.item())
    if isinstance(value, (tuple, list)):
        return type(value)(plain(v) for v in value)
    return value


def assert_same_outcome(fused_outcome, torch_outcome):
    """Both ran, or both raised the same exception type with the same message."""
    (kind_f, value_f), (kind_t, value_t) = fused_outcome, torch_outcome
    if kind_t == "raise":
        assert kind_f == "raise", f"torch raised {value_t!r}, fusedoptim did not"
        assert type(value_f) is type(value_t) and str(value_f) == str(value_t), (value_f, value_t)
    else:
        assert kind_f == "ok", f"fusedoptim raised {value_f!r}, torch did not"


# ====================================================================== LR schedulers, SWA

SCHED_SHAPES = [(7,), (3, 4), (5,)]
SCHED_STEPS = 16
SECOND_GROUP_LR_FACTOR = 0.5


@dataclasses.dataclass(frozen=True)
class SchedulerCase:
    name: str
    cls: type
    make: Callable  # optimizer -> scheduler
    # how the training loop calls scheduler.step(), as torch documents for this scheduler:
    # "plain" scheduler.step(), "metric" scheduler.step(validation metric), "fractional"
    # scheduler.step(epoch + i / iters_per_epoch)
    advance: str = "plain"
    cycles_momentum: bool = False


def _cyclic(mode, cycle_momentum, **kwargs):
    return lambda o: lr_scheduler.CyclicLR(
        o, base_lr=[0.01, 0.004], max_lr=[0.1, 0.05], step_size_up=3, mode=mode,
        cycle_momentum=cycle_momentum, base_momentum=0.8, max_momentum=0.95, **kwargs)


def _one_cycle(cycle_momentum, **kwargs):
    return lambda o: lr_scheduler.OneCycleLR(
        o, max_lr=[0.1, 0.05], total_steps=SCHED_STEPS + 1, cycle_momentum=cycle_momentum,
        base_momentum=0.8, max_momentum=0.95, **kwargs)


SCHEDULER_CASES = [
    SchedulerCase("LambdaLR", lr_scheduler.LambdaLR,
                  lambda o: lr_scheduler.LambdaLR(o, [lambda e: 1 / (1 + e), lambda e: 0.9 ** e])),
    SchedulerCase("MultiplicativeLR", lr_scheduler.MultiplicativeLR,
                  lambda o: lr_scheduler.MultiplicativeLR(o, lambda e: 0.9 if e % 2 else 0.97)),
    SchedulerCase("StepLR", lr_scheduler.StepLR, lambda o: lr_scheduler.StepLR(o, step_size=3, gamma=0.5)),
    SchedulerCase("MultiStepLR", lr_scheduler.MultiStepLR,
                  lambda o: lr_scheduler.MultiStepLR(o, milestones=[2, 5, 9], gamma=0.3)),
    SchedulerCase("ConstantLR", lr_scheduler.ConstantLR,
                  lambda o: lr_scheduler.ConstantLR(o, factor=0.25, total_iters=4)),
    SchedulerCase("LinearLR", lr_scheduler.LinearLR,
                  lambda o: lr_scheduler.LinearLR(o, start_factor=0.2, end_factor=0.9, total_iters=6)),
    SchedulerCase("ExponentialLR", lr_scheduler.ExponentialLR, lambda o: lr_scheduler.ExponentialLR(o, gamma=0.85)),
    SchedulerCase("PolynomialLR", lr_scheduler.PolynomialLR,
                  lambda o: lr_scheduler.PolynomialLR(o, total_iters=10, power=2.0)),
    SchedulerCase("CosineAnnealingLR", lr_scheduler.CosineAnnealingLR,
                  lambda o: lr_scheduler.CosineAnnealingLR(o, T_max=5, eta_min=1e-3)),
    SchedulerCase("CosineAnnealingWarmRestarts", lr_scheduler.CosineAnnealingWarmRestarts,
                  lambda o: lr_scheduler.CosineAnnealingWarmRestarts(o, T_0=3, T_mult=2, eta_min=1e-3)),
    SchedulerCase("CosineAnnealingWarmRestarts-fractional-epochs", lr_scheduler.CosineAnnealingWarmRestarts,
                  lambda o: lr_scheduler.CosineAnnealingWarmRestarts(o, T_0=2, eta_min=1e-3),
                  advance="fractional"),
    SchedulerCase("SequentialLR", lr_scheduler.SequentialLR,
                  lambda o: lr_scheduler.SequentialLR(
                      o, [lr_scheduler.LinearLR(o, start_factor=0.25, total_iters=4),
                          lr_scheduler.ExponentialLR(o, gamma=0.9)], milestones=[5])),
    SchedulerCase("ChainedScheduler", lr_scheduler.ChainedScheduler,
                  lambda o: lr_scheduler.ChainedScheduler(
                      [lr_scheduler.ConstantLR(o, factor=0.5, total_iters=3),
                       lr_scheduler.ExponentialLR(o, gamma=0.9)], optimizer=o)),
    SchedulerCase("ReduceLROnPlateau", lr_scheduler.ReduceLROnPlateau,
                  lambda o: lr_scheduler.ReduceLROnPlateau(
                      o, factor=0.5, patience=1, threshold=0.05, cooldown=1, min_lr=[1e-4, 1e-5]),
                  advance="metric"),
    SchedulerCase("CyclicLR-triangular", lr_scheduler.CyclicLR, _cyclic("triangular", False)),
    SchedulerCase("CyclicLR-triangular2-momentum", lr_scheduler.CyclicLR,
                  _cyclic("triangular2", True, step_size_down=2), cycles_momentum=True),
    SchedulerCase("CyclicLR-exp_range-momentum", lr_scheduler.CyclicLR,
                  _cyclic("exp_range", True, gamma=0.9), cycles_momentum=True),
    SchedulerCase("OneCycleLR-cos-momentum", lr_scheduler.OneCycleLR, _one_cycle(True), cycles_momentum=True),
    SchedulerCase("OneCycleLR-linear-three-phase-momentum", lr_scheduler.OneCycleLR,
                  _one_cycle(True, anneal_strategy="linear", three_phase=True), cycles_momentum=True),
    SchedulerCase("OneCycleLR-no-momentum", lr_scheduler.OneCycleLR, _one_cycle(False)),
    SchedulerCase("SWALR-cos", swa_utils.SWALR,
                  lambda o: swa_utils.SWALR(o, swa_lr=[0.05, 0.02], anneal_epochs=4, anneal_strategy="cos")),
    SchedulerCase("SWALR-linear", swa_utils.SWALR,
                  lambda o: swa_utils.SWALR(o, swa_lr=0.02, anneal_epochs=3, anneal_strategy="linear")),
]


def _public_scheduler_classes():
    """Every public LRScheduler subclass torch.optim defines, found by walking the subclass tree
    and the two scheduler modules, so that a scheduler added to torch later is not missed."""
    modules = (lr_scheduler, swa_utils)
    module_names = {m.__name__ for m in modules}
    found = {
        c for m in modules for c in vars(m).values()
        if inspect.isclass(c) and issubclass(c, lr_scheduler.LRScheduler)
    }
    pending = [lr_scheduler.LRScheduler]
    while pending:
        for sub in pending.pop().__subclasses__():
            pending.append(sub)
            if sub.__module__ in module_names:
                found.add(sub)
    return {c for c in found if c is not lr_scheduler.LRScheduler and not c.__name__.startswith("_")}


def test_scheduler_table_covers_every_torch_scheduler():
    public = _public_scheduler_classes()
    assert {"OneCycleLR", "CyclicLR", "ReduceLROnPlateau", "SequentialLR", "ChainedScheduler", "SWALR"} <= {
        c.__name__ for c in public}
    missing = public - {case.cls for case in SCHEDULER_CASES}
    assert not missing, f"schedulers without a case in SCHEDULER_CASES: {sorted(c.__name__ for c in missing)}"
    assert set(lr_scheduler.__all__) - {"LRScheduler"} <= {c.__name__ for c in public}


def _scheduler_param_groups(params, lr, tensor_lr):
    """Two groups with different lrs; a Tensor lr is a separate tensor per group (as a user
    passing lr tensors would have them), kept by reference and fill_-ed by the schedulers."""
    second = lr * SECOND_GROUP_LR_FACTOR
    if tensor_lr:
        return [{"params": params[:2], "lr": torch.tensor(lr, dtype=torch.float64)},
                {"params": params[2:], "lr": torch.tensor(second, dtype=torch.float64)}]
    return [{"params": params[:2]}, {"params": params[2:], "lr": second}]


def _validation_metric(params):
    # A metric that depends on the run: ReduceLROnPlateau's decisions follow the params.
    return float(sum(p.detach().double().square().sum() for p in params))


def _advance(case, scheduler, step, params):
    if case.advance == "metric":
        scheduler.step(_validation_metric(params))
    elif case.advance == "fractional":
        iters_per_epoch = 4
        scheduler.step(step // iters_per_epoch + (step % iters_per_epoch) / iters_per_epoch)
    else:
        scheduler.step()


def _hyperparameters(opt, scheduler):
    """Everything a scheduler writes: get_last_lr() and each group's lr, momentum, betas."""
    groups = [tuple(plain(g.get(k)) for k in ("lr", "momentum", "betas")) for g in opt.param_groups]
    return plain(scheduler.get_last_lr()), groups


def _scheduler_kwargs(optim):
    kwargs = interface_kwargs(optim)
    if optim == "SGD":
        kwargs["weight_decay"] = 0.01
    return kwargs


def _run_scheduled(cls, optim, case, tensor_lr, values, grads, *, resume_at=None, checkpoint_path=None):
    """Train with `case`'s scheduler; returns (optimizer, params, scheduler, per-step history).

    resume_at=k: after k steps the optimizer and scheduler go through a checkpoint file and the
    run continues on fresh objects, restored in the order torch documents (construct the
    optimizer and scheduler, load the scheduler's state_dict, then the optimizer's)."""
    kwargs = _scheduler_kwargs(optim)
    params = as_params(values)

    def build(ps):
        opt = cls(_scheduler_param_groups(ps, kwargs["lr"], tensor_lr), **kwargs)
        scheduler = case.make(opt)
        assert type(scheduler) is case.cls
        return opt, scheduler

    opt, scheduler = build(params)
    history = [_hyperparameters(opt, scheduler)]
    for step, step_grads in enumerate(grads):
        if step == resume_at:
            checkpoint = through_file(
                {"optimizer": opt.state_dict(), "scheduler": scheduler.state_dict()}, checkpoint_path)
            params = as_params(detached(params))
            opt, scheduler = build(params)
            scheduler.load_state_dict(checkpoint["scheduler"])
            opt.load_state_dict(checkpoint["optimizer"])
        set_grads(params, step_grads)
        opt.step()
        _advance(case, scheduler, step, params)
        history.append(_hyperparameters(opt, scheduler))
    return opt, params, scheduler, history


def _scheduler_data(seed=50):
    return (make_param_values(SCHED_SHAPES, torch.float64, seed=seed),
            make_grad_values(SCHED_SHAPES, torch.float64, num_steps=SCHED_STEPS, seed=seed * 100))


# Schedulers reach an optimizer only through its param_groups, so each lr-only schedule runs on
# a few optimizers that read lr differently (plain, per-step eta, lr_decay, seeded step sizes);
# the momentum-cycling ones run on every optimizer, as each reads momentum or betas its own way.
LR_SCHEDULE_OPTIMS = ("SGD", "Adam", "Adagrad", "ASGD", "Rprop")
SCHEDULER_RUNS = [
    (case, optim) for case in SCHEDULER_CASES
    for optim in (OPTIM_NAMES if case.cycles_momentum else LR_SCHEDULE_OPTIMS)
]


@pytest.mark.parametrize("tensor_lr", [False, True], ids=["float_lr", "tensor_lr"])
@pytest.mark.parametrize("case,optim", SCHEDULER_RUNS, ids=[f"{c.name}-{o}" for c, o in SCHEDULER_RUNS])
def test_scheduler_matches_torch(case, optim, tensor_lr):
    """The same lrs (get_last_lr and every group's lr, momentum and betas) after every step and
    the same params and state at the end; where torch refuses the combination (momentum cycling
    without momentum or betas) fusedoptim raises the same error."""
    values, grads = _scheduler_data()
    result_t = outcome(lambda: _run_scheduled(torch_cls(optim), optim, case, tensor_lr, values, grads))
    result_f = outcome(lambda: _run_scheduled(fused_cls(optim), optim, case, tensor_lr, values, grads))
    assert_same_outcome(result_f, result_t)
    if result_t[0] == "raise":
        assert case.cycles_momentum and not (accepts(optim, "momentum") or accepts(optim, "betas"))
        return
    o_t, p_t, _, history_t = result_t[1]
    o_f, p_f, _, history_f = result_f[1]
    assert history_f == history_t
    lrs = [lr for lrs, _ in history_t for lr in lrs]
    assert len(set(lrs)) > 2, "the schedule never changed the lr"
    if case.cycles_momentum:
        assert len({groups[0][1:] for _, groups in history_t}) > 2, "momentum was not cycled"
    assert_runs_match(o_f, o_t, p_f, p_t)
    assert_fused_path(o_f)


def test_reduce_lr_on_plateau_case_reduces_several_times():
    """Guards the ReduceLROnPlateau case above: its metric does trigger reductions."""
    case = next(c for c in SCHEDULER_CASES if c.cls is lr_scheduler.ReduceLROnPlateau)
    values, grads = _scheduler_data()
    *_, history = _run_scheduled(fusedoptim.SGD, "SGD", case, False, values, grads)
    assert len({lrs[0] for lrs, _ in history}) >= 3


TENSOR_BETAS_OPTIMS = ("Adam", "AdamW", "Adamax", "NAdam", "RAdam")


@pytest.mark.parametrize("schedule", [None, "OneCycleLR"], ids=["no_schedule", "OneCycleLR"])
@pytest.mark.parametrize("betas_dtype", [torch.float32, torch.float64], ids=["betas32", "betas64"])
@pytest.mark.parametrize("optim", TENSOR_BETAS_OPTIMS)
def test_momentum_cycling_with_tensor_betas(optim, betas_dtype, schedule):
    """Momentum cycling writes a float beta1 next to a Tensor beta2 (torch's own Adam refuses
    such betas at construction, not in the step): the same as torch, and so is the run without
    a schedule that it starts from. (NAdam, RAdam and Adamax take torch's own step while a
    beta is a Tensor: their _reference_group.)"""
    values, grads = _scheduler_data(seed=52)

    def run(cls):
        params = as_params(values)
        opt = cls(params, lr=0.01, betas=(torch.tensor(0.9, dtype=betas_dtype), torch.tensor(0.99, dtype=betas_dtype)))
        scheduler = None if schedule is None else lr_scheduler.OneCycleLR(
            opt, max_lr=0.05, total_steps=SCHED_STEPS + 1, base_momentum=0.8, max_momentum=0.95)
        betas = []
        for step_grads in grads:
            set_grads(params, step_grads)
            opt.step()
            if scheduler is not None:
                scheduler.step()
            betas.append(plain(opt.param_groups[0]["betas"]))
        return opt, params, betas

    o_t, p_t, betas_t = run(torch_cls(optim))
    o_f, p_f, betas_f = run(fused_cls(optim))
    assert betas_f == betas_t
    assert_runs_match(o_f, o_t, p_f, p_t)


# (optimizer, Tensor lr): each kind of lr goes through the checkpoint once
RESUME_SETUPS = [("SGD", False), ("Adam", True)]


@pytest.mark.parametrize("optim,tensor_lr", RESUME_SETUPS, ids=["SGD-float_lr", "Adam-tensor_lr"])
@pytest.mark.parametrize("case", SCHEDULER_CASES, ids=[c.name for c in SCHEDULER_CASES])
def test_scheduler_state_dict_round_trip(case, optim, tensor_lr, tmp_path):
    """Optimizer + scheduler state_dicts saved mid-run through a file and restored on fresh
    objects: the same lrs and params as torch.optim doing the same, and the same lrs as the
    uninterrupted run."""
    values, grads = _scheduler_data(seed=51)
    resume_at = SCHED_STEPS // 2

    def resumed(cls, name):
        return _run_scheduled(cls, optim, case, tensor_lr, values, grads, resume_at=resume_at,
                              checkpoint_path=tmp_path / f"{name}.pt")

    o_t, p_t, _, history_t = resumed(torch_cls(optim), "torch")
    o_f, p_f, _, history_f = resumed(fused_cls(optim), "fused")
    assert history_f == history_t
    assert_runs_match(o_f, o_t, p_f, p_t)
    *_, history_uninterrupted = _run_scheduled(fused_cls(optim), optim, case, tensor_lr, values, grads)
    assert history_f == history_uninterrupted


def _small_model(seed, dtype=torch.float64):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8, bias=False), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 2)).to(dtype)


def _batches(count, dtype=torch.float64, seed=60):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(6, 4, generator=g, dtype=dtype), torch.randn(6, 2, generator=g, dtype=dtype))
            for _ in range(count)]


def _train_swa(cls, optim):
    """torch's documented SWA recipe: a regular schedule, then SWALR with an AveragedModel
    updated every epoch, an EMA model updated every step, and update_bn at the end."""
    model = _small_model(seed=3)
    loader = _batches(3)
    opt = cls(model.parameters(), **interface_kwargs(optim))
    swa_model = swa_utils.AveragedModel(model)
    ema_model = swa_utils.AveragedModel(model, multi_avg_fn=swa_utils.get_ema_multi_avg_fn(0.9), use_buffers=True)
    ema_model_per_param = swa_utils.AveragedModel(model, avg_fn=swa_utils.get_ema_avg_fn(0.8))
    scheduler = lr_scheduler.CosineAnnealingLR(opt, T_max=4)
    swa_scheduler = swa_utils.SWALR(opt, swa_lr=interface_kwargs(optim)["lr"] * 0.5, anneal_epochs=2)
    swa_start, lrs = 2, []
    for epoch in range(5):
        for x, y in loader:
            opt.zero_grad()
            F.mse_loss(model(x), y).backward()
            opt.step()
            ema_model.update_parameters(model)
            ema_model_per_param.update_parameters(model)
        if epoch >= swa_start:
            swa_model.update_parameters(model)
            swa_scheduler.step()
        else:
            scheduler.step()
        lrs.append(plain([g["lr"] for g in opt.param_groups]))
    swa_utils.update_bn([x for x, _ in loader], swa_model)
    return opt, model, {"swa": swa_model, "ema": ema_model, "ema_per_param": ema_model_per_param}, lrs


@pytest.mark.parametrize("optim", OPTIM_NAMES)
def test_swa_utils_match_torch(optim):
    o_t, model_t, averaged_t, lrs_t = _train_swa(torch_cls(optim), optim)
    o_f, model_f, averaged_f, lrs_f = _train_swa(fused_cls(optim), optim)
    assert lrs_f == lrs_t
    assert_runs_match(o_f, o_t, list(model_f.parameters()), list(model_t.parameters()))
    for name in averaged_t:
        sd_t, sd_f = averaged_t[name].state_dict(), averaged_f[name].state_dict()
        assert list(sd_f) == list(sd_t)
        for key in sd_t:
            torch.testing.assert_close(sd_f[key], sd_t[key], rtol=1e-10, atol=1e-12, msg=lambda m: f"{name}.{key}: {m}")
    # update_bn recomputed the averaged model's BatchNorm statistics
    bn = averaged_f["swa"].module[1]
    assert int(bn.num_batches_tracked) == 3
    assert not torch.equal(bn.running_mean, model_f[1].running_mean)


# ============================================================================ GradScaler

AMP_SHAPES = [(7,), (3, 4), (5,)]
AMP_STEPS = 9
# step -> the non-finite value written into one grad: a skipped first step (no state may be
# created), a skip after growth, and two skips in a row (the scale backs off twice)
AMP_OVERFLOWS = {0: float("inf"), 3: float("nan"), 6: float("-inf"), 7: float("inf")}
# (params, state) tolerances. bf16: fusedoptim rounds an update once, torch after every op
# (docs/design.md, Numerics), and a state that comes out of cancellation (RMSprop's centered
# momentum buffer) amplifies torch's extra roundings; the skipped steps are checked bit for bit.
AMP_TOLERANCES = {
    torch.float32: (dict(rtol=1e-5, atol=1e-6), dict(rtol=1e-5, atol=1e-6)),
    torch.bfloat16: (dict(rtol=2e-2, atol=2e-2), dict(rtol=0.1, atol=0.1)),
    torch.float16: (dict(rtol=2e-2, atol=2e-2), dict(rtol=0.1, atol=0.1)),
}


def _snapshot(opt, params):
    """Params and optimizer state, copied (the state in torch's key order)."""
    return ([p.detach().clone() for p in params],
            [{k: v.clone() if torch.is_tensor(v) else v for k, v in opt.state[p].items()} if p in opt.state else None
             for p in params])


def _scaler_state(scaler):
    return {k: plain(v) for k, v in scaler.state_dict().items()}


def _step_counts(snapshot):
    """Which params have state, and their 'step' counts."""
    return [None if state is None else float(state.get("step", -1)) for state in snapshot[1]]


def _amp_run(cls, kwargs, dtype, unscale_and_clip, device="cpu", overflows=AMP_OVERFLOWS):
    """The AMP recipe from torch's docs: scale(loss).backward(), [unscale_, clip_grad_norm_],
    scaler.step(opt), scaler.update(); a non-finite value is injected into a grad on the steps of
    `overflows`. Checks on the way that every skipped step left params and state untouched."""
    values = make_param_values(AMP_SHAPES, dtype, seed=70)
    targets = make_grad_values(AMP_SHAPES, torch.float32, num_steps=AMP_STEPS, seed=7000)
    params = [v.to(device).requires_grad_() for v in values]
    opt = cls(params, **kwargs)
    scaler = torch.amp.GradScaler(device, init_scale=2.0 ** 12, growth_interval=2)
    history = []
    for step in range(AMP_STEPS):
        opt.zero_grad()
        loss = sum(0.5 * ((p.float() - t.to(device)) ** 2).sum() for p, t in zip(params, targets[step]))
        scaler.scale(loss).backward()
        if step in overflows:
            params[step % len(params)].grad.view(-1)[step % 3] = overflows[step]
        before = _snapshot(opt, params)
        if unscale_and_clip:
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(params, max_norm=1.0)
        scaler.step(opt)
        scaler.update()
        after = _snapshot(opt, params)
        if step in overflows:
            assert_bitwise_equal(after, before, f"step {step} (skipped)")
        else:
            assert not bitwise_equal(after[0], before[0]), f"step {step} did not update the params"
        history.append((_scaler_state(scaler), after))
    return opt, params, scaler, history


def _assert_amp_runs_match(run_f, run_t, dtype):
    o_f, p_f, scaler_f, history_f = run_f
    o_t, p_t, scaler_t, history_t = run_t
    params_tol, state_tol = AMP_TOLERANCES[dtype]
    for step, ((scaler_state_f, snapshot_f), (scaler_state_t, snapshot_t)) in enumerate(zip(history_f, history_t)):
        assert scaler_state_f == scaler_state_t, step
        assert _step_counts(snapshot_f) == _step_counts(snapshot_t), step
        assert_params_match(snapshot_f[0], snapshot_t[0], tol=params_tol)
    assert_states_match(o_f, o_t, p_f, p_t, tol=state_tol)
    assert scaler_f.get_scale() < 2.0 ** 12, "no step overflowed"


AMP_SETUPS = [(torch.float32, False), (torch.float32, True), (torch.bfloat16, False)]


@pytest.mark.parametrize("dtype,unscale_and_clip", AMP_SETUPS, ids=["fp32-step", "fp32-unscale-clip-step", "bf16-step"])
@pytest.mark.parametrize("optim", OPTIM_NAMES)
def test_grad_scaler_matches_torch(optim, dtype, unscale_and_clip):
    kwargs = interface_kwargs(optim)
    run_t = _amp_run(torch_cls(optim), kwargs, dtype, unscale_and_clip)
    run_f = _amp_run(fused_cls(optim), kwargs, dtype, unscale_and_clip)
    _assert_amp_runs_match(run_f, run_t, dtype)
    assert_fused_path(run_f[0])


@requires_cuda
@ignore_reference_path_warning
@pytest.mark.parametrize("optim", ["Adam", "AdamW", "SGD", "RMSprop", "LAMB"])
def test_grad_scaler_on_cuda_matches_torch(optim):
    kwargs = interface_kwargs(optim)
    run_t = _amp_run(torch_cls(optim), kwargs, torch.float32, True, device="cuda")
    run_f = _amp_run(fused_cls(optim), kwargs, torch.float32, True, device="cuda")
    _assert_amp_runs_match(run_f, run_t, torch.float32)


@pytest.mark.parametrize("optim", ["Adam", "SGD", "Lion"])
def test_grad_scaler_refuses_fp16_grads_like_torch(optim):
    """Without torch's fused=True, GradScaler.unscale_ refuses fp16 grads (ValueError)."""
    kwargs = interface_kwargs(optim)
    result_t = outcome(lambda: _amp_run(torch_cls(optim), kwargs, torch.float16, False))
    result_f = outcome(lambda: _amp_run(fused_cls(optim), kwargs, torch.float16, False))
    assert result_t[0] == "raise"
    assert_same_outcome(result_f, result_t)


# torch.optim's fused=True optimizers set `_step_supports_amp_scaling`: GradScaler then does not
# unscale their grads itself but hands the optimizer `grad_scale` and `found_inf` and calls step()
# even when a grad overflowed; the fused kernel unscales the grads in place and skips the update.
# fusedoptim's fused=True does the same (NOTE: [GradScaler with fused=True] in optimizer.py):
AMP_FUSED_FLAG_OPTIMS = [("Adam", {}), ("AdamW", {}), ("SGD", {}), ("SGD", {"momentum": 0.0}), ("Adagrad", {})]
AMP_LATER_OVERFLOWS = {step: value for step, value in AMP_OVERFLOWS.items() if step > 0}


def _fused_flag_kwargs(optim, extra):
    return dict(interface_kwargs(optim), **extra, fused=True)


@pytest.mark.parametrize("optim,extra", AMP_FUSED_FLAG_OPTIMS, ids=[f"{o}{e}" for o, e in AMP_FUSED_FLAG_OPTIMS])
def test_grad_scaler_with_fused_flag_matches_torch(optim, extra):
    kwargs = _fused_flag_kwargs(optim, extra)
    run_t = _amp_run(torch_cls(optim), kwargs, torch.float32, False, overflows=AMP_LATER_OVERFLOWS)
    run_f = _amp_run(fused_cls(optim), kwargs, torch.float32, False, overflows=AMP_LATER_OVERFLOWS)
    _assert_amp_runs_match(run_f, run_t, torch.float32)


@pytest.mark.parametrize("optim,extra", AMP_FUSED_FLAG_OPTIMS, ids=[f"{o}{e}" for o, e in AMP_FUSED_FLAG_OPTIMS])
def test_grad_scaler_fp16_params_with_fused_flag(optim, extra):
    kwargs = _fused_flag_kwargs(optim, extra)
    run_t = _amp_run(torch_cls(optim), kwargs, torch.float16, False, overflows=AMP_LATER_OVERFLOWS)
    run_f = _amp_run(fused_cls(optim), kwargs, torch.float16, False, overflows=AMP_LATER_OVERFLOWS)
    _assert_amp_runs_match(run_f, run_t, torch.float16)


def _overflowing_first_step(cls, kwargs):
    param = torch.tensor([1.0, -2.0, 3.0], requires_grad=True)
    opt = cls([param], **kwargs)
    scaler = torch.amp.GradScaler("cpu", init_scale=16.0)
    scaler.scale((param ** 2).sum()).backward()
    param.grad[0] = float("inf")
    scaler.step(opt)
    scaler.update()
    return opt, param


@pytest.mark.parametrize("optim", ["Adam", "AdamW"])
def test_grad_scaler_skipped_first_step_with_fused_flag(optim):
    kwargs = _fused_flag_kwargs(optim, {})
    opt_t, _ = _overflowing_first_step(torch_cls(optim), kwargs)
    opt_f, _ = _overflowing_first_step(fused_cls(optim), kwargs)
    assert_state_dicts_match(opt_f.state_dict(), opt_t.state_dict())


@pytest.mark.parametrize("optim", ["Adam", "SGD", "Adagrad"])
def test_grad_scaler_grads_after_skipped_step_with_fused_flag(optim):
    kwargs = _fused_flag_kwargs(optim, {})
    _, param_t = _overflowing_first_step(torch_cls(optim), kwargs)
    _, param_f = _overflowing_first_step(fused_cls(optim), kwargs)
    assert torch.equal(param_f.grad, param_t.grad), (param_f.grad, param_t.grad)


# =========================================================================== checkpoints

CKPT_SHAPES = [(7,), (3, 5), (), (17,)]
CKPT_HEAD_STEPS, CKPT_TAIL_STEPS = 3, 3


def _ckpt_data(dtype, seed=80):
    return (make_param_values(CKPT_SHAPES, dtype, seed=seed),
            make_grad_values(CKPT_SHAPES, dtype, num_steps=CKPT_HEAD_STEPS + CKPT_TAIL_STEPS, seed=seed * 100))


def _train(cls, kwargs, values, grads, state_dict=None, requires_grad=True):
    params = as_params(values, requires_grad=requires_grad)
    opt = cls(params, **kwargs)
    if state_dict is not None:
        opt.load_state_dict(state_dict)
    run_steps(opt, params, grads)
    return opt, params


def _outcome_of_run(opt, params):
    """What a training run leaves behind, for bitwise comparisons."""
    return detached(params), opt.state_dict()


def _has_tensor_hyperparameter(config):
    values = list(config.kwargs.values()) + [x for v in config.kwargs.values() if isinstance(v, tuple) for x in v]
    return any(isinstance(v, TensorHP) for v in values)


# The representative configs that keep state, one config per optimizer with Tensor
# hyperparameters, and those whose 'step' has its own dtype (fused with capturable).
CHECKPOINT_CONFIGS = [c for c in REPRESENTATIVE_CONFIGS if c.optim != "SGD" or c.kwargs.get("momentum")] + [
    next(c for c in ALL_CONFIGS if c.optim == optim and _has_tensor_hyperparameter(c) and c.torch_kwargs is None)
    for optim in OPTIM_NAMES
] + [c for c in ALL_CONFIGS if c.kwargs.get("fused") and c.kwargs.get("capturable")]


# Every registry config in fp32 (the dtype models train in); the representative ones in fp64.
RESUME_RUNS = ([(c, torch.float32) for c in ALL_CONFIGS]
               + [(c, torch.float64) for c in REPRESENTATIVE_CONFIGS])
# torch.optim's load_state_dict casts NAdam's mu_product and ASGD's eta and mu (float32 0-dim
# states) to the dtype of an fp64 param, and the resumed run computes them in fp64: neither
# torch's nor fusedoptim's resume is then bit for bit the uninterrupted run.
INEXACT_RESUMES = {(torch.float64, "NAdam"), (torch.float64, "ASGD")}


def _resumed(implementation, values, grads, path, requires_grad=True):
    """Train `head` steps, save to a file, load into a fresh optimizer, train `tail` steps."""
    (cls, kwargs), (head, tail) = implementation, grads
    opt, params = _train(cls, kwargs(), values, head, requires_grad=requires_grad)
    state_dict = through_file(opt.state_dict(), path)
    return _train(cls, kwargs(), detached(params), tail, state_dict, requires_grad)


@pytest.mark.parametrize("config,dtype", RESUME_RUNS, ids=[f"{str(d)[6:]}-{c.id}" for c, d in RESUME_RUNS])
def test_checkpoint_resume_is_bit_exact(config, dtype, tmp_path):
    """Train, save to a file, load into a fresh fusedoptim optimizer, continue: the same bits as
    the uninterrupted run (where torch.optim's own resume is not exact, the same as its resume)."""
    values, grads = _ckpt_data(dtype)
    split = (grads[:CKPT_HEAD_STEPS], grads[CKPT_HEAD_STEPS:])
    fused = (fused_cls(config.optim), lambda: config.fused_kwargs(dtype))
    # differentiable=True steps in grad mode, where an in-place update of a leaf that requires
    # grad raises (torch's too): those runs use params that do not require grad
    requires_grad = not config.differentiable
    o_resumed, p_resumed = _resumed(fused, values, split, tmp_path / "fused.pt", requires_grad)
    if (dtype, config.optim) in INEXACT_RESUMES:
        ref = (torch_cls(config.optim), lambda: config.reference_kwargs(dtype))
        o_t, p_t = _resumed(ref, values, split, tmp_path / "torch.pt", requires_grad)
        assert_runs_match(o_resumed, o_t, p_resumed, p_t, config)
    else:
        uninterrupted = _train(fused[0], fused[1](), values, grads, requires_grad=requires_grad)
        assert_bitwise_equal(_outcome_of_run(o_resumed, p_resumed), _outcome_of_run(*uninterrupted))


@pytest.mark.parametrize("config", CHECKPOINT_CONFIGS, ids=config_ids(CHECKPOINT_CONFIGS))
def test_checkpoint_loads_across_implementations(config, tmp_path):
    """torch.optim's checkpoint resumed by fusedoptim, and fusedoptim's by torch.optim, continue
    like torch.optim's resumed by torch.optim."""
    dtype = torch.float64
    values, grads = _ckpt_data(dtype, seed=83)
    head, tail = grads[:CKPT_HEAD_STEPS], grads[CKPT_HEAD_STEPS:]

    def checkpoint(cls, kwargs, name):
        opt, params = _train(cls, kwargs, values, head)
        return detached(params), through_file(opt.state_dict(), tmp_path / f"{name}.pt")

    def resume(saved, cls, kwargs):
        params, state_dict = saved
        # a private copy: torch.optim's load_state_dict keeps the tensors it is given
        return _train(cls, kwargs, params, tail, copy.deepcopy(state_dict))

    torch_kwargs, fused_kwargs = config.reference_kwargs(dtype), config.fused_kwargs(dtype)
    from_torch = checkpoint(torch_cls(config.optim), torch_kwargs, "torch")
    o_tt, p_tt = resume(from_torch, torch_cls(config.optim), torch_kwargs)
    o_tf, p_tf = resume(from_torch, fused_cls(config.optim), fused_kwargs)
    assert_runs_match(o_tf, o_tt, p_tf, p_tt)  # both run with the options in torch's checkpoint
    assert_fused_path(o_tf)
    # fusedoptim's checkpoint carries its own options: capturable=True, which torch.optim cannot
    # step on the CPU, where the config runs torch without it
    if config.torch_kwargs is None:
        from_fused = checkpoint(fused_cls(config.optim), fused_kwargs, "fused")
        o_ft, p_ft = resume(from_fused, torch_cls(config.optim), torch_kwargs)
        assert_params_match(p_ft, p_tt)
        assert_state_dicts_match(o_ft.state_dict(), o_tt.state_dict(), config)


def test_fp64_resume_of_nadam_and_asgd_is_not_exact_in_torch_either():
    """The premise of INEXACT_RESUMES."""
    values, grads = _ckpt_data(torch.float64)
    for _, optim in INEXACT_RESUMES:
        kwargs = interface_kwargs(optim)
        uninterrupted = _outcome_of_run(*_train(torch_cls(optim), kwargs, values, grads))
        head, params = _train(torch_cls(optim), kwargs, values, grads[:CKPT_HEAD_STEPS])
        resumed = _train(torch_cls(optim), kwargs, detached(params), grads[CKPT_HEAD_STEPS:],
                         copy.deepcopy(head.state_dict()))
        assert resumed[0].state[resumed[1][0]]["mu_product" if optim == "NAdam" else "eta"].dtype == torch.float64
        assert not bitwise_equal(_outcome_of_run(*resumed), uninterrupted)


def _mutate_every_tensor(obj):
    """Changes every tensor of a state_dict in place (state and param_groups, 'step' included)."""
    if isinstance(obj, torch.Tensor):
        obj.add_(1.5) if obj.is_floating_point() or obj.is_complex() else obj.add_(1)
    elif isinstance(obj, dict):
        for value in obj.values():
            _mutate_every_tensor(value)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            _mutate_every_tensor(value)


def _tensor_count(obj):
    if isinstance(obj, torch.Tensor):
        return 1
    if isinstance(obj, dict):
        return sum(_tensor_count(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_count(v) for v in obj)
    return 0


@pytest.mark.parametrize("source", ["torch", "fused", "fused-through-file"])
@pytest.mark.parametrize("config", CHECKPOINT_CONFIGS, ids=config_ids(CHECKPOINT_CONFIGS))
def test_loaded_state_never_aliases_the_state_dict(config, source, tmp_path):
    """After opt.load_state_dict(sd): stepping opt leaves sd (and the optimizer sd came from)
    untouched; changing sd's tensors in place, or stepping its source optimizer, leaves opt
    untouched; and opt continues exactly like a twin loaded from a pristine copy of sd."""
    dtype = torch.float64
    values, grads = _ckpt_data(dtype, seed=81)
    head, tail = grads[:CKPT_HEAD_STEPS], grads[CKPT_HEAD_STEPS:]
    source_cls = torch_cls(config.optim) if source == "torch" else fused_cls(config.optim)
    source_kwargs = config.reference_kwargs(dtype) if source == "torch" else config.fused_kwargs(dtype)
    source_opt, source_params = _train(source_cls, source_kwargs, values, head)
    state_dict = source_opt.state_dict()  # live references to the source's state, as torch's
    if source == "fused-through-file":
        state_dict = through_file(state_dict, tmp_path / "fused.pt")
    pristine = copy.deepcopy(state_dict)
    assert _tensor_count(state_dict) > 0

    def loaded():
        params = as_params(detached(source_params))
        opt = fused_cls(config.optim)(params, **config.fused_kwargs(dtype))
        return opt, params

    opt, params = loaded()
    opt.load_state_dict(state_dict)
    twin, twin_params = loaded()
    twin.load_state_dict(copy.deepcopy(pristine))

    run_steps(opt, params, tail[:1])
    assert_bitwise_equal(state_dict, pristine, "state_dict after the loading optimizer stepped")

    after_first_step = copy.deepcopy(opt.state_dict())
    _mutate_every_tensor(state_dict)
    if source != "fused-through-file":
        run_steps(source_opt, source_params, tail)
    assert_bitwise_equal(opt.state_dict(), after_first_step, "optimizer after its state_dict source changed")

    run_steps(opt, params, tail[1:])
    run_steps(twin, twin_params, tail)
    assert_bitwise_equal(_outcome_of_run(opt, params), _outcome_of_run(twin, twin_params))


@dataclasses.dataclass(frozen=True)
class LayoutCase:
    """A checkpoint written by `saved` options, loaded by an optimizer built with `loaded`
    options (torch's load_state_dict replaces them with the checkpoint's), after which the user
    sets `changed` in the param group: the state the step finds is not the one these options
    would have made."""
    optim: str
    saved: dict
    loaded: dict = dataclasses.field(default_factory=dict)
    changed: dict = dataclasses.field(default_factory=dict)
    # under torch.set_default_dtype(torch.float64), torch keeps 'step' in float64 but fused
    # and capturable optimizers keep it in float32
    default_dtype: torch.dtype = torch.float32
    saved_dtype: torch.dtype = torch.float64
    loaded_dtype: torch.dtype = torch.float64

    @property
    def id(self):
        parts = [self.optim, f"saved{self.saved}"]
        parts += [f"built{self.loaded}"] if self.loaded else []
        parts += [f"then{self.changed}"] if self.changed else []
        parts += [f"default_{str(self.default_dtype)[6:]}"] if self.default_dtype != torch.float32 else []
        if self.saved_dtype != self.loaded_dtype:
            parts.append(f"{str(self.saved_dtype)[6:]}_to_{str(self.loaded_dtype)[6:]}")
        return "-".join(parts)


FP64 = torch.float64
LAYOUT_CASES = [
    LayoutCase("Adam", {"fused": True}, default_dtype=FP64),
    LayoutCase("Adam", {"fused": True}, changed={"fused": False}, default_dtype=FP64),
    LayoutCase("Adam", {}, loaded={"fused": True}, default_dtype=FP64),
    LayoutCase("Adam", {}, changed={"fused": True}, default_dtype=FP64),
    LayoutCase("Adam", {"fused": True, "capturable": True}, changed={"fused": False, "capturable": False},
               default_dtype=FP64),
    LayoutCase("AdamW", {"fused": True}, changed={"fused": None, "foreach": True}, default_dtype=FP64),
    LayoutCase("Adam", {"amsgrad": True}, loaded={"amsgrad": False}),
    LayoutCase("Adam", {"amsgrad": True}, changed={"amsgrad": False}),
    LayoutCase("Adam", {}, loaded={"amsgrad": True}),
    LayoutCase("Adam", {}, changed={"amsgrad": True}),
    LayoutCase("AdamW", {}, changed={"amsgrad": True}),
    LayoutCase("SGD", {}, loaded={"momentum": 0.9}),
    LayoutCase("SGD", {}, changed={"momentum": 0.9}),
    LayoutCase("SGD", {"momentum": 0.9}, changed={"momentum": 0.0}),
    LayoutCase("SGD", {"momentum": 0.9}, changed={"momentum": 0.5, "nesterov": True}),
    LayoutCase("SGD", {"momentum": 0.9, "fused": True}, changed={"fused": False}, default_dtype=FP64),
    LayoutCase("RMSprop", {}, changed={"centered": True}),
    LayoutCase("RMSprop", {}, changed={"momentum": 0.9}),
    LayoutCase("RMSprop", {"centered": True}, loaded={"momentum": 0.5}),
    LayoutCase("RMSprop", {"momentum": 0.9, "centered": True}, changed={"momentum": 0.0, "centered": False}),
    LayoutCase("RMSprop", {"momentum": 0.9}, changed={"centered": True}),
    LayoutCase("Adagrad", {"fused": True}, changed={"fused": False}, default_dtype=FP64),
    LayoutCase("Adagrad", {}, changed={"fused": True}, default_dtype=FP64),
    LayoutCase("Adadelta", {}, changed={"differentiable": True}),
    # the param dtype changes: torch casts the state (0-dim mu_product, eta and mu included) to it
    LayoutCase("Adam", {}, saved_dtype=torch.float32, loaded_dtype=FP64),
    LayoutCase("NAdam", {}, saved_dtype=torch.float32, loaded_dtype=FP64),
    LayoutCase("ASGD", {"t0": 2}, saved_dtype=torch.float32, loaded_dtype=FP64),
    LayoutCase("RMSprop", {"momentum": 0.9, "centered": True}, saved_dtype=FP64, loaded_dtype=torch.float32),
    LayoutCase("Rprop", {}, saved_dtype=FP64, loaded_dtype=torch.float32),
]


def _layout_run(case, source_cls, destination_cls, values, grads):
    """Save with case.saved, load into case.loaded, apply case.changed, train; the loading
    optimizer and its params."""
    head, tail = grads[:CKPT_HEAD_STEPS], grads[CKPT_HEAD_STEPS:]
    lr = dict(lr=0.01)
    source, source_params = _train(source_cls, dict(lr, **case.saved), [v.to(case.saved_dtype) for v in values],
                                   [[g.to(case.saved_dtype) for g in step] for step in head])
    state_dict = copy.deepcopy(source.state_dict())
    params = as_params([p.detach().to(case.loaded_dtype) for p in source_params])
    opt = destination_cls(params, **dict(lr, **case.loaded))
    opt.load_state_dict(state_dict)
    for group in opt.param_groups:
        group.update(case.changed)
    run_steps(opt, params, [[g.to(case.loaded_dtype) for g in step] for step in tail])
    return opt, params


@pytest.mark.parametrize("direction", ["fused-fused", "torch-fused", "fused-torch"])
@pytest.mark.parametrize("case", LAYOUT_CASES, ids=[c.id for c in LAYOUT_CASES])
def test_checkpoint_across_state_layouts_like_torch(case, direction):
    """Whatever torch.optim does when a checkpoint meets other options (continue with the
    checkpoint's options, create the missing state, ignore a state no longer used, raise a
    KeyError for a state the step needs), fusedoptim does the same: torch -> torch is the
    reference for each direction."""
    torch.set_default_dtype(case.default_dtype)  # restored by conftest
    values, grads = _ckpt_data(torch.float64, seed=82)
    classes = {"fused": fused_cls(case.optim), "torch": torch_cls(case.optim)}
    source, destination = (classes[name] for name in direction.split("-"))
    expected = outcome(lambda: _layout_run(case, classes["torch"], classes["torch"], values, grads))
    actual = outcome(lambda: _layout_run(case, source, destination, values, grads))
    assert_same_outcome(actual, expected)
    if expected[0] == "ok":
        (o_t, p_t), (o_a, p_a) = expected[1], actual[1]
        # the source's rounding (fusedoptim's or torch's) stays in the loaded state
        tol = tol_for(torch.float32 if torch.float32 in (case.saved_dtype, case.loaded_dtype) else torch.float64)
        assert_params_match(p_a, p_t, tol=tol)
        assert_state_dicts_match(o_a.state_dict(), o_t.state_dict(), tol=tol)
        if destination is classes["fused"]:
            assert_states_match(o_a, o_t, p_a, p_t, tol=tol)


def _training_scheduler(optim, opt, total_steps):
    if accepts(optim, "momentum") or accepts(optim, "betas"):
        return lr_scheduler.OneCycleLR(opt, max_lr=[3 * float(g["lr"]) for g in opt.param_groups],
                                       total_steps=total_steps + 1, cycle_momentum=True,
                                       base_momentum=0.8, max_momentum=0.95)
    return lr_scheduler.SequentialLR(opt, [lr_scheduler.LinearLR(opt, start_factor=0.3, total_iters=3),
                                           lr_scheduler.CosineAnnealingLR(opt, T_max=5)], milestones=[3])


MODEL_HEAD_STEPS, MODEL_TAIL_STEPS = 4, 4


def _model_training(cls, optim, tensor_lr, model_seed):
    model = _small_model(seed=model_seed, dtype=torch.float32)
    kwargs = interface_kwargs(optim)
    if tensor_lr:
        kwargs["lr"] = torch.tensor(kwargs["lr"])
    # the last layer gets its own lr: the schedule and the checkpoint handle two groups
    opt = cls([{"params": list(model[:2].parameters())},
               {"params": list(model[3].parameters()), "lr": kwargs["lr"] * 0.5}], **kwargs)
    scheduler = _training_scheduler(optim, opt, MODEL_HEAD_STEPS + MODEL_TAIL_STEPS)
    return model, opt, scheduler


def _train_model(model, opt, scheduler, batches):
    for x, y in batches:
        opt.zero_grad()
        F.mse_loss(model(x), y).backward()
        opt.step()
        scheduler.step()


def _training_outcome(model, opt, scheduler):
    return model.state_dict(), opt.state_dict(), plain(scheduler.get_last_lr()), scheduler.last_epoch


@pytest.mark.parametrize("tensor_lr", [False, True], ids=["float_lr", "tensor_lr"])
@pytest.mark.parametrize("optim", OPTIM_NAMES)
def test_model_optimizer_scheduler_checkpoint_resumes_bit_for_bit(optim, tensor_lr, tmp_path):
    """A training checkpoint (model, optimizer and scheduler in one file) restored into freshly
    built objects, in the order torch documents, continues exactly like the uninterrupted run."""
    batches = _batches(MODEL_HEAD_STEPS + MODEL_TAIL_STEPS, dtype=torch.float32, seed=90)
    uninterrupted = _model_training(fused_cls(optim), optim, tensor_lr, model_seed=5)
    _train_model(*uninterrupted, batches)

    model, opt, scheduler = _model_training(fused_cls(optim), optim, tensor_lr, model_seed=5)
    _train_model(model, opt, scheduler, batches[:MODEL_HEAD_STEPS])
    checkpoint = through_file({"model": model.state_dict(), "optimizer": opt.state_dict(),
                               "scheduler": scheduler.state_dict()}, tmp_path / "checkpoint.pt")
    model, opt, scheduler = _model_training(fused_cls(optim), optim, tensor_lr, model_seed=6)
    model.load_state_dict(checkpoint["model"])
    scheduler.load_state_dict(checkpoint["scheduler"])
    opt.load_state_dict(checkpoint["optimizer"])
    _train_model(model, opt, scheduler, batches[MODEL_HEAD_STEPS:])
    assert_bitwise_equal(_training_outcome(model, opt, scheduler), _training_outcome(*uninterrupted))

    # and the uninterrupted run is torch.optim's
    with_torch = _model_training(torch_cls(optim), optim, tensor_lr, model_seed=5)
    _train_model(*with_torch, batches)
    assert plain(with_torch[2].get_last_lr()) == plain(scheduler.get_last_lr())
    assert_runs_match(opt, with_torch[1], list(model.parameters()), list(with_torch[0].parameters()))


# --------------------------------------------------------------------------------- LBFGS

LBFGS_KWARGS = {
    None: dict(lr=0.3, max_iter=4, history_size=3),
    "strong_wolfe": dict(lr=1.0, max_iter=4, history_size=3, line_search_fn="strong_wolfe"),
}
LBFGS_HEAD_STEPS, LBFGS_TAIL_STEPS = 2, 2


def _lbfgs_training(cls, kwargs, values, steps, state_dict=None):
    """LBFGS on a smooth non-separable objective (history wraps around within the run)."""
    params = as_params(values)
    opt = cls(params, **kwargs)
    if state_dict is not None:
        opt.load_state_dict(state_dict)

    def closure():
        opt.zero_grad()
        flat = torch.cat([p.reshape(-1) for p in params])
        loss = (flat - 0.5).pow(2).sum() + 0.1 * flat.pow(4).sum() + 0.3 * (flat[1:] * flat[:-1]).sum()
        loss.backward()
        return loss

    for _ in range(steps):
        opt.step(closure)
    return opt, params


def _lbfgs_values():
    return make_param_values([(7,), (3, 5), (11,)], torch.float64, seed=95)


@pytest.mark.parametrize("line_search_fn", list(LBFGS_KWARGS))
def test_lbfgs_checkpoint_resumes_the_run(line_search_fn, tmp_path):
    """fusedoptim -> fusedoptim through a file is bit for bit the uninterrupted run; torch ->
    fusedoptim and fusedoptim -> torch continue like torch (fp64 rounding: our dots are not BLAS's)."""
    kwargs, values = LBFGS_KWARGS[line_search_fn], _lbfgs_values()
    total = LBFGS_HEAD_STEPS + LBFGS_TAIL_STEPS

    def resumed(source_cls, destination_cls):
        opt, params = _lbfgs_training(source_cls, kwargs, values, LBFGS_HEAD_STEPS)
        state_dict = through_file(opt.state_dict(), tmp_path / "lbfgs.pt")
        return _lbfgs_training(destination_cls, kwargs, detached(params), LBFGS_TAIL_STEPS, state_dict)

    fused_resumed = resumed(fusedoptim.LBFGS, fusedoptim.LBFGS)
    assert_bitwise_equal(_outcome_of_run(*fused_resumed),
                         _outcome_of_run(*_lbfgs_training(fusedoptim.LBFGS, kwargs, values, total)))
    o_ref, p_ref = _lbfgs_training(torch.optim.LBFGS, kwargs, values, total)
    for source_cls, destination_cls in ((torch.optim.LBFGS, fusedoptim.LBFGS), (fusedoptim.LBFGS, torch.optim.LBFGS)):
        opt, params = resumed(source_cls, destination_cls)
        assert_params_match(params, p_ref)
        state, state_ref = opt.state[params[0]], o_ref.state[p_ref[0]]
        assert state["n_iter"] == state_ref["n_iter"] and state["func_evals"] == state_ref["func_evals"]
        for key in ("d", "prev_flat_grad"):
            torch.testing.assert_close(state[key], state_ref[key], rtol=1e-10, atol=1e-12)


def test_lbfgs_loaded_state_never_aliases_the_state_dict():
    kwargs, values = LBFGS_KWARGS[None], _lbfgs_values()
    source, source_params = _lbfgs_training(fusedoptim.LBFGS, kwargs, values, LBFGS_HEAD_STEPS)
    state_dict = source.state_dict()
    pristine = copy.deepcopy(state_dict)
    opt, params = _lbfgs_training(fusedoptim.LBFGS, kwargs, detached(source_params), 1, state_dict)
    assert_bitwise_equal(state_dict, pristine, "state_dict after the loading optimizer stepped")
    after_step = copy.deepcopy(opt.state_dict())
    _mutate_every_tensor(state_dict)
    assert_bitwise_equal(opt.state_dict(), after_step, "optimizer after its state_dict source changed")


# ------------------------------------------------------------------------------- devices


@requires_cuda
@ignore_reference_path_warning
@pytest.mark.parametrize("config", REPRESENTATIVE_CONFIGS, ids=config_ids(REPRESENTATIVE_CONFIGS))
def test_checkpoint_moves_between_cpu_and_cuda(config, tmp_path):
    """A CPU checkpoint resumed on CUDA, and that run's checkpoint resumed on the CPU again, go
    the same way as with torch.optim."""
    dtype = torch.float64
    values = make_param_values(CKPT_SHAPES, dtype, seed=96)
    grads = make_grad_values(CKPT_SHAPES, dtype, num_steps=9, seed=9600)

    def on(device, tensors):
        return [t.to(device) for t in tensors]

    def journey(cls, kwargs):
        opt, params = _train(cls, kwargs(dtype), values, grads[:3])
        for device, steps in (("cuda", grads[3:6]), ("cpu", grads[6:])):
            state_dict = through_file(opt.state_dict(), tmp_path / f"{cls.__module__}-{device}.pt")
            params = as_params(on(device, detached(params)))
            opt = cls(params, **kwargs(dtype))
            opt.load_state_dict(state_dict)
            run_steps(opt, params, [on(device, step) for step in steps])
        return opt, params

    o_t, p_t = journey(torch_cls(config.optim), config.reference_kwargs)
    o_f, p_f = journey(fused_cls(config.optim), config.fused_kwargs)
    assert_runs_match(o_f, o_t, p_f, p_t, config)
    assert_fused_path(o_f)  # back on the CPU, the fused kernels run again
