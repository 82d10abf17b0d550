"""Behaviours particular to one algorithm, side by side with torch.optim (or, for LAMB and Lion,
with the plain-torch oracles of reference_optimizers.py):

* Adagrad: state made at construction, initial_accumulator_value of later groups (sparse
  grads: test_interface.py; sparse-grad errors of the other algorithms: test_errors.py);
* Rprop: each param's step sizes start from its group's lr *at its first step*;
* ASGD: the 0-dim eta / mu states, the averaging branch;
* NAdam: the 0-dim mu_product state;
* RMSprop: which states exist for momentum / centered;
* LAMB: the global grad norm over every group (fused and reference-path params alike);
* Lion: sign(0) = 0;
* differentiable=True: outputs and gradients through several steps like torch; LAMB/Lion's
  gradients against finite differences (torch.autograd.gradcheck).
"""

import copy
import warnings

import pytest
import torch
from torch.optim import lr_scheduler

import fusedoptim
from helpers import (
    NUM_STEPS,
    as_params,
    assert_fused_path,
    assert_reference_path,
    assert_runs_match,
    assert_state_dicts_match,
    assert_states_match,
    fused_cls,
    make_grad_values,
    make_param_values,
    outcome,
    run_steps,
    set_grads,
    torch_cls,
)
from optim_configs import OptimConfig, TensorHP

NEW_TORCH_OPTIMS = ["Adadelta", "Adagrad", "Adamax", "ASGD", "NAdam", "RAdam", "RMSprop", "Rprop"]


def _lockstep(o_t, p_t, o_f, p_f, grads, before_step=None, after_step=None):
    for step, gs in enumerate(grads):
        for o, ps in ((o_t, p_t), (o_f, p_f)):
            if before_step is not None:
                before_step(step, o, ps)
            set_grads(ps, gs)
            o.step()
        if after_step is not None:
            after_step(step)


# ----------------------------------------------------------------------------- Adagrad


_ADAGRAD_INIT_KW = [
    dict(),
    dict(initial_accumulator_value=0.25),
    dict(initial_accumulator_value=0.25, fused=True),
    dict(lr=TensorHP(0.1), initial_accumulator_value=1.5, lr_decay=0.1),
]
_ADAGRAD_INIT_DTYPES = {"fp32": torch.float32, "fp64": torch.float64, "c64": torch.complex64,
                        "bf16": torch.bfloat16}
# (torch refuses fused=True for complex params, at step time)
_ADAGRAD_INIT_CASES = [(kw, dt) for kw in _ADAGRAD_INIT_KW for dt in _ADAGRAD_INIT_DTYPES
                       if not (kw.get("fused") and dt == "c64")]


@pytest.mark.parametrize("kwargs,dtype_name", _ADAGRAD_INIT_CASES,
                         ids=[f"{d}-{k!r}" for k, d in _ADAGRAD_INIT_CASES])
def test_adagrad_state_made_at_construction(kwargs, dtype_name):
    """torch.optim.Adagrad creates 'step' and 'sum' for every param of every group in its
    constructor: the state_dict right after construction equals torch's (keys, dtypes of step
    and sum, initial values), and so after a first step where some params have no grad."""
    dtype = _ADAGRAD_INIT_DTYPES[dtype_name]
    shapes = [(7,), (3, 4), (), (0,)]
    values = make_param_values(shapes, dtype, seed=70)
    cfg = OptimConfig("Adagrad", kwargs)

    def build(cls, kw):
        ps = as_params(values)
        return cls([{"params": ps[:2]}, {"params": ps[2:], "lr": 0.05}], **kw), ps

    o_t, p_t = build(torch.optim.Adagrad, cfg.reference_kwargs(dtype))
    o_f, p_f = build(fusedoptim.Adagrad, cfg.fused_kwargs(dtype))
    init = kwargs.get("initial_accumulator_value", 0)
    for p in p_f:
        st = o_f.state[p]
        assert list(st) == ["step", "sum"]
        assert float(st["step"]) == 0.0 and st["step"].dim() == 0
        expected = torch.full_like(p, complex(init, init) if p.is_complex() else init)
        assert torch.equal(st["sum"], expected)
    exact = dict(rtol=0, atol=0)
    assert_states_match(o_f, o_t, p_f, p_t, tol=exact)
    assert_state_dicts_match(o_f.state_dict(), o_t.state_dict(), cfg, tol=exact)
    grads = make_grad_values(shapes, dtype, num_steps=3, seed=7000)
    for gs in grads:
        gs[1] = None  # this param never gets a grad: its constructed state stays as it was
    run_steps(o_t, p_t, grads)
    run_steps(o_f, p_f, grads)
    assert float(o_f.state[p_f[1]]["step"]) == 0.0
    assert_state_dicts_match(o_f.state_dict(), o_t.state_dict(), cfg,
                             tol=dict(rtol=1e-2, atol=1e-2) if dtype == torch.bfloat16 else None)


def test_adagrad_initial_accumulator_of_added_groups_is_the_constructors():
    """torch.optim.Adagrad gives params of a group added later (and params whose state was
    deleted) a sum started from the *constructor's* initial_accumulator_value, whatever the
    group says."""
    dtype = torch.float64
    values = make_param_values([(7,), (5,), (3, 3)], dtype, seed=71)
    grads = make_grad_values([(7,), (5,), (3, 3)], dtype, seed=7100)

    def run(cls):
        ps = as_params(values)
        o = cls([ps[0]], lr=0.1, initial_accumulator_value=0.3)
        sums_after_first_step = {}
        for step, gs in enumerate(grads):
            if step == 2:
                o.add_param_group({"params": ps[1:], "initial_accumulator_value": 5.0, "lr": 0.2})
                assert ps[1] not in o.state or not o.state[ps[1]]  # lazily, at the first step
            if step == 6:
                del o.state[ps[0]]
            active = ps if step >= 2 else ps[:1]
            set_grads(active, gs[: len(active)])
            o.step()
            if step in (2, 6):
                i = 1 if step == 2 else 0
                sums_after_first_step[step] = o.state[ps[i]]["sum"].clone()
        return o, ps, sums_after_first_step

    o_t, p_t, s_t = run(torch.optim.Adagrad)
    o_f, p_f, s_f = run(fusedoptim.Adagrad)
    assert o_f.param_groups[1]["initial_accumulator_value"] == 5.0
    assert_runs_match(o_f, o_t, p_f, p_t)
    for step, i in ((2, 1), (6, 0)):
        torch.testing.assert_close(s_f[step], s_t[step], rtol=1e-12, atol=0)
        # the constructor's 0.3 plus the first squared grad, not the group's 5.0
        torch.testing.assert_close(s_f[step], 0.3 + grads[step][i] ** 2, rtol=1e-12, atol=0)


# ----------------------------------------------------------------------------- Rprop


def test_rprop_step_size_starts_from_the_groups_lr_at_first_step():
    """A param's step sizes are filled with its group's lr when it gets its first grad: lr
    changed by a scheduler (or by hand) before a param's first grad counts, and lr changes
    after that have no effect on it.  A group added later uses its own lr."""
    dtype = torch.float64
    shapes = [(7,), (9,), (5,), (4,)]
    values = make_param_values(shapes, dtype, seed=72)
    grads = make_grad_values(shapes, dtype, seed=7200)
    step_sizes = (1e-4, 10.0)  # wide: the first step sizes are not clamped

    def run(cls):
        ps = as_params(values)
        o = cls([ps[0], ps[1]], lr=0.05, step_sizes=step_sizes)
        sched = lr_scheduler.StepLR(o, step_size=2, gamma=0.5)
        first = {}
        for step, gs in enumerate(grads):
            if step == 3:
                o.add_param_group({"params": ps[2:], "lr": 0.3})
            if step == 5:
                o.param_groups[1]["lr"] = 0.7  # before ps[3]'s first grad
            gs = list(gs)
            if step < 4:
                gs[1] = None  # ps[1]: first grad at step 4, lr halved twice by then
            if step < 3:
                gs[2] = None
            if step < 6:
                gs[3] = None
            active = ps if step >= 3 else ps[:2]
            set_grads(active, gs[: len(active)])
            lrs = [g["lr"] for g in o.param_groups]
            o.step()
            for i, p in enumerate(active):
                if gs[i] is not None and i not in first:
                    gi = 0 if i < 2 else 1
                    first[i] = (lrs[gi], o.state[p]["step_size"].clone())
            sched.step()
        return o, ps, first

    o_t, p_t, first_t = run(torch.optim.Rprop)
    o_f, p_f, first_f = run(fusedoptim.Rprop)
    assert_runs_match(o_f, o_t, p_f, p_t)
    assert sorted(first_f) == [0, 1, 2, 3]
    for i, (lr, step_size) in first_f.items():
        # first step: prev = 0, so the step size is the lr itself (factor 1)
        assert torch.equal(step_size, torch.full_like(step_size, lr)), (i, lr, step_size)
        assert torch.equal(step_size, first_t[i][1]), i
    assert [first_f[i][0] for i in range(4)] == [first_t[i][0] for i in range(4)]
    assert len({first_f[i][0] for i in range(4)}) == 4  # four different starting lrs


# ----------------------------------------------------------------------------- ASGD / NAdam


@pytest.mark.parametrize("kwargs", [
    dict(lr=0.05, t0=3),
    dict(lr=0.05, t0=0, lambd=0.1, alpha=0.5),
    dict(lr=TensorHP(0.05), t0=2, weight_decay=0.1),
    dict(lr=0.05),  # t0 = 1e6: mu stays 1
], ids=repr)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_asgd_eta_mu_states(kwargs, dtype):
    """ASGD's per-param 0-dim eta and mu (float32 tensors, like step) equal torch's after every
    step, and the averaging branch (mu != 1) really runs when t0 is small."""
    shapes = [(7,), (3, 5), ()]
    values = make_param_values(shapes, dtype, seed=73)
    grads = make_grad_values(shapes, dtype, seed=7300)
    cfg = OptimConfig("ASGD", kwargs)
    p_t, p_f = as_params(values), as_params(values)
    o_t = torch.optim.ASGD(p_t, **cfg.reference_kwargs(dtype))
    o_f = fusedoptim.ASGD(p_f, **cfg.fused_kwargs(dtype))
    mus = []

    def check(step):
        assert_states_match(o_f, o_t, p_f, p_t)
        for pf, pt in zip(p_f, p_t):
            st_f, st_t = o_f.state[pf], o_t.state[pt]
            assert list(st_f) == list(st_t) == ["step", "eta", "mu", "ax"]
            for k in ("eta", "mu"):
                assert st_f[k].dtype == st_t[k].dtype == torch.float32 and st_f[k].dim() == 0
                assert torch.equal(st_f[k], st_t[k]), (step, k, st_f[k], st_t[k])
        mus.append(float(o_f.state[p_f[0]]["mu"]))

    _lockstep(o_t, p_t, o_f, p_f, grads, after_step=check)
    assert_runs_match(o_f, o_t, p_f, p_t, cfg)
    assert_fused_path(o_f)
    if kwargs.get("t0", 1e6) < 5:
        assert min(mus) < 1.0  # the averaging branch was exercised
    else:
        assert set(mus) == {1.0}


@pytest.mark.parametrize("kwargs", [
    dict(lr=0.01),
    dict(lr=0.01, momentum_decay=0.1, weight_decay=0.1, decoupled_weight_decay=True),
], ids=repr)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16],
                         ids=["fp32", "fp64", "bf16"])
def test_nadam_mu_product_state(kwargs, dtype):
    """NAdam's per-param 0-dim mu_product (float32, multiplied in float32 like torch) equals
    torch's after every step, also for a param whose first grad comes late (its own product)."""
    shapes = [(7,), (5,)]
    values = make_param_values(shapes, dtype, seed=74)
    grads = make_grad_values(shapes, dtype, seed=7400)
    for gs in grads[:4]:
        gs[1] = None
    p_t, p_f = as_params(values), as_params(values)
    o_t = torch.optim.NAdam(p_t, **kwargs)
    o_f = fusedoptim.NAdam(p_f, **kwargs)

    def check(step):
        for pf, pt in zip(p_f, p_t):
            st_f, st_t = o_f.state.get(pf, {}), o_t.state.get(pt, {})
            assert list(st_f) == list(st_t)
            if st_t:
                assert st_f["mu_product"].dtype == st_t["mu_product"].dtype == torch.float32
                assert torch.equal(st_f["mu_product"], st_t["mu_product"]), step
                assert torch.equal(st_f["step"], st_t["step"]), step

    _lockstep(o_t, p_t, o_f, p_f, grads, after_step=check)
    assert float(o_f.state[p_f[1]]["step"]) == NUM_STEPS - 4
    assert float(o_f.state[p_f[0]]["mu_product"]) != float(o_f.state[p_f[1]]["mu_product"])


# ----------------------------------------------------------------------------- RMSprop


@pytest.mark.parametrize("momentum,centered", [(0, False), (0.9, False), (0, True), (0.5, True)])
def test_rmsprop_state_keys_follow_momentum_and_centered(momentum, centered):
    dtype = torch.float64
    values = make_param_values([(7,), (2, 3)], dtype, seed=75)
    grads = make_grad_values([(7,), (2, 3)], dtype, num_steps=3, seed=7500)
    cfg = OptimConfig("RMSprop", dict(lr=0.01, momentum=momentum, centered=centered))
    p_t, p_f = as_params(values), as_params(values)
    o_t = torch.optim.RMSprop(p_t, **cfg.kwargs)
    o_f = fusedoptim.RMSprop(p_f, **cfg.kwargs)
    _lockstep(o_t, p_t, o_f, p_f, grads)
    expected = ["step", "square_avg"] + (["momentum_buffer"] if momentum > 0 else []) \
        + (["grad_avg"] if centered else [])
    for pf, pt in zip(p_f, p_t):
        assert list(o_t.state[pt]) == expected  # torch's order, that state_dict keeps
        assert list(o_f.state[pf]) == expected
    assert_runs_match(o_f, o_t, p_f, p_t, cfg)


# ----------------------------------------------------------------------------- LAMB / Lion


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_lamb_global_grad_norm_spans_groups_and_paths(dtype, isa):
    """max_grad_norm clips by the norm of *all* grads of the step: every group (each with its
    own max_grad_norm, one without clipping), fused params and a non-contiguous param that takes
    the reference path, params without a grad excluded."""
    g = torch.Generator().manual_seed(76)
    base = [torch.randn(s, generator=g, dtype=torch.float64).to(dtype)
            for s in [(7,), (3, 5), (6, 8), (9,), (4,)]]

    def build(cls):
        ps = [b.clone() for b in base]
        ps[2] = base[2].clone()[:, ::2]  # strided: reference path
        ps = [p.detach().requires_grad_() for p in ps]
        o = cls([
            {"params": ps[:2], "max_grad_norm": 1.0},
            {"params": ps[2:4], "max_grad_norm": 3.0, "lr": 0.02},
            {"params": ps[4:], "max_grad_norm": None, "weight_decay": 0.0},
        ], lr=0.01, weight_decay=0.1)
        return o, ps

    o_t, p_t = build(torch_cls("LAMB"))
    o_f, p_f = build(fused_cls("LAMB"))
    grads = make_grad_values([tuple(p.shape) for p in p_t], dtype, seed=7600, scale=2.0)
    for step, gs in enumerate(grads):
        if step % 3 == 1:
            gs[3] = None
        for ps in (p_t, p_f):
            set_grads(ps, gs)
        o_t.step()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", fusedoptim.ReferencePathWarning)
            o_f.step()
        paths = o_f.last_step_paths
        assert paths["reference"] == 1 and paths["fused"] == sum(
            x is not None for x in gs) - 1, paths
    assert_runs_match(o_f, o_t, p_f, p_t)

    # the clipping was active (the unclipped run differs) for the clipped groups
    o_n, p_n = build(fused_cls("LAMB"))
    for gr in o_n.param_groups:
        gr["max_grad_norm"] = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fusedoptim.ReferencePathWarning)
        run_steps(o_n, p_n, grads[:1])
    o_c, p_c = build(fused_cls("LAMB"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fusedoptim.ReferencePathWarning)
        run_steps(o_c, p_c, grads[:1])
    assert not torch.equal(o_n.state[p_n[0]]["exp_avg"], o_c.state[p_c[0]]["exp_avg"])
    assert torch.equal(o_n.state[p_n[4]]["exp_avg"], o_c.state[p_c[4]]["exp_avg"])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16],
                         ids=["fp32", "bf16", "fp16"])
def test_lamb_small_grads_in_low_precision(dtype):
    """Grads of 1e-3 (or clipped grads): (1 - beta2) * g^2 = 1e-9 underflows to 0 in fp16, so
    the moments stored in the param's dtype give an update of ~ m / eps.  The trust ratio must
    be made for the update that is applied (|update of each param| = lr * |p| * ...), as the
    oracle does in fp16 itself: the param moves by about lr * |p| = 0.005, not by ~5."""
    res = {}
    for name, cls in (("oracle", torch_cls("LAMB")), ("fused", fused_cls("LAMB"))):
        p = torch.full((1000,), 0.5, dtype=dtype, requires_grad=True)
        o = cls([p], lr=0.01, weight_decay=0.1)
        p.grad = torch.full((1000,), 1e-3, dtype=dtype)
        o.step()
        res[name] = p.detach().double()
    # the fp64 answer: ratio * |u| = |p| per element, the param moves by lr * 0.5
    torch.testing.assert_close(res["oracle"], torch.full((1000,), 0.495, dtype=torch.float64),
                               rtol=0, atol=2e-3)
    torch.testing.assert_close(res["fused"], res["oracle"], rtol=0, atol=2e-3)


@pytest.mark.parametrize("case", ["differentiable", "non_contiguous"])
def test_lamb_clipping_with_complex_params_on_the_reference_path(case):
    """The global grad norm over complex grads (as real pairs) on the reference path."""
    g = torch.Generator().manual_seed(81)
    base = torch.randn(4, 6, generator=g, dtype=torch.complex128)
    grads = [torch.randn(4, 3, generator=g, dtype=torch.complex128) for _ in range(3)]
    res = {}
    for name, cls in (("oracle", torch_cls("LAMB")), ("fused", fused_cls("LAMB"))):
        if case == "non_contiguous":
            p = base.clone()[:, ::2].requires_grad_()
        else:
            p = base.clone()[:, ::2].contiguous()  # differentiable: no grad on the leaf
        o = cls([p], lr=0.01, max_grad_norm=1.0, differentiable=case == "differentiable")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", fusedoptim.ReferencePathWarning)
            for gr in grads:
                p.grad = gr.clone()
                o.step()
        res[name] = (o, p)
    assert_runs_match(res["fused"][0], res["oracle"][0], [res["fused"][1]], [res["oracle"][1]])


def test_lion_zero_grad_and_zero_momentum_moves_only_by_decay():
    """sign(0) = 0: a zero grad on the first step (zero momentum) leaves the param to the weight
    decay alone, like the oracle."""
    values = make_param_values([(9,), (4,)], torch.float64, seed=77)
    grads = [[torch.zeros(9, dtype=torch.float64), torch.ones(4, dtype=torch.float64)]]
    grads += make_grad_values([(9,), (4,)], torch.float64, num_steps=3, seed=7700)
    p_t, p_f = as_params(values), as_params(values)
    o_t = torch_cls("Lion")(p_t, lr=0.01, weight_decay=0.5)
    o_f = fused_cls("Lion")(p_f, lr=0.01, weight_decay=0.5)
    set_grads(p_t, grads[0])
    set_grads(p_f, grads[0])
    o_t.step()
    o_f.step()
    torch.testing.assert_close(p_f[0].detach(), values[0] * (1 - 0.01 * 0.5), rtol=1e-15, atol=0)
    assert_runs_match(o_f, o_t, p_f, p_t)
    _lockstep(o_t, p_t, o_f, p_f, grads[1:])
    assert_runs_match(o_f, o_t, p_f, p_t)


@pytest.mark.parametrize("kwargs", [
    dict(),
    dict(weight_decay=0.0),
    dict(weight_decay=0.0, always_adapt=True),
    dict(weight_decay=0.1, decoupled_weight_decay=False, maximize=True),
    dict(bias_correction=False, grad_averaging=False, max_grad_norm=1.0),
    dict(max_grad_norm=100.0, betas=(0.5, 0.9), eps=1e-3),
], ids=repr)
def test_lamb_first_step_from_the_formulas(kwargs):
    """The first LAMB step (zero moments, t = 1) written out with whole-tensor fp64 ops from
    the docstring's formulas: checks the oracle and fusedoptim alike, two params (the global
    grad norm spans both)."""
    g = torch.Generator().manual_seed(82)
    values = [torch.randn(s, generator=g, dtype=torch.float64) for s in [(7,), (3, 4)]]
    grads = [torch.randn(v.shape, generator=g, dtype=torch.float64) * 3 for v in values]
    hp = dict(lr=0.01, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01, bias_correction=True,
              grad_averaging=True, decoupled_weight_decay=True, max_grad_norm=None,
              always_adapt=False, maximize=False)
    hp.update(kwargs)
    beta1, beta2 = hp["betas"]
    wd = hp["weight_decay"]
    total = torch.sqrt(sum((gr ** 2).sum() for gr in grads))
    clip = max(total.item() / hp["max_grad_norm"], 1.0) if hp["max_grad_norm"] else 1.0
    expected = []
    for p, gr in zip(values, grads):
        gg = (-gr if hp["maximize"] else gr) / clip
        if not hp["decoupled_weight_decay"]:
            gg = gg + wd * p
        m = (1 - beta1 if hp["grad_averaging"] else 1.0) * gg
        v = (1 - beta2) * gg * gg
        bc1, bc2 = (1 - beta1, 1 - beta2) if hp["bias_correction"] else (1.0, 1.0)
        u = (m / bc1) / (torch.sqrt(v / bc2) + hp["eps"])
        if hp["decoupled_weight_decay"]:
            u = u + wd * p
        ratio = p.norm() / u.norm() if (wd != 0 or hp["always_adapt"]) else 1.0
        expected.append(p - hp["lr"] * ratio * u)
    for cls in (torch_cls("LAMB"), fused_cls("LAMB")):
        ps = as_params(values)
        o = cls(ps, **kwargs, lr=0.01)
        set_grads(ps, grads)
        o.step()
        for p, e in zip(ps, expected):
            torch.testing.assert_close(p.detach(), e, rtol=1e-12, atol=1e-14,
                                       msg=lambda m: f"{cls.__module__}: {m}")


@pytest.mark.parametrize("kwargs", [dict(), dict(weight_decay=0.5, betas=(0.5, 0.8)),
                                    dict(maximize=True, weight_decay=0.1)], ids=repr)
def test_lion_two_steps_from_the_formulas(kwargs):
    """Two Lion steps written out with whole-tensor fp64 ops from the docstring's formulas."""
    g = torch.Generator().manual_seed(83)
    p0 = torch.randn(9, generator=g, dtype=torch.float64)
    grads = [torch.randn(9, generator=g, dtype=torch.float64) for _ in range(2)]
    beta1, beta2 = kwargs.get("betas", (0.9, 0.99))
    wd, lr = kwargs.get("weight_decay", 0.0), 0.01
    p, m = p0.clone(), torch.zeros(9, dtype=torch.float64)
    for gr in grads:
        gr = -gr if kwargs.get("maximize") else gr
        c = beta1 * m + (1 - beta1) * gr
        p = p * (1 - lr * wd) - lr * torch.sign(c)
        m = beta2 * m + (1 - beta2) * gr
    for cls in (torch_cls("Lion"), fused_cls("Lion")):
        ps = as_params([p0])
        o = cls(ps, lr=lr, **kwargs)
        run_steps(o, ps, [[gr] for gr in grads])
        torch.testing.assert_close(ps[0].detach(), p, rtol=1e-14, atol=1e-15)
        torch.testing.assert_close(o.state[ps[0]]["exp_avg"], m, rtol=1e-14, atol=1e-15)


# ----------------------------------------------------------------------------- differentiable


DIFF_NEW_CASES = [(o, kw) for o in NEW_TORCH_OPTIMS for kw in (dict(lr=0.05), dict(lr="tensor"))]
DIFF_NEW_CASES += [
    ("RMSprop", dict(lr=0.01, momentum=0.9, centered=True, weight_decay=0.1)),
    ("NAdam", dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True)),
    ("RAdam", dict(lr=0.01, betas=(0.9, 0.9), weight_decay=0.1)),
    ("ASGD", dict(lr=0.05, t0=0, weight_decay=0.1, maximize=True)),
    ("Adagrad", dict(lr=0.1, lr_decay=0.1, initial_accumulator_value=0.1)),
]


def _diff_steps(cls, kwargs, p0, grads, lr):
    p = p0.clone()
    kw = dict(kwargs)
    if kw.get("lr") == "tensor":
        kw["lr"] = lr
    opt = cls([p], differentiable=True, **kw)
    for g in grads:
        p.grad = g
        opt.step()
    outs = [p] + [v for k, v in opt.state[p].items()
                  if isinstance(v, torch.Tensor) and v.requires_grad]
    return opt, outs


@pytest.mark.parametrize("optim,kwargs", DIFF_NEW_CASES,
                         ids=[f"{o}-{k}" for o, k in DIFF_NEW_CASES])
def test_differentiable_steps_match_torch(optim, kwargs):
    """Three differentiable steps on a non-leaf param: the same outputs and the same gradients
    (w.r.t. the initial param, each step's grad and a Tensor lr) as torch - or torch's exact
    error where torch's own differentiable implementation fails (e.g. an in-place update of a
    tensor autograd still needs, or a Tensor lr where torch wants a Number)."""
    g = torch.Generator().manual_seed(78)

    def leaf(n=6):
        return (torch.rand(n, generator=g, dtype=torch.float64) - 0.5).requires_grad_()

    p0, grads = leaf(), [leaf(), leaf(), leaf()]
    lr = torch.tensor(0.05, dtype=torch.float64, requires_grad=True)
    inputs = [p0, *grads, lr]
    weights = [torch.rand(6, generator=g, dtype=torch.float64) for _ in range(8)]

    def run(cls):
        opt, outs = _diff_steps(cls, kwargs, p0, grads, lr)
        loss = sum((w * o).sum() for w, o in zip(weights, outs))
        return opt, outs, torch.autograd.grad(loss, inputs, allow_unused=True)

    kind, res = outcome(lambda: run(torch_cls(optim)))
    if kind == "raise":
        with pytest.raises(type(res)) as info:
            run(fused_cls(optim))
        assert str(info.value) == str(res)
        return
    _, outs_t, grads_t = res
    opt_f, outs_f, grads_f = run(fused_cls(optim))
    assert_reference_path(opt_f)
    assert len(outs_f) == len(outs_t) >= 2
    for a, b in zip(outs_f, outs_t):
        assert a.requires_grad
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    n_nonzero = 0
    for a, b in zip(grads_f, grads_t):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
            n_nonzero += int(a.abs().sum() > 0)
    assert n_nonzero >= 3


GRADCHECK_CASES = [
    pytest.param("Lion", dict(lr=0.05, weight_decay=0.1), id="Lion-wd"),
    pytest.param("Lion", dict(lr=0.05, betas=(0.5, 0.9), maximize=True), id="Lion-maximize"),
    pytest.param("Lion", dict(lr="tensor", weight_decay=0.1), id="Lion-tensor_lr"),
    pytest.param("LAMB", dict(lr=0.05, weight_decay=0.0), id="LAMB-no_trust_ratio"),
    pytest.param("LAMB", dict(lr=0.05, weight_decay=0.0, bias_correction=False,
                              grad_averaging=False, maximize=True), id="LAMB-no_bc_no_avg"),
    pytest.param("LAMB", dict(lr=0.05, weight_decay=0.1), id="LAMB-trust_ratio"),
    pytest.param("LAMB", dict(lr=0.05, weight_decay=0.0, max_grad_norm=0.5), id="LAMB-clipped"),
    pytest.param("LAMB", dict(lr="tensor", weight_decay=0.0), id="LAMB-tensor_lr"),
]


@pytest.mark.parametrize("optim,kwargs", GRADCHECK_CASES)
def test_differentiable_lamb_lion_gradcheck(optim, kwargs):
    """LAMB and Lion have no torch implementation to compare gradients with: their
    differentiable step's analytical gradients (two steps, w.r.t. the initial param, the grads
    and a Tensor lr) must agree with finite differences.  The values are also those of the
    plain-torch oracle."""
    g = torch.Generator().manual_seed(79)

    def leaf(n=5):
        return (torch.rand(n, generator=g, dtype=torch.float64) - 0.5).requires_grad_()

    p0, g0, g1 = leaf(), leaf(), leaf()
    lr = torch.tensor(0.05, dtype=torch.float64, requires_grad=True)

    def fn(cls):
        return lambda p0_, g0_, g1_, lr_: tuple(_diff_steps(cls, kwargs, p0_, [g0_, g1_], lr_)[1])

    outs_ref = fn(torch_cls(optim))(p0, g0, g1, lr)
    outs = fn(fused_cls(optim))(p0, g0, g1, lr)
    assert len(outs) == len(outs_ref) >= 2
    for a, b in zip(outs, outs_ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert torch.autograd.gradcheck(fn(torch_cls(optim)), (p0, g0, g1, lr))  # the oracle itself
    assert torch.autograd.gradcheck(fn(fused_cls(optim)), (p0, g0, g1, lr))


# ----------------------------------------------------------------------------- misc


@pytest.mark.parametrize("optim", NEW_TORCH_OPTIMS + ["LAMB", "Lion"])
def test_deepcopy_and_pickle_round_trip_mid_run(optim):
    """copy.deepcopy / pickle (what torch.save(optimizer) does) of a fusedoptim optimizer in the
    middle of a run continues like torch's."""
    import pickle

    dtype = torch.float64
    values = make_param_values([(7,), (3, 4)], dtype, seed=80)
    grads = make_grad_values([(7,), (3, 4)], dtype, seed=8000)
    cfg = OptimConfig(optim, {})
    p_t, p_f = as_params(values), as_params(values)
    o_t = torch_cls(optim)(p_t)
    o_f = fused_cls(optim)(p_f)
    _lockstep(o_t, p_t, o_f, p_f, grads[:4])
    o_t2, p_t2 = copy.deepcopy((o_t, p_t))
    o_f2, p_f2 = pickle.loads(pickle.dumps((o_f, p_f)))
    _lockstep(o_t2, p_t2, o_f2, p_f2, grads[4:])
    assert_runs_match(o_f2, o_t2, p_f2, p_t2, cfg)
    assert_fused_path(o_f2)
