"""state_dict format, round trips between torch.optim and fusedoptim (direct and through
torch.save/torch.load), no aliasing on load, and the state_dict hooks."""

import copy
import io

import pytest
import torch

from helpers import (
    NUM_STEPS,
    SCALAR_STATE_KEYS,
    as_params,
    assert_fused_path,
    assert_param_groups_match,
    assert_runs_match,
    assert_state_dicts_match,
    capture_exception,
    fused_cls,
    interface_kwargs,
    make_grad_values,
    make_param_values,
    run_steps,
    set_grads,
    torch_cls,
)
from optim_configs import OPTIM_NAMES, REPRESENTATIVE_CONFIGS, OptimConfig, TensorHP, config_ids

SHAPES = [(7,), (3, 5), (), (17,)]

ROUND_TRIP_CONFIGS = REPRESENTATIVE_CONFIGS + [
    OptimConfig("SGD", dict(lr=TensorHP(0.05), momentum=0.9, nesterov=True)),
    OptimConfig("Adam", dict(lr=TensorHP(0.01), amsgrad=True, weight_decay=0.1)),
    OptimConfig("Adam", dict(lr=0.01, betas=(TensorHP(0.8), TensorHP(0.95)))),
    OptimConfig("AdamW", dict(lr=0.01, fused=True)),
    OptimConfig("SGD", dict(lr=0.05, momentum=0.9, fused=True)),
    OptimConfig("Adagrad", dict(lr=TensorHP(0.1), lr_decay=0.05, fused=True)),
    OptimConfig("ASGD", dict(lr=TensorHP(0.05), t0=2)),
    OptimConfig("NAdam", dict(lr=TensorHP(0.01), momentum_decay=0.1)),
    OptimConfig("RMSprop", dict(lr=TensorHP(0.01), momentum=0.5)),
    OptimConfig("Rprop", dict(lr=TensorHP(0.05), step_sizes=(0.02, 0.06))),
    OptimConfig("LAMB", dict(lr=TensorHP(0.01), max_grad_norm=1.0, always_adapt=True)),
    OptimConfig("Lion", dict(lr=TensorHP(1e-3), weight_decay=0.1, maximize=True)),
]


def expected_state_keys(config):
    """torch.optim's per-param state keys, in torch's order (written out, not read from torch)."""
    kw = config.kwargs
    return {
        "SGD": ["momentum_buffer"] if kw.get("momentum", 0) != 0 else [],
        "Adam": ["step", "exp_avg", "exp_avg_sq"] + (["max_exp_avg_sq"] if kw.get("amsgrad") else []),
        "AdamW": ["step", "exp_avg", "exp_avg_sq"] + (["max_exp_avg_sq"] if kw.get("amsgrad") else []),
        "Adadelta": ["step", "square_avg", "acc_delta"],
        "Adagrad": ["step", "sum"],
        "Adamax": ["step", "exp_avg", "exp_inf"],
        "ASGD": ["step", "eta", "mu", "ax"],
        "NAdam": ["step", "mu_product", "exp_avg", "exp_avg_sq"],
        "RAdam": ["step", "exp_avg", "exp_avg_sq"],
        "RMSprop": ["step", "square_avg"] + (["momentum_buffer"] if kw.get("momentum", 0) > 0 else [])
        + (["grad_avg"] if kw.get("centered") else []),
        "Rprop": ["step", "prev", "step_size"],
        "LAMB": ["step", "exp_avg", "exp_avg_sq"],
        "Lion": ["exp_avg"],
    }[config.optim]


def _setup(config, dtype=torch.float64, seed=20):
    values = make_param_values(SHAPES, dtype, seed=seed)
    grads = make_grad_values(SHAPES, dtype, seed=seed * 100)
    return values, grads


def _build(cls_getter, config, values, which, dtype=torch.float64):
    params = as_params(values)
    kw = config.fused_kwargs(dtype) if which == "fused" else config.reference_kwargs(dtype)
    return cls_getter(config.optim)(params, **kw), params


@pytest.mark.parametrize("config", ROUND_TRIP_CONFIGS, ids=config_ids(ROUND_TRIP_CONFIGS))
def test_state_dict_structure_matches_torch(config):
    values, grads = _setup(config)
    o_t, p_t = _build(torch_cls, config, values, "torch")
    o_f, p_f = _build(fused_cls, config, values, "fused")
    # before any step: no state at all (Adagrad: every param's, made at construction), same
    # param_groups
    sd_t0, sd_f0 = o_t.state_dict(), o_f.state_dict()
    if config.optim == "Adagrad":
        assert sorted(sd_f0["state"]) == list(range(len(SHAPES)))
        assert_state_dicts_match(sd_f0, sd_t0, config)
    else:
        assert sd_f0["state"] == {} and sd_t0["state"] == {}
    assert_param_groups_match(sd_f0["param_groups"], sd_t0["param_groups"], config, ignore=())
    run_steps(o_t, p_t, grads[:3])
    run_steps(o_f, p_f, grads[:3])
    sd_t, sd_f = o_t.state_dict(), o_f.state_dict()
    assert_state_dicts_match(sd_f, sd_t, config)
    # explicit format, independent of torch: state per index with torch's keys
    keys = expected_state_keys(config)
    if keys:
        assert sorted(sd_f["state"].keys()) == list(range(len(SHAPES)))
    else:
        assert sd_f["state"] == {}  # SGD without momentum keeps no state, like torch
    for idx, st in sd_f["state"].items():
        assert list(st.keys()) == keys
        if "step" in st:
            step = st["step"]
            assert isinstance(step, torch.Tensor) and step.dim() == 0
            assert step.dtype == torch.float32 and step.device.type == "cpu"
            assert float(step) == 3.0
        for k, v in st.items():
            if k in SCALAR_STATE_KEYS:  # ASGD's eta / mu, NAdam's mu_product
                assert v.dim() == 0 and v.dtype == torch.float32 and v.device.type == "cpu"
            else:
                assert v.shape == SHAPES[idx] and v.dtype == torch.float64
    assert [g["params"] for g in sd_f["param_groups"]] == [list(range(len(SHAPES)))]


@pytest.mark.parametrize("via_bytes", [False, True], ids=["direct", "torch.save"])
@pytest.mark.parametrize("direction", ["torch_to_fused", "fused_to_torch"])
@pytest.mark.parametrize("config", ROUND_TRIP_CONFIGS, ids=config_ids(ROUND_TRIP_CONFIGS))
def test_round_trip_mid_run(config, direction, via_bytes):
    """Run the source optimizer 5 steps, load its state_dict into the other implementation,
    continue 5 steps; compare with torch.optim doing the same round trip with itself (torch ->
    torch).  For most algorithms that equals an uninterrupted run; not where torch's
    load_state_dict casts 0-dim states to the param's dtype (NAdam's mu_product, ASGD's eta and
    mu become float64 here and are then computed in float64)."""
    dtype = torch.float64
    values, grads = _setup(config)
    # uninterrupted torch run
    o_ref, p_ref = _build(torch_cls, config, values, "torch")
    run_steps(o_ref, p_ref, grads)
    # torch -> torch round trip at step 5
    o_tt, p_tt = _build(torch_cls, config, values, "torch")
    run_steps(o_tt, p_tt, grads[:5])
    sd_tt = o_tt.state_dict()
    o_tt, p_tt = _build(torch_cls, config, [p.detach() for p in p_tt], "torch")
    o_tt.load_state_dict(copy.deepcopy(sd_tt))
    run_steps(o_tt, p_tt, grads[5:])

    src_get, dst_get = (torch_cls, fused_cls) if direction == "torch_to_fused" \
        else (fused_cls, torch_cls)
    src_which, dst_which = ("torch", "fused") if direction == "torch_to_fused" \
        else ("fused", "torch")
    o_src, p_src = _build(src_get, config, values, src_which)
    run_steps(o_src, p_src, grads[:5])
    sd = o_src.state_dict()
    if via_bytes:
        buf = io.BytesIO()
        torch.save(sd, buf)
        buf.seek(0)
        sd = torch.load(buf)  # default weights_only=True must be able to load it
    # destination optimizer built on the (already updated) params, fresh hyperparameters
    o_dst, p_dst = _build(dst_get, config, [p.detach() for p in p_src], dst_which)
    if direction == "fused_to_torch" and not via_bytes:
        # torch's load_state_dict aliases same-dtype tensors of the dict it is given; copy so
        # that the torch destination does not write into our source optimizer's live state
        sd = copy.deepcopy(sd)
    o_dst.load_state_dict(sd)
    run_steps(o_dst, p_dst, grads[5:])

    if direction == "torch_to_fused":
        assert_runs_match(o_dst, o_tt, p_dst, p_tt, config)
        if config.expects_fused_path:
            assert_fused_path(o_dst)
    else:
        # o_dst is torch here; compare ours-then-torch with pure torch
        for pd, pr in zip(p_dst, p_tt):
            torch.testing.assert_close(pd.detach(), pr.detach(), rtol=1e-10, atol=1e-12)
        assert_state_dicts_match(o_dst.state_dict(), o_tt.state_dict())
    # the source continues too and stays in lockstep with the uninterrupted run
    run_steps(o_src, p_src, grads[5:])
    for ps, pr in zip(p_src, p_ref):
        torch.testing.assert_close(ps.detach(), pr.detach(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("config", ROUND_TRIP_CONFIGS, ids=config_ids(ROUND_TRIP_CONFIGS))
def test_weights_only_load_of_fused_state_dict(config):
    """torch.load(weights_only=True) accepts our state_dict (only tensors/containers/scalars)."""
    values, grads = _setup(config)
    o_f, p_f = _build(fused_cls, config, values, "fused")
    run_steps(o_f, p_f, grads[:4])
    buf = io.BytesIO()
    torch.save(o_f.state_dict(), buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)
    o_t, p_t = _build(torch_cls, config, values, "torch")
    run_steps(o_t, p_t, grads[:4])
    assert_state_dicts_match(loaded, o_t.state_dict(), config)


@pytest.mark.parametrize("config", ROUND_TRIP_CONFIGS, ids=config_ids(ROUND_TRIP_CONFIGS))
def test_load_does_not_alias_source_tensors(config):
    """Mutating the loaded-from dict's tensors (state and Tensor hyperparameters) after load
    must not change the optimizer."""
    values, grads = _setup(config)
    o_src, p_src = _build(torch_cls, config, values, "torch")
    run_steps(o_src, p_src, grads[:5])
    sd = o_src.state_dict()
    sd_ref = copy.deepcopy(sd)  # before the mutations below (torch's dict holds live state)
    o_f, p_f = _build(fused_cls, config, [p.detach() for p in p_src], "fused")
    o_f.load_state_dict(sd)
    snapshot = {
        i: {k: v.clone() for k, v in o_f.state[p].items()} for i, p in enumerate(p_f)
        if p in o_f.state
    }
    groups_snapshot = [
        {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in g.items()
         if k != "params"}
        for g in o_f.param_groups
    ]
    # mutate everything tensor-valued in the source dict (and the source optimizer)
    for st in sd["state"].values():
        for v in st.values():
            if isinstance(v, torch.Tensor):
                v.add_(12.5)
    for g in sd["param_groups"]:
        for k, v in g.items():
            if isinstance(v, torch.Tensor):
                v.fill_(123.0)
            elif isinstance(v, tuple):
                for x in v:
                    if isinstance(x, torch.Tensor):
                        x.fill_(0.5)
    for i, p in enumerate(p_f):
        if i in snapshot:
            for k, v in snapshot[i].items():
                assert torch.equal(o_f.state[p][k], v), (i, k)
    for g, snap in zip(o_f.param_groups, groups_snapshot):
        for k, v in snap.items():
            if isinstance(v, torch.Tensor):
                assert torch.equal(g[k], v), k
            elif isinstance(v, tuple):
                for a, b in zip(g[k], v):
                    if isinstance(b, torch.Tensor):
                        assert torch.equal(a, b), k
    # and it continues exactly like torch loading the same state_dict
    o_ref, p_ref = _build(torch_cls, config, [p.detach() for p in p_src], "torch")
    o_ref.load_state_dict(sd_ref)
    run_steps(o_ref, p_ref, grads[5:])
    run_steps(o_f, p_f, grads[5:])
    assert_runs_match(o_f, o_ref, p_f, p_ref, config)


@pytest.mark.parametrize("optim", OPTIM_NAMES)
def test_named_parameters_param_names_in_state_dict(optim):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    kw = interface_kwargs(optim)
    m_t, m_f = model, copy.deepcopy(model)
    o_t = torch_cls(optim)(m_t.named_parameters(), **kw)
    o_f = fused_cls(optim)(m_f.named_parameters(), **kw)
    x = torch.randn(5, 3)
    for _ in range(3):
        for m, o in ((m_t, o_t), (m_f, o_f)):
            o.zero_grad()
            m(x).pow(2).sum().backward()
            o.step()
    sd_t, sd_f = o_t.state_dict(), o_f.state_dict()
    assert sd_f["param_groups"][0]["param_names"] == sd_t["param_groups"][0]["param_names"] == [
        n for n, _ in m_t.named_parameters()
    ]
    assert_state_dicts_match(sd_f, sd_t)
    # a named state_dict loads into an optimizer built from unnamed params (names carried over)
    o_plain = fused_cls(optim)(list(m_f.parameters()), **kw)
    o_plain_t = torch_cls(optim)(list(m_t.parameters()), **kw)
    o_plain.load_state_dict(sd_f)
    o_plain_t.load_state_dict(sd_t)
    assert_param_groups_match(o_plain.param_groups, o_plain_t.param_groups)


@pytest.mark.parametrize("optim", OPTIM_NAMES)
def test_load_state_dict_validation_like_torch(optim):
    values, grads = _setup(None)
    kw = dict(lr=0.01)

    def make(cls, groups):
        ps = as_params(values)
        return cls([{"params": ps[: groups[0]]}, {"params": ps[groups[0]:]}], **kw)

    src = torch_cls(optim)(as_params(values), **kw)
    sd = src.state_dict()
    # different number of groups
    exp = capture_exception(lambda: make(torch_cls(optim), (2,)).load_state_dict(sd))
    with pytest.raises(type(exp)) as info:
        make(fused_cls(optim), (2,)).load_state_dict(sd)
    assert str(info.value) == str(exp)
    # group of a different size
    sd2 = make(torch_cls(optim), (1,)).state_dict()
    exp = capture_exception(lambda: make(torch_cls(optim), (2,)).load_state_dict(sd2))
    with pytest.raises(type(exp)) as info:
        make(fused_cls(optim), (2,)).load_state_dict(sd2)
    assert str(info.value) == str(exp)


def _hook_log_run(cls, config, values, grads):
    log = []
    opt, params = _build(lambda n: cls, config, values,
                         "fused" if cls.__module__.startswith("fusedoptim") else "torch")

    def sd_pre(o):
        assert o is opt
        log.append(("sd_pre",))

    def sd_pre_first(o):
        log.append(("sd_pre_first",))

    def sd_post(o, sd):
        assert o is opt
        log.append(("sd_post", sorted(sd["state"].keys())))
        sd["extra"] = "added-by-hook"
        return sd

    def sd_post_none(o, sd):
        log.append(("sd_post_none", "extra" in sd))
        return None

    def load_pre(o, sd):
        log.append(("load_pre", sorted(sd.keys())))
        sd = dict(sd)
        sd.pop("extra", None)
        return sd

    def load_post(o):
        log.append(("load_post", len(o.state)))

    handles = [
        opt.register_state_dict_pre_hook(sd_pre),
        opt.register_state_dict_pre_hook(sd_pre_first, prepend=True),
        opt.register_state_dict_post_hook(sd_post),
        opt.register_state_dict_post_hook(sd_post_none),
        opt.register_load_state_dict_pre_hook(load_pre),
        opt.register_load_state_dict_post_hook(load_post),
    ]
    run_steps(opt, params, grads[:3])
    sd = opt.state_dict()
    assert sd["extra"] == "added-by-hook"
    opt.load_state_dict(sd)
    run_steps(opt, params, grads[3:])
    for h in handles:
        h.remove()
    sd2 = opt.state_dict()
    assert "extra" not in sd2
    return log, opt, params


@pytest.mark.parametrize("config", REPRESENTATIVE_CONFIGS[::2], ids=config_ids(REPRESENTATIVE_CONFIGS[::2]))
def test_state_dict_hooks_called_like_torch(config):
    values, grads = _setup(config)
    log_t, o_t, p_t = _hook_log_run(torch_cls(config.optim), config, values, grads)
    log_f, o_f, p_f = _hook_log_run(fused_cls(config.optim), config, values, grads)
    assert log_f == log_t
    assert len(log_f) == 6
    assert_runs_match(o_f, o_t, p_f, p_t, config)
    assert len(grads) == NUM_STEPS


@pytest.mark.parametrize("optim", OPTIM_NAMES)
def test_round_trip_low_precision_keeps_torchs_state_dtypes(optim):
    """bf16 params: a torch state_dict loaded mid-run gives every state entry torch's dtype
    after load_state_dict (torch casts non-'step' tensors to the param's dtype, 0-dim ones
    included) and keeps it through the following steps, like torch."""
    dtype = torch.bfloat16
    values = make_param_values(SHAPES, dtype, seed=22)
    grads = make_grad_values(SHAPES, dtype, num_steps=6, seed=2200)
    kw = interface_kwargs(optim)
    src = as_params(values)
    o_src = torch_cls(optim)(src, **kw)
    run_steps(o_src, src, grads[:3])
    sd = o_src.state_dict()
    p_t, p_f = as_params([p.detach() for p in src]), as_params([p.detach() for p in src])
    o_t, o_f = torch_cls(optim)(p_t, **kw), fused_cls(optim)(p_f, **kw)
    o_t.load_state_dict(copy.deepcopy(sd))
    o_f.load_state_dict(sd)
    for step in range(4):
        for pt, pf in zip(p_t, p_f):
            st_t, st_f = o_t.state[pt], o_f.state[pf]
            assert list(st_f) == list(st_t)
            for k in st_t:
                assert st_f[k].dtype == st_t[k].dtype, (step, k, st_f[k].dtype, st_t[k].dtype)
                assert st_f[k].shape == st_t[k].shape
                if k in SCALAR_STATE_KEYS:  # NAdam's mu_product, ASGD's eta and mu: computed in that dtype
                    assert torch.equal(st_f[k], st_t[k]), (step, k, st_f[k], st_t[k])
        if step < 3:
            for o, ps in ((o_t, p_t), (o_f, p_f)):
                set_grads(ps, grads[3 + step])
                o.step()
    for pt, pf in zip(p_t, p_f):
        assert float(o_f.state[pf].get("step", 0)) == float(o_t.state[pt].get("step", 0))
        torch.testing.assert_close(pf.detach().float(), pt.detach().float(), rtol=0.05, atol=0.05)
