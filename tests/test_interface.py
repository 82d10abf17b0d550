"""torch.optim-compatible interface: constructors, param forms, groups, closures, zero_grad,
step hooks, LR schedulers, Tensor lr, execution paths, differentiable and sparse steps."""

import copy
import inspect
import warnings

import pytest
import torch
from torch.optim import lr_scheduler
from torch.optim.optimizer import (
    register_optimizer_step_post_hook,
    register_optimizer_step_pre_hook,
)

import fusedoptim
from optim_configs import OPTIM_NAMES, OptimConfig, TensorHP, fusedoptim_options
from helpers import (
    NUM_STEPS,
    accepts,
    as_params,
    assert_fused_path,
    assert_param_groups_match,
    assert_params_match,
    assert_reference_path,
    assert_runs_match,
    assert_state_dicts_match,
    assert_states_match,
    capture_exception,
    fused_cls,
    interface_kwargs,
    make_grad_values,
    make_param_values,
    outcome,
    run_steps,
    set_grads,
    torch_cls,
)

OPTIMS = list(OPTIM_NAMES)
SHAPES = [(7,), (3, 4), (17,)]


def _kw(optim):
    return interface_kwargs(optim)


def _values(dtype=torch.float64, seed=30, shapes=SHAPES):
    return make_param_values(shapes, dtype, seed=seed), make_grad_values(shapes, dtype,
                                                                          seed=seed * 100)


# ----------------------------------------------------------------------------- API surface


def test_extension_available():
    assert fusedoptim.extension_available() is True


@pytest.mark.parametrize("optim", OPTIMS)
def test_classes_subclass_torch_optimizer(optim):
    cls = fused_cls(optim)
    assert issubclass(cls, torch.optim.Optimizer)
    assert cls is not torch_cls(optim)
    assert issubclass(fusedoptim.ReferencePathWarning, UserWarning)


@pytest.mark.parametrize("optim", OPTIMS)
def test_constructor_signature_matches_torch(optim):
    st = inspect.signature(torch_cls(optim).__init__).parameters
    sf = inspect.signature(fused_cls(optim).__init__).parameters
    # torch's, then fusedoptim's own keyword-only options.
    own = list(fusedoptim_options(optim))
    assert list(sf) == list(st) + own
    defaults = {"max_grad_norm": None, "norm_type": 2.0, "state_dtype": None, "master_weights": False,
                "stochastic_rounding": False}
    assert [(sf[n].kind, sf[n].default) for n in own] == [(inspect.Parameter.KEYWORD_ONLY, defaults[n]) for n in own]
    for name in st:
        assert sf[name].kind == st[name].kind, name
        assert sf[name].default == st[name].default, (name, sf[name].default, st[name].default)


@pytest.mark.parametrize("optim", OPTIMS)
def test_defaults_and_groups_match_torch(optim):
    values, _ = _values()
    o_t = torch_cls(optim)(as_params(values))
    o_f = fused_cls(optim)(as_params(values))
    own = {n: {"norm_type": 2.0, "master_weights": False, "stochastic_rounding": False}.get(n)
           for n in fusedoptim_options(optim)}  # ours, last
    assert o_f.defaults == {**o_t.defaults, **own}
    assert list(o_f.defaults) == list(o_t.defaults) + list(own)  # same key order, as printed by repr
    assert_param_groups_match(o_f.param_groups, o_t.param_groups)
    assert [type(v) for v in o_f.defaults.values()] == [type(v) for v in {**o_t.defaults, **own}.values()]
    if optim == "AdamW":
        assert o_f.defaults["weight_decay"] == 1e-2
    # before any step: the same state as torch (empty, except Adagrad's, made at construction)
    assert_state_dicts_match(o_f.state_dict(), o_t.state_dict())


# ----------------------------------------------------------------------------- param forms


def _model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2))


PARAM_FORMS = ["list", "tuple", "generator", "named_parameters", "list_of_dicts",
               "named_list_of_dicts", "single_dict_group"]


def _params_arg(form, model):
    ps = list(model.parameters())
    if form == "list":
        return ps
    if form == "tuple":
        return tuple(ps)
    if form == "generator":
        return model.parameters()
    if form == "named_parameters":
        return model.named_parameters()
    if form == "list_of_dicts":
        return [{"params": ps[:2], "lr": 0.02}, {"params": ps[2:]}]
    if form == "named_list_of_dicts":
        named = list(model.named_parameters())
        return [{"params": named[:2]}, {"params": named[2:], "weight_decay": 0.1}]
    if form == "single_dict_group":
        return [{"params": model.parameters()}]
    raise AssertionError(form)


@pytest.mark.parametrize("form", PARAM_FORMS)
@pytest.mark.parametrize("optim", OPTIMS)
def test_param_forms(optim, form):
    # fp64: with fp32 the centered RMSprop momentum buffer's elements near 0 carry absolute
    # rounding errors (~1e-5 of the buffer's scale, fusedoptim's smaller than torch's own vs an
    # fp64 run) that an elementwise rtol of 1e-5 flags; this test is about param forms.
    m_t = _model().double()
    m_f = copy.deepcopy(m_t)
    o_t = torch_cls(optim)(_params_arg(form, m_t), **_kw(optim))
    o_f = fused_cls(optim)(_params_arg(form, m_f), **_kw(optim))
    # defaults filled into every group; same names / params ordering
    assert_param_groups_match(o_f.param_groups, o_t.param_groups)
    for gf, gt in zip(o_f.param_groups, o_t.param_groups):
        assert isinstance(gf["params"], list)
        idx_f = [dict((id(p), i) for i, p in enumerate(m_f.parameters()))[id(p)]
                 for p in gf["params"]]
        idx_t = [dict((id(p), i) for i, p in enumerate(m_t.parameters()))[id(p)]
                 for p in gt["params"]]
        assert idx_f == idx_t
    x = torch.randn(6, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for _ in range(NUM_STEPS):
        for m, o in ((m_t, o_t), (m_f, o_f)):
            o.zero_grad()
            m(x).sin().sum().backward()
            o.step()
    assert_runs_match(o_f, o_t, list(m_f.parameters()), list(m_t.parameters()))
    assert_fused_path(o_f)


# Hyperparameters of the group added mid-training: different from the first group's (and
# some that change which state exists).
ADDED_GROUP_HP = {
    "SGD": dict(lr=0.2, momentum=0.5),
    "Adam": dict(lr=0.05, amsgrad=True),
    "AdamW": dict(lr=0.05, amsgrad=True),
    "Adadelta": dict(lr=1.0, rho=0.5, weight_decay=0.1),
    # initial_accumulator_value of an added group is ignored by torch (the constructor's
    # value is used): so must it be by us
    "Adagrad": dict(lr=0.05, lr_decay=0.1, initial_accumulator_value=0.7),
    "Adamax": dict(lr=0.05, betas=(0.5, 0.9), weight_decay=0.1),
    "ASGD": dict(lr=0.1, t0=0, lambd=0.1),
    "NAdam": dict(lr=0.05, decoupled_weight_decay=True, weight_decay=0.1),
    "RAdam": dict(lr=0.05, betas=(0.8, 0.999), weight_decay=0.1),
    "RMSprop": dict(lr=0.05, momentum=0.0, centered=False),
    "Rprop": dict(lr=0.2, etas=(0.3, 1.5), step_sizes=(1e-3, 1.0)),
    "LAMB": dict(lr=0.05, weight_decay=0.0, always_adapt=True, max_grad_norm=None),
    "Lion": dict(lr=1e-2, betas=(0.5, 0.9), maximize=True),
}


@pytest.mark.parametrize("optim", OPTIMS)
def test_add_param_group_mid_training(optim):
    values, grads = _values(shapes=[(7,), (5,), (3, 3)])
    extra_hp = ADDED_GROUP_HP[optim]

    def run(cls):
        ps = as_params(values)
        o = cls([ps[0]], **_kw(optim))
        for step, gs in enumerate(grads):
            if step == 4:
                o.add_param_group({"params": [ps[1], ps[2]], **extra_hp})
            active = ps[:1] if step < 4 else ps
            set_grads(active, gs[: len(active)])
            o.step()
        return o, ps

    o_t, p_t = run(torch_cls(optim))
    o_f, p_f = run(fused_cls(optim))
    assert len(o_f.param_groups) == 2
    assert_runs_match(o_f, o_t, p_f, p_t)
    assert_fused_path(o_f)


# ----------------------------------------------------------------------------- closure


@pytest.mark.parametrize("optim", OPTIMS)
def test_step_closure_runs_with_grad_and_returns_loss(optim):
    m_t = _model(1)
    m_f = copy.deepcopy(m_t)
    o_t = torch_cls(optim)(m_t.parameters(), **_kw(optim))
    o_f = fused_cls(optim)(m_f.parameters(), **_kw(optim))
    x = torch.randn(6, 4, generator=torch.Generator().manual_seed(2))
    seen_grad_mode = []

    def make_closure(m, o):
        def closure():
            seen_grad_mode.append(torch.is_grad_enabled())
            o.zero_grad()
            loss = m(x).pow(2).mean()
            loss.backward()
            return loss
        return closure

    for step in range(NUM_STEPS):
        with torch.no_grad():
            loss_t = o_t.step(make_closure(m_t, o_t))
            loss_f = o_f.step(make_closure(m_f, o_f))
            assert not torch.is_grad_enabled()  # step restored the caller's grad mode
        assert torch.is_grad_enabled()
        assert isinstance(loss_f, torch.Tensor)
        torch.testing.assert_close(loss_f, loss_t, rtol=1e-6, atol=1e-7)
    assert seen_grad_mode == [True] * (2 * NUM_STEPS)
    assert o_f.step() is None and o_t.step() is None  # no closure -> None, like torch
    assert o_f.step(lambda: "sentinel") == o_t.step(lambda: "sentinel") == "sentinel"
    assert_params_match(list(m_f.parameters()), list(m_t.parameters()),
                        tol=dict(rtol=1e-5, atol=1e-6))


# ----------------------------------------------------------------------------- zero_grad


@pytest.mark.parametrize("set_to_none", [True, False])
@pytest.mark.parametrize("optim", OPTIMS)
def test_zero_grad(optim, set_to_none):
    m_t = _model(2)
    m_f = copy.deepcopy(m_t)
    o_t = torch_cls(optim)(m_t.parameters(), **_kw(optim))
    o_f = fused_cls(optim)(m_f.parameters(), **_kw(optim))
    x = torch.randn(3, 4)
    for m in (m_t, m_f):
        m(x).sum().backward()
    # one param never got a grad
    extra_t = torch.zeros(3, requires_grad=True)
    extra_f = torch.zeros(3, requires_grad=True)
    o_t.add_param_group({"params": [extra_t]})
    o_f.add_param_group({"params": [extra_f]})
    grads_before = [p.grad for p in m_f.parameters()]
    o_t.zero_grad(set_to_none=set_to_none)
    o_f.zero_grad(set_to_none=set_to_none)
    for pf, pt, gb in zip(m_f.parameters(), m_t.parameters(), grads_before):
        if set_to_none:
            assert pf.grad is None and pt.grad is None
        else:
            assert pf.grad is gb  # zeroed in place, like torch
            assert torch.equal(pf.grad, pt.grad) and not pf.grad.any()
    assert extra_f.grad is None and extra_t.grad is None
    # default is set_to_none=True
    for m in (m_t, m_f):
        m(x).sum().backward()
    o_f.zero_grad()
    assert all(p.grad is None for p in m_f.parameters())


# ----------------------------------------------------------------------------- step hooks


def _step_hook_log(cls, optim, values, grads):
    log = []
    ps = as_params(values)
    opt = cls(ps, **_kw(optim))
    loss_box = []

    def closure():
        loss_box.append(1)
        return torch.tensor(float(len(loss_box)))

    def pre(o, args, kwargs):
        assert o is opt
        log.append(("pre", len(args), args[0] is opt, sorted(kwargs)))
        if len(log) == 3:  # replace the (absent) closure on the 2nd step
            return args, {"closure": closure}
        return None

    def post(o, args, kwargs):
        assert o is opt
        # post hooks see the state after the update
        log.append(("post", len(args), sorted(kwargs), sorted(o.state.get(ps[0], {}).keys())))

    h_pre = opt.register_step_pre_hook(pre)
    h_post = opt.register_step_post_hook(post)
    ret = []
    for step, gs in enumerate(grads):
        set_grads(ps, gs)
        ret.append(opt.step())
        if step == 5:
            h_pre.remove()
        if step == 7:
            h_post.remove()
    return log, ret, opt, ps


@pytest.mark.parametrize("optim", OPTIMS)
def test_step_pre_and_post_hooks_like_torch(optim):
    values, grads = _values()
    log_t, ret_t, o_t, p_t = _step_hook_log(torch_cls(optim), optim, values, grads)
    log_f, ret_f, o_f, p_f = _step_hook_log(fused_cls(optim), optim, values, grads)
    assert log_f == log_t
    # each hook exactly once per step while registered: 6 pre + 8 post
    assert sum(e[0] == "pre" for e in log_f) == 6 and sum(e[0] == "post" for e in log_f) == 8
    assert [None if r is None else float(r) for r in ret_f] == \
        [None if r is None else float(r) for r in ret_t]
    assert float(ret_f[1]) == 1.0
    assert_runs_match(o_f, o_t, p_f, p_t)


@pytest.mark.parametrize("optim", OPTIMS)
def test_global_step_hooks_fire_once_per_step(optim):
    values, grads = _values()
    calls = []
    h1 = register_optimizer_step_pre_hook(lambda o, a, k: calls.append(("pre", type(o))))
    h2 = register_optimizer_step_post_hook(lambda o, a, k: calls.append(("post", type(o))))
    try:
        for cls in (torch_cls(optim), fused_cls(optim)):
            ps = as_params(values)
            o = cls(ps, **_kw(optim))
            run_steps(o, ps, grads[:3])
    finally:
        h1.remove()
        h2.remove()
    exp = []
    for cls in (torch_cls(optim), fused_cls(optim)):
        exp += [("pre", cls), ("post", cls)] * 3
    assert calls == exp


# ----------------------------------------------------------------------------- LR schedulers


def _has_momentum_or_betas(optim):
    return accepts(optim, "momentum") or accepts(optim, "betas")


def _sched_factories(optim):
    # cycle_momentum needs a 'momentum' or 'betas' option (torch raises otherwise)
    cycle = _has_momentum_or_betas(optim)
    f = {
        "StepLR": lambda o: lr_scheduler.StepLR(o, step_size=3, gamma=0.5),
        "LambdaLR": lambda o: lr_scheduler.LambdaLR(o, lambda e: 0.9 ** e + 0.1 * (e % 2)),
        "OneCycleLR": lambda o: lr_scheduler.OneCycleLR(
            o, max_lr=0.1, total_steps=NUM_STEPS + 2, cycle_momentum=cycle,
            base_momentum=0.8, max_momentum=0.95),
        "CosineAnnealingLR": lambda o: lr_scheduler.CosineAnnealingLR(o, T_max=4),
    }
    if optim in ("SGD", "RMSprop", "NAdam", "Lion", "ASGD"):
        f["CyclicLR"] = lambda o: lr_scheduler.CyclicLR(
            o, base_lr=0.01, max_lr=0.1, step_size_up=3, cycle_momentum=cycle)
    return f


SCHED_CASES = [(o, s) for o in OPTIMS for s in _sched_factories(o)]


@pytest.mark.parametrize("tensor_lr", [False, True], ids=["float_lr", "tensor_lr"])
@pytest.mark.parametrize("optim,sched", SCHED_CASES, ids=[f"{o}-{s}" for o, s in SCHED_CASES])
def test_lr_schedulers_match_torch(optim, sched, tensor_lr):
    """Schedulers rewrite group['lr'] (fill_ for a Tensor lr) and, with cycle_momentum,
    group['momentum'] / group['betas'] each step: the fused step must read them every step."""
    values, grads = _values(seed=31)
    kw = _kw(optim)
    if optim != "SGD" and accepts(optim, "weight_decay"):
        kw["weight_decay"] = 0.05

    def run(cls):
        ps = as_params(values)
        k = dict(kw)
        if tensor_lr:
            k["lr"] = torch.tensor(k["lr"], dtype=torch.float64)
        o = cls(ps, **k)
        s = _sched_factories(optim)[sched](o)
        hist = []
        for gs in grads:
            set_grads(ps, gs)
            o.step()
            s.step()
            g = o.param_groups[0]
            hist.append((float(g["lr"]), g.get("momentum"), g.get("betas")))
        return o, ps, hist

    o_t, p_t, h_t = run(torch_cls(optim))
    o_f, p_f, h_f = run(fused_cls(optim))
    assert h_f == h_t
    assert len({h[0] for h in h_t}) > 1  # the schedule did change lr
    assert_runs_match(o_f, o_t, p_f, p_t)
    assert_fused_path(o_f)


# Step 7 of test_hand_changed_hyperparameters_take_effect: each algorithm's own options (that
# keep the set of state tensors; see test_dynamic for those that change it).
HAND_CHANGES = {
    "SGD": dict(momentum=0.5, dampening=0.25),
    "Adam": dict(betas=(0.7, 0.9), eps=1e-4),
    "AdamW": dict(betas=(0.7, 0.9), eps=1e-4),
    "Adadelta": dict(rho=0.5, eps=1e-3),
    "Adagrad": dict(lr_decay=0.5, eps=1e-3),
    "Adamax": dict(betas=(0.3, 0.9), eps=1e-4),
    "ASGD": dict(lambd=0.1, alpha=0.5, t0=1),
    "NAdam": dict(betas=(0.7, 0.9), eps=1e-4, momentum_decay=0.1, decoupled_weight_decay=True),
    "RAdam": dict(betas=(0.7, 0.999), eps=1e-4, decoupled_weight_decay=True),
    "RMSprop": dict(alpha=0.5, eps=1e-4, momentum=0.3),
    "Rprop": dict(etas=(0.3, 1.5), step_sizes=(0.01, 0.03)),
    "LAMB": dict(betas=(0.7, 0.9), eps=1e-4, max_grad_norm=0.5, always_adapt=True,
                 bias_correction=False, grad_averaging=False, decoupled_weight_decay=False),
    "Lion": dict(betas=(0.5, 0.8)),
}


@pytest.mark.parametrize("optim", OPTIMS)
def test_hand_changed_hyperparameters_take_effect(optim):
    """lr / weight_decay / momentum / betas / amsgrad-free flags edited in param_groups between
    steps are honoured like torch."""
    values, grads = _values(seed=32)

    def run(cls):
        ps = as_params(values)
        o = cls(ps, **_kw(optim))
        for step, gs in enumerate(grads):
            g = o.param_groups[0]
            if step == 3:
                g["lr"] = g["lr"] * 3  # Rprop: only seeds step sizes, torch ignores it later
            if step == 5 and "weight_decay" in g:
                g["weight_decay"] = 0.1
            if step == 7:
                g.update(HAND_CHANGES[optim])
            if step == 8:
                g["maximize"] = True
            set_grads(ps, gs)
            o.step()
        return o, ps

    o_t, p_t = run(torch_cls(optim))
    o_f, p_f = run(fused_cls(optim))
    assert_runs_match(o_f, o_t, p_f, p_t)


@pytest.mark.parametrize("lr_dtype", [torch.float32, torch.float64], ids=["lr32", "lr64"])
@pytest.mark.parametrize("optim", OPTIMS)
def test_tensor_lr_fill_takes_effect(optim, lr_dtype):
    values, grads = _values(seed=33)
    lrs = {}

    def run(cls):
        ps = as_params(values)
        kw = _kw(optim)
        lr = torch.tensor(kw.pop("lr"), dtype=lr_dtype)
        lrs[cls] = lr
        o = cls(ps, lr=lr, **kw)
        for step, gs in enumerate(grads):
            if step in (3, 6):
                lr.fill_(lr.item() * 2.5)
            set_grads(ps, gs)
            o.step()
        assert o.param_groups[0]["lr"] is lr  # kept by reference, like torch
        return o, ps

    o_t, p_t = run(torch_cls(optim))
    o_f, p_f = run(fused_cls(optim))
    assert_runs_match(o_f, o_t, p_f, p_t)
    assert_fused_path(o_f)


# ----------------------------------------------------------------------------- paths


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16],
                         ids=["fp32", "fp64", "bf16", "fp16"])
@pytest.mark.parametrize("optim", OPTIMS)
def test_last_step_paths_counts(optim, dtype, no_reference_path_warning):
    shapes = [(7,), (3, 4), (17,), (1,)]
    values = make_param_values(shapes, dtype, seed=34)
    grads = make_grad_values(shapes, dtype, num_steps=3, seed=3400)
    ps = as_params(values)
    o = fused_cls(optim)(ps, **_kw(optim))
    set_grads(ps, grads[0])
    o.step()
    assert o.last_step_paths == {"fused": 4, "reference": 0}
    grads[1][1] = None
    grads[1][3] = None
    set_grads(ps, grads[1])
    o.step()
    assert o.last_step_paths == {"fused": 2, "reference": 0}
    set_grads(ps, [None] * 4)
    o.step()
    assert o.last_step_paths == {"fused": 0, "reference": 0}


# ----------------------------------------------------------------------------- differentiable


DIFF_CASES = [
    ("SGD", dict(lr=0.1, momentum=0.9), ["momentum_buffer"]),
    ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.1), ["momentum_buffer"]),
    ("SGD", dict(lr=0.1, momentum=0.0, weight_decay=0.1, maximize=True), []),
    ("Adam", dict(lr=0.01), ["exp_avg", "exp_avg_sq"]),
    ("Adam", dict(lr=0.01, weight_decay=0.1, amsgrad=True),
     ["exp_avg", "exp_avg_sq", "max_exp_avg_sq"]),
    ("Adam", dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True, maximize=True),
     ["exp_avg", "exp_avg_sq"]),
    ("AdamW", dict(lr=0.01, amsgrad=True), ["exp_avg", "exp_avg_sq", "max_exp_avg_sq"]),
    ("SGD", dict(lr="tensor", momentum=0.9), ["momentum_buffer"]),
    ("Adam", dict(lr="tensor"), ["exp_avg", "exp_avg_sq"]),
]


def _diff_step(cls, optim, kwargs, inputs, state_keys):
    """One differentiable step on a non-leaf param; returns outputs that depend on inputs."""
    p0, grad, lr, *state0 = inputs
    p = p0.clone()
    p.grad = grad
    kw = dict(kwargs)
    if kw["lr"] == "tensor":
        kw["lr"] = lr
    opt = cls([p], differentiable=True, **kw)
    st = {k: v.clone() for k, v in zip(state_keys, state0)}
    if optim != "SGD":
        st["step"] = torch.tensor(3.0)
    opt.state[p].update(st)
    opt.step()
    outs = [p] + [opt.state[p][k] for k in state_keys]
    return opt, outs


@pytest.mark.parametrize("optim,kwargs,state_keys", DIFF_CASES,
                         ids=[f"{o}-{k}" for o, k, _ in DIFF_CASES])
def test_differentiable_reference_path_and_gradients(optim, kwargs, state_keys):
    g = torch.Generator().manual_seed(35)

    def leaf(*shape, positive=False):
        t = torch.rand(shape, generator=g, dtype=torch.float64)
        return (t + 0.1 if positive else t - 0.5).requires_grad_()

    p0, grad = leaf(6), leaf(6)
    lr = torch.tensor(0.05, dtype=torch.float64, requires_grad=True)
    state0 = [leaf(6, positive=(k != "exp_avg" and k != "momentum_buffer")) for k in state_keys]
    if "max_exp_avg_sq" in state_keys:  # keep max_exp_avg_sq >= exp_avg_sq for some entries
        state0[state_keys.index("max_exp_avg_sq")] = leaf(6, positive=True)
    inputs = [p0, grad, lr] + state0
    weights = [torch.rand(6, generator=g, dtype=torch.float64) for _ in range(1 + len(state_keys))]

    res = {}
    for name, cls in (("torch", torch_cls(optim)), ("fused", fused_cls(optim))):
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always")
            opt, outs = _diff_step(cls, optim, kwargs, inputs, state_keys)
        if name == "fused":
            assert_reference_path(opt)
            # differentiable=True takes the reference path silently
            assert not [w for w in rec
                        if issubclass(w.category, fusedoptim.ReferencePathWarning)]
        assert all(o.requires_grad for o in outs)
        loss = sum((w * o).sum() for w, o in zip(weights, outs))
        wrt = [t for t in inputs if t is not lr or kwargs["lr"] == "tensor"]
        grads = torch.autograd.grad(loss, wrt, allow_unused=True)
        res[name] = ([o.detach() for o in outs], grads)

    for a, b in zip(res["fused"][0], res["torch"][0]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    n_nonzero = 0
    for a, b in zip(res["fused"][1], res["torch"][1]):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
            n_nonzero += int(a.abs().sum() > 0)
    assert n_nonzero >= 2  # gradients really flowed through the step


# ----------------------------------------------------------------------------- sparse


SPARSE_SGD_KW = [
    dict(lr=0.1),
    dict(lr=0.1, momentum=0.9),
    dict(lr=0.1, momentum=0.9, nesterov=True),
    dict(lr=0.1, momentum=0.9, dampening=0.3, maximize=True),
    dict(lr=0.1, weight_decay=0.1),  # torch: add(sparse, dense) is not supported
    dict(lr=0.1, momentum=0.9, foreach=True),
    # torch: "`_fused_sgd` does not support sparse gradients"; fused=True is a no-op flag in
    # fusedoptim, so this one is compared with torch run without fused (see below)
    dict(lr=0.1, momentum=0.9, fused=True),
]


@pytest.mark.parametrize("kw", SPARSE_SGD_KW, ids=[repr(k) for k in SPARSE_SGD_KW])
def test_sparse_grad_sgd_matches_torch(kw):
    """Sparse grads (nn.Embedding(sparse=True)) go through the reference path, silently, and
    give torch's results - or torch's exact error where torch refuses them."""

    def run(cls, kwargs):
        torch.manual_seed(3)
        emb = torch.nn.Embedding(12, 4, sparse=True).double()
        dense = torch.nn.Linear(4, 1).double()
        o = cls(list(emb.parameters()) + list(dense.parameters()), **kwargs)
        seen_paths = []
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always")
            for step in range(NUM_STEPS):
                o.zero_grad()
                idx = torch.tensor([step % 12, (3 * step) % 12, 5, 5])
                dense(emb(idx)).pow(2).sum().backward()
                assert emb.weight.grad.is_sparse
                o.step()
                seen_paths.append(dict(getattr(o, "last_step_paths", {})))
        return o, list(emb.parameters()) + list(dense.parameters()), rec, seen_paths

    torch_kw = dict(kw)
    kind_t, res_t = outcome(lambda: run(torch.optim.SGD, torch_kw))
    if kind_t == "raise" and kw.get("fused"):
        assert "sparse" in str(res_t), res_t
        del torch_kw["fused"]
        kind_t, res_t = outcome(lambda: run(torch.optim.SGD, torch_kw))
    if kind_t == "raise":
        with pytest.raises(type(res_t)) as info:
            run(fusedoptim.SGD, kw)
        assert str(info.value) == str(res_t)
        return
    o_t, p_t, _, _ = res_t
    o_f, p_f, rec, paths = run(fusedoptim.SGD, kw)
    assert_params_match(p_f, p_t)
    assert_states_match(o_f, o_t, p_f, p_t)
    config = OptimConfig("SGD", kw, torch_kw if torch_kw != kw else None)
    assert_state_dicts_match(o_f.state_dict(), o_t.state_dict(), config)
    assert not [w for w in rec if issubclass(w.category, fusedoptim.ReferencePathWarning)]
    # the sparse-grad param took the reference path (the dense Linear may be fused)
    assert all(pth["reference"] >= 1 for pth in paths), paths
    assert all(pth["reference"] + pth["fused"] == 3 for pth in paths), paths


SPARSE_ADAGRAD_KW = [
    dict(lr=0.1),
    dict(lr=0.1, lr_decay=0.1),
    dict(lr=0.1, lr_decay=0.05, initial_accumulator_value=0.2, eps=1e-6),
    dict(lr=0.1, maximize=True, lr_decay=0.01),
    dict(lr=TensorHP(0.1), lr_decay=0.05),
    dict(lr=0.1, lr_decay=0.1, foreach=True),
    # torch: "`fused` does not support sparse grad or complex param"; fused=True is a no-op
    # flag in fusedoptim, so this one is compared with torch run without fused
    dict(lr=0.1, lr_decay=0.1, fused=True),
]


def _sparse_run(cls, kwargs, steps=NUM_STEPS, embedding_grads_from=0):
    torch.manual_seed(3)
    emb = torch.nn.Embedding(12, 4, sparse=True).double()
    dense = torch.nn.Linear(4, 1).double()
    params = list(emb.parameters()) + list(dense.parameters())
    o = cls(params, **OptimConfig("Adagrad", kwargs).fused_kwargs(torch.float64))
    paths = []
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        for step in range(steps):
            o.zero_grad()
            idx = torch.tensor([step % 12, (3 * step) % 12, 5, 5])
            dense(emb(idx)).pow(2).sum().backward()
            assert emb.weight.grad.is_sparse
            if step < embedding_grads_from:
                emb.weight.grad = None
            o.step()
            paths.append(dict(getattr(o, "last_step_paths", {})))
    return o, params, rec, paths


@pytest.mark.parametrize("kw", SPARSE_ADAGRAD_KW, ids=[repr(k) for k in SPARSE_ADAGRAD_KW])
def test_sparse_grad_adagrad_matches_torch(kw):
    """nn.Embedding(sparse=True) grads: torch's sparse Adagrad update (state 'sum' stays dense,
    only the touched rows move), silently on the reference path; the dense Linear beside it
    stays fused."""
    torch_kw = dict(kw)
    kind, res = outcome(lambda: _sparse_run(torch.optim.Adagrad, torch_kw))
    if kind == "raise" and kw.get("fused"):
        assert "sparse" in str(res), res
        del torch_kw["fused"]
        kind, res = outcome(lambda: _sparse_run(torch.optim.Adagrad, torch_kw))
    assert kind == "ok", res
    o_t, p_t, _, _ = res
    o_f, p_f, rec, paths = _sparse_run(fusedoptim.Adagrad, kw)
    assert_params_match(p_f, p_t)
    assert_states_match(o_f, o_t, p_f, p_t)
    config = OptimConfig("Adagrad", kw, torch_kw if torch_kw != kw else None)
    assert_state_dicts_match(o_f.state_dict(), o_t.state_dict(), config)
    assert not [w for w in rec if issubclass(w.category, fusedoptim.ReferencePathWarning)]
    assert all(p == {"fused": 2, "reference": 1} for p in paths), paths
    # rows never looked up keep their initial value and accumulator
    untouched = 11  # idx covers {s % 12, 3s % 12, 5} for s < 10: 11 is never used
    init = kw.get("initial_accumulator_value", 0)
    assert torch.all(o_f.state[p_f[0]]["sum"][untouched] == init)


@pytest.mark.parametrize("dense_first", [False, True], ids=["sparse_first", "dense_steps_first"])
def test_sparse_grad_adagrad_weight_decay_raises_like_torch_and_modifies_nothing(dense_first):
    """weight_decay with a sparse grad: torch's RuntimeError, raised before fusedoptim changes
    any param or state (torch itself has already advanced some state when it raises)."""
    kw = dict(lr=0.1, weight_decay=0.1)
    skip = 2 if dense_first else 0
    exp = capture_exception(lambda: _sparse_run(torch.optim.Adagrad, kw, steps=skip + 1,
                                                embedding_grads_from=skip))
    o_f, p_f, _, _ = _sparse_run(fusedoptim.Adagrad, kw, steps=skip, embedding_grads_from=skip)
    before = ([p.detach().clone() for p in p_f],
              {i: {k: v.clone() for k, v in o_f.state[p].items()} for i, p in enumerate(p_f)})
    # the next step has a sparse grad for the embedding and dense grads for the Linear
    torch.manual_seed(99)
    idx = torch.tensor([1, 2])
    o_f.zero_grad()
    emb_w, lin_w, lin_b = p_f
    (torch.nn.functional.embedding(idx, emb_w, sparse=True) @ lin_w.t() + lin_b).pow(2).sum() \
        .backward()
    assert emb_w.grad.is_sparse
    with pytest.raises(type(exp)) as info:
        o_f.step()
    assert str(info.value) == str(exp) == "weight_decay option is not compatible with sparse gradients"
    for i, p in enumerate(p_f):
        assert torch.equal(p.detach(), before[0][i]), i
        for k, v in before[1][i].items():
            assert torch.equal(o_f.state[p][k], v), (i, k)
