"""Numerical parity with torch.optim in fp32/fp64/complex, side by side, >= 10 steps.

Params, every state tensor, param_groups and the state_dict are compared against torch.optim
run in the same test on identical seeded params and identical step-varying grads.
"""

import copy
import warnings

import pytest
import torch

import fusedoptim
from helpers import (
    DEFAULT_SHAPES,
    NUM_STEPS,
    as_params,
    assert_fused_path,
    assert_params_match,
    assert_reference_path,
    assert_runs_match,
    assert_states_match,
    fused_cls,
    make_grad_values,
    make_param_values,
    outcome,
    run_fused,
    run_steps,
    run_torch,
    set_grads,
    torch_cls,
)
from optim_configs import (
    ALL_CONFIGS,
    OPTIM_NAMES,
    REPRESENTATIVE_CONFIGS,
    OptimConfig,
    TensorHP,
    config_ids,
    without_fused_for_torch,
)

TAIL_NUMELS = [0, 1, 7, 8, 9, 15, 16, 17, 31, 33, 4097, 65537]
TAIL_SHAPES = [(n,) for n in TAIL_NUMELS] + [(3, 5, 7)]


def _check_paths(config, opt):
    if config.expects_fused_path:
        assert_fused_path(opt)
    else:
        assert_reference_path(opt)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("config", ALL_CONFIGS, ids=config_ids(ALL_CONFIGS))
def test_registry_parity(config, dtype, isa):
    """Every registry configuration, several params of odd sizes in one group, 10 steps."""
    values = make_param_values(DEFAULT_SHAPES, dtype, seed=1)
    grads = make_grad_values(DEFAULT_SHAPES, dtype, seed=100)
    # differentiable=True steps under grad mode: in-place updates of leaves that require grad
    # raise in torch as well, so those runs use params that do not require grad.
    rg = not config.differentiable
    t_opt, t_params = run_torch(config, values, grads, requires_grad=rg)
    f_opt, f_params = run_fused(config, values, grads, requires_grad=rg)
    assert_runs_match(f_opt, t_opt, f_params, t_params, config)
    _check_paths(config, f_opt)


@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128], ids=["c64", "c128"])
@pytest.mark.parametrize("config", ALL_CONFIGS, ids=config_ids(ALL_CONFIGS))
def test_complex_parity(config, dtype, isa):
    """Complex params vs torch (torch views them as real pairs).

    torch refuses fused=True for complex params; fusedoptim accepts fused=True everywhere
    (it is a no-op on its CPU path), so those configurations are compared with torch run
    without the fused flag.  Any other torch refusal must be reproduced exactly."""
    shapes = [(1,), (7,), (3, 5), (17,)]
    values = make_param_values(shapes, dtype, seed=2)
    grads = make_grad_values(shapes, dtype, seed=200)
    rg = not config.differentiable
    t_kind, t_res = outcome(lambda: run_torch(config, values, grads, requires_grad=rg))
    if t_kind == "raise" and config.kwargs.get("fused"):
        assert "fused=True" in str(t_res), t_res  # torch: complex is not floating point
        config = without_fused_for_torch(config)
        t_kind, t_res = outcome(lambda: run_torch(config, values, grads, requires_grad=rg))
    if t_kind == "raise":
        with pytest.raises(type(t_res)) as info:
            run_fused(config, values, grads, requires_grad=rg)
        assert str(info.value) == str(t_res)
        return
    t_opt, t_params = t_res
    f_opt, f_params = run_fused(config, values, grads, requires_grad=rg)
    assert_runs_match(f_opt, t_opt, f_params, t_params, config)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("config", REPRESENTATIVE_CONFIGS, ids=config_ids(REPRESENTATIVE_CONFIGS))
def test_tail_sizes(config, dtype, isa):
    """numel 0,1,7,8,9,15,16,17,31,33,4097,65537 and (3,5,7), all in one param group."""
    values = make_param_values(TAIL_SHAPES, dtype, seed=3)
    grads = make_grad_values(TAIL_SHAPES, dtype, seed=300)
    t_opt, t_params = run_torch(config, values, grads)
    f_opt, f_params = run_fused(config, values, grads)
    assert_runs_match(f_opt, t_opt, f_params, t_params, config)
    assert_fused_path(f_opt)


def _mlp(dtype, seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 9), torch.nn.Tanh(),
        torch.nn.Linear(9, 3),
    ).to(dtype)


def _data(dtype, step):
    g = torch.Generator().manual_seed(5000 + step)
    x = torch.randn(8, 6, generator=g, dtype=torch.float64).to(dtype)
    y = torch.randn(8, 3, generator=g, dtype=torch.float64).to(dtype)
    return x, y


MODEL_CONFIGS = [c for c in REPRESENTATIVE_CONFIGS] + [
    OptimConfig("Adam", dict(lr=TensorHP(0.01), fused=True, amsgrad=True)),
    OptimConfig("AdamW", dict(lr=0.01, foreach=True)),
    OptimConfig("SGD", dict(lr=TensorHP(0.05), momentum=0.9, fused=True)),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("config", MODEL_CONFIGS, ids=config_ids(MODEL_CONFIGS))
def test_real_model_backward(config, dtype, isa, no_reference_path_warning):
    """A small MLP trained with loss.backward() (grads depend on the trajectory)."""
    m_t = _mlp(dtype)
    m_f = copy.deepcopy(m_t)
    o_t = torch_cls(config.optim)(m_t.parameters(), **config.reference_kwargs(dtype))
    o_f = fused_cls(config.optim)(m_f.parameters(), **config.fused_kwargs(dtype))
    losses_t, losses_f = [], []
    for step in range(12):
        x, y = _data(dtype, step)
        for m, o, losses in ((m_t, o_t, losses_t), (m_f, o_f, losses_f)):
            o.zero_grad()
            loss = torch.nn.functional.mse_loss(m(x), y)
            loss.backward()
            o.step()
            losses.append(loss.item())
        assert_fused_path(o_f)
    pf, pt = list(m_f.parameters()), list(m_t.parameters())
    assert_runs_match(o_f, o_t, pf, pt, config)
    torch.testing.assert_close(torch.tensor(losses_f), torch.tensor(losses_t),
                               **({"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32
                                  else {"rtol": 1e-10, "atol": 1e-12}))


# Four groups per optimizer, with different hyperparameters (and state-changing options).
GROUP_HPS = {
    "Adadelta": ([dict(lr=1.0), dict(lr=0.5, rho=0.5, weight_decay=0.1),
                  dict(lr=0.3, eps=1e-3, maximize=True), dict(rho=0.99, weight_decay=0.3)],
                 dict(lr=0.7)),
    "Adagrad": ([dict(lr=0.1), dict(lr=0.05, lr_decay=0.1, weight_decay=0.1),
                 dict(lr=0.2, eps=1e-3, maximize=True), dict(lr_decay=0.01, weight_decay=0.3)],
                dict(lr=0.03, initial_accumulator_value=0.1)),
    "Adamax": ([dict(lr=0.01), dict(lr=0.001, weight_decay=0.1, betas=(0.8, 0.99)),
                dict(lr=0.02, eps=1e-4, maximize=True), dict(betas=(0.3, 0.9), weight_decay=0.3)],
               dict(lr=0.003, weight_decay=0.01)),
    "ASGD": ([dict(lr=0.05, t0=2), dict(lr=0.01, lambd=0.1, weight_decay=0.1),
              dict(lr=0.02, alpha=0.5, t0=0, maximize=True), dict(t0=5, weight_decay=0.3)],
             dict(lr=0.03, t0=3)),
    "NAdam": ([dict(lr=0.01), dict(lr=0.001, weight_decay=0.1, momentum_decay=0.1),
               dict(lr=0.02, eps=1e-4, maximize=True, betas=(0.8, 0.99)),
               dict(weight_decay=0.3, decoupled_weight_decay=True)],
              dict(lr=0.003, weight_decay=0.01)),
    "RAdam": ([dict(lr=0.01, betas=(0.9, 0.9)), dict(lr=0.001, weight_decay=0.1),
               dict(lr=0.02, eps=1e-4, maximize=True, betas=(0.5, 0.8)),
               dict(weight_decay=0.3, decoupled_weight_decay=True)],
              dict(lr=0.003, weight_decay=0.01)),
    "RMSprop": ([dict(lr=0.01, momentum=0.9), dict(lr=0.001, centered=True, weight_decay=0.1),
                 dict(lr=0.02, momentum=0.5, centered=True, maximize=True),
                 dict(alpha=0.9, eps=1e-4)],
                dict(lr=0.003, weight_decay=0.01)),
    "Rprop": ([dict(lr=0.05), dict(lr=0.01, etas=(0.3, 1.5)),
               dict(lr=0.1, step_sizes=(0.02, 0.06), maximize=True),
               dict(etas=(0.1, 3.0), step_sizes=(1e-3, 0.5))],
              dict(lr=0.03)),
    "LAMB": ([dict(lr=0.01, max_grad_norm=1.0), dict(lr=0.001, weight_decay=0.0),
              dict(lr=0.02, eps=1e-4, maximize=True, always_adapt=True, weight_decay=0.0),
              dict(weight_decay=0.3, decoupled_weight_decay=False, bias_correction=False,
                   max_grad_norm=5.0)],
             dict(lr=0.003, weight_decay=0.01)),
    "Lion": ([dict(lr=1e-3), dict(lr=1e-4, weight_decay=0.1, betas=(0.8, 0.99)),
              dict(lr=2e-3, maximize=True), dict(betas=(0.5, 0.9), weight_decay=0.3)],
             dict(lr=3e-4, weight_decay=0.01)),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("optim", list(OPTIM_NAMES))
def test_param_groups_with_different_hyperparameters(optim, dtype, isa):
    """Several groups with different lr / weight_decay / momentum / amsgrad / betas, and a group
    mixing param dtypes (fp32 + fp64 + bf16 in one group)."""
    other = torch.float64 if dtype == torch.float32 else torch.float32
    group_shapes = [[(7,), (3, 5)], [(17,), ()], [(33,), (8,), (1,)], [(9,), (4, 4)]]
    group_dtypes = [[dtype, dtype], [dtype, dtype], [dtype, other, dtype], [dtype, dtype]]
    if optim == "SGD":
        hps = [
            dict(lr=0.1, momentum=0.9),
            dict(lr=0.01, momentum=0.0, weight_decay=0.1),
            dict(lr=0.05, momentum=0.5, nesterov=True, weight_decay=0.01),
            dict(lr=0.02, momentum=0.7, dampening=0.3, maximize=True),
        ]
        defaults = dict(lr=0.03)
    elif optim in GROUP_HPS:
        hps, defaults = GROUP_HPS[optim]
        if optim == "LAMB" and dtype == torch.float64:
            # The global grad norm spans the float32 param of group 2: fusedoptim sums float32
            # grads' squares in float32 lanes (~1e-7 relative, like Apex), the oracle in float64,
            # which shows in the fp64 params of clipped groups at ~2e-10 relative.  Clipping
            # across groups is tested in single-dtype runs (test_algorithms.py).
            hps = [{k: v for k, v in hp.items() if k != "max_grad_norm"} for hp in hps]
    else:
        hps = [
            dict(lr=0.01, amsgrad=True),
            dict(lr=0.001, weight_decay=0.1, betas=(0.8, 0.99)),
            dict(lr=0.02, amsgrad=False, eps=1e-4, maximize=True),
            dict(lr=0.005, weight_decay=0.3, amsgrad=True),
        ]
        if optim == "Adam":
            hps[3]["decoupled_weight_decay"] = True
        defaults = dict(lr=0.003, weight_decay=0.01)

    def build(cls):
        groups, flat = [], []
        seed = 10
        for shapes, dts, hp in zip(group_shapes, group_dtypes, hps):
            ps = []
            for s, dt in zip(shapes, dts):
                seed += 1
                ps.append(as_params(make_param_values([s], dt, seed=seed))[0])
            flat += ps
            groups.append(dict(params=ps, **hp))
        return cls(groups, **defaults), flat

    o_t, p_t = build(torch_cls(optim))
    o_f, p_f = build(fused_cls(optim))
    for step in range(NUM_STEPS):
        grads = []
        for i, p in enumerate(p_t):
            g = torch.Generator().manual_seed(700 + 31 * step + i)
            grads.append(torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype))
        set_grads(p_t, grads)
        set_grads(p_f, grads)
        o_t.step()
        o_f.step()
    # mixed-dtype params are compared with the tolerance of their own dtype (bf16 not used here)
    assert_runs_match(o_f, o_t, p_f, p_t)
    assert_fused_path(o_f)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("config", REPRESENTATIVE_CONFIGS, ids=config_ids(REPRESENTATIVE_CONFIGS))
def test_params_without_grad_are_skipped(config, dtype, isa):
    """p0 always has a grad, p1 only on even steps, p2 gets its first grad at step 5, p3 never.

    Skipped exactly as torch: no state created, step count not advanced, param untouched.
    Compared after *every* step, including state presence and per-param step counts.
    """
    shapes = [(9,), (17,), (3, 5), (7,)]
    values = make_param_values(shapes, dtype, seed=4)
    grads = make_grad_values(shapes, dtype, num_steps=12, seed=400)
    for step, gs in enumerate(grads):
        if step % 2 == 1:
            gs[1] = None
        if step < 5:
            gs[2] = None
        gs[3] = None
    p_t, p_f = as_params(values), as_params(values)
    o_t = torch_cls(config.optim)(p_t, **config.reference_kwargs(dtype))
    o_f = fused_cls(config.optim)(p_f, **config.fused_kwargs(dtype))
    for step, gs in enumerate(grads):
        set_grads(p_t, gs)
        set_grads(p_f, gs)
        before_f = [p.detach().clone() for p in p_f]
        o_t.step()
        o_f.step()
        assert_params_match(p_f, p_t)
        assert_states_match(o_f, o_t, p_f, p_t)
        for i, g in enumerate(gs):
            if g is None:
                assert torch.equal(p_f[i].detach(), before_f[i]), (step, i)
        n_with_grad = sum(g is not None for g in gs)
        paths = o_f.last_step_paths
        assert paths["fused"] + paths["reference"] == n_with_grad, (step, paths)
        assert paths["reference"] == 0, paths
    if config.optim == "Adagrad":  # state made at construction, never advanced
        assert float(o_f.state[p_f[3]]["step"]) == 0.0
    else:
        assert p_f[3] not in o_f.state or len(o_f.state[p_f[3]]) == 0
    assert_runs_match(o_f, o_t, p_f, p_t)


@pytest.mark.parametrize("config", REPRESENTATIVE_CONFIGS, ids=config_ids(REPRESENTATIVE_CONFIGS))
def test_zero_grad_set_to_none_false_then_step(config):
    """zero_grad(set_to_none=False) keeps zero grads, so the next step *does* update state
    (unlike None grads) - exactly as torch."""
    dtype = torch.float64
    shapes = [(7,), (16,)]
    values = make_param_values(shapes, dtype, seed=5)
    grads = make_grad_values(shapes, dtype, seed=500)
    p_t, p_f = as_params(values), as_params(values)
    o_t = torch_cls(config.optim)(p_t, **config.reference_kwargs(dtype))
    o_f = fused_cls(config.optim)(p_f, **config.fused_kwargs(dtype))
    for step, gs in enumerate(grads):
        if step % 3 == 2:
            o_t.zero_grad(set_to_none=False)
            o_f.zero_grad(set_to_none=False)
            for pt, pf in zip(p_t, p_f):
                assert pf.grad is not None and torch.equal(pf.grad, pt.grad)
        else:
            set_grads(p_t, gs)
            set_grads(p_f, gs)
        o_t.step()
        o_f.step()
    assert_runs_match(o_f, o_t, p_f, p_t, config)


def _layout_params(dtype):
    """Leaf params with non-trivial layouts and grads with different strides."""
    g = torch.Generator().manual_seed(6)
    base = [torch.randn(s, generator=g, dtype=torch.float64).to(dtype)
            for s in [(9, 5), (2, 3, 4, 5), (6, 10), (33,)]]
    vals = [
        base[0].t(),                                           # transposed (5, 9)
        base[1].contiguous(memory_format=torch.channels_last),  # channels_last
        base[2][:, ::2],                                       # strided slice (6, 5)
        base[3],                                               # contiguous
    ]
    return vals


def _layout_grads(params, step, dtype):
    out = []
    for i, p in enumerate(params):
        g = torch.Generator().manual_seed(900 + 10 * step + i)
        full = torch.randn(p.shape, generator=g, dtype=torch.float64).to(dtype)
        if i == 0:
            full = full.contiguous()  # param is transposed, grad is row-major
        elif i == 1:
            full = full.contiguous()  # param is channels_last, grad is contiguous
        elif i == 2:  # both strided, with different strides: (15, 3) vs the param's (10, 2)
            full = torch.randn((6, 15), generator=g, dtype=torch.float64).to(dtype)[:, ::3]
        elif i == 3:
            full = torch.randn((66,), generator=g, dtype=torch.float64).to(dtype)[::2]
        out.append(full)
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("config", REPRESENTATIVE_CONFIGS, ids=config_ids(REPRESENTATIVE_CONFIGS))
def test_non_contiguous_params_and_grads(config, dtype, isa):
    """Transposed / channels_last / strided params, grads whose strides differ from the
    param's: results must equal torch's whichever path handles them."""
    # _layout_params builds fresh (seeded, identical) tensors on each call; detach -> leaves
    # that keep their strides.
    p_t = [v.detach().requires_grad_() for v in _layout_params(dtype)]
    p_f = [v.detach().requires_grad_() for v in _layout_params(dtype)]
    assert not p_t[0].is_contiguous() and not p_t[2].is_contiguous()
    assert p_t[1].is_contiguous(memory_format=torch.channels_last)
    for pt, pf in zip(p_t, p_f):
        assert pt.stride() == pf.stride() and pf.is_leaf and torch.equal(pt, pf)
    o_t = torch_cls(config.optim)(p_t, **config.reference_kwargs(dtype))
    o_f = fused_cls(config.optim)(p_f, **config.fused_kwargs(dtype))
    took_reference = False
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        for step in range(NUM_STEPS):
            # each call returns fresh grads with the same values and the same strides
            for p, g in zip(p_t, _layout_grads(p_t, step, dtype)):
                p.grad = g
            for p, g in zip(p_f, _layout_grads(p_f, step, dtype)):
                p.grad = g
            o_t.step()
            o_f.step()
            paths = o_f.last_step_paths
            assert paths["fused"] + paths["reference"] == len(p_f), paths
            took_reference |= paths["reference"] > 0
    assert_runs_match(o_f, o_t, p_f, p_t, config)
    # params that cannot take the fused kernels are announced once per optimizer
    ref_warnings = [w for w in rec if issubclass(w.category, fusedoptim.ReferencePathWarning)]
    assert len(ref_warnings) == (1 if took_reference else 0), [str(w.message) for w in rec]


@pytest.mark.parametrize("config", REPRESENTATIVE_CONFIGS, ids=config_ids(REPRESENTATIVE_CONFIGS))
def test_deepcopy_of_optimizer_keeps_working(config):
    """copy.deepcopy of a model+optimizer pair continues exactly like torch's deepcopy."""
    dtype = torch.float64
    shapes = [(7,), (3, 5)]
    values = make_param_values(shapes, dtype, seed=8)
    grads = make_grad_values(shapes, dtype, seed=800)
    p_t, p_f = as_params(values), as_params(values)
    o_t = torch_cls(config.optim)(p_t, **config.reference_kwargs(dtype))
    o_f = fused_cls(config.optim)(p_f, **config.fused_kwargs(dtype))
    run_steps(o_t, p_t, grads[:5])
    run_steps(o_f, p_f, grads[:5])
    o_t2, p_t2 = copy.deepcopy((o_t, p_t))
    o_f2, p_f2 = copy.deepcopy((o_f, p_f))
    run_steps(o_t2, p_t2, grads[5:])
    run_steps(o_f2, p_f2, grads[5:])
    assert_runs_match(o_f2, o_t2, p_f2, p_t2, config)
    assert_fused_path(o_f2)
    # the originals were not touched by the copies' steps
    assert_runs_match(o_f, o_t, p_f, p_t, config)


@pytest.mark.parametrize("optim,kwargs", [
    ("Adam", {}), ("Adam", {"fused": True}), ("AdamW", {"amsgrad": True}),
    ("Adam", {"capturable": True, "fused": True}),
    ("Adadelta", {}), ("Adagrad", {}), ("Adagrad", {"fused": True}), ("Adamax", {}),
    ("ASGD", {"t0": 1}), ("NAdam", {}), ("RAdam", {}), ("RMSprop", {"momentum": 0.5}),
    ("Rprop", {}), ("LAMB", {}),
])
def test_step_dtype_follows_torch_default_dtype(optim, kwargs):
    """torch keeps 'step' (and ASGD's eta/mu, NAdam's mu_product) in float64 when the default
    dtype is float64 (float32 when fused or capturable); ours must do the same."""
    torch.set_default_dtype(torch.float64)
    values = make_param_values([(5,)], torch.float64, seed=9)
    grads = make_grad_values([(5,)], torch.float64, num_steps=3, seed=900)
    cfg = OptimConfig(optim, kwargs)
    t_opt, t_params = run_torch(cfg, values, grads)
    f_opt, f_params = run_fused(cfg, values, grads)
    st, sf = t_opt.state[t_params[0]]["step"], f_opt.state[f_params[0]]["step"]
    assert sf.dtype == st.dtype and sf.device == st.device and float(sf) == float(st)
    for key, vt in t_opt.state[t_params[0]].items():
        vf = f_opt.state[f_params[0]][key]
        if vt.dim() == 0:
            assert vf.dtype == vt.dtype, (key, vf.dtype, vt.dtype)
            assert vt.dtype == (torch.float32 if kwargs.get("fused") else torch.float64)
    assert_runs_match(f_opt, t_opt, f_params, t_params, cfg)
