"""state_dict format, round trips between torch.optim and fusedoptim (direct and through
torch.save/torch.load), no aliasing on load, and the state_dict hooks."""

import copy
import io

import pytest
import torch

from helpers import (
    NUM_STEPS,
    as_params,
    assert_fused_path,
    assert_param_groups_match,
    assert_runs_match,
    assert_state_dicts_match,
    capture_exception,
    fused_cls,
    make_grad_values,
    make_param_values,
    run_steps,
    torch_cls,
)
from optim_configs import REPRESENTATIVE_CONFIGS, OptimConfig, TensorHP, config_ids

SHAPES = [(7,), (3, 5), (), (17,)]

ROUND_TRIP_CONFIGS = REPRESENTATIVE_CONFIGS + [
    OptimConfig("SGD", dict(lr=TensorHP(0.05), momentum=0.9, nesterov=True)),
    OptimConfig("Adam", dict(lr=TensorHP(0.01), amsgrad=True, weight_decay=0.1)),
    OptimConfig("Adam", dict(lr=0.01, betas=(TensorHP(0.8), TensorHP(0.95)))),
    OptimConfig("AdamW", dict(lr=0.01, fused=True)),
    OptimConfig("SGD", dict(lr=0.05, momentum=0.9, fused=True)),
]

EXPECTED_STATE_KEYS = {
    ("SGD", False): set(),
    ("SGD", True): {"momentum_buffer"},
    ("Adam", False): {"step", "exp_avg", "exp_avg_sq"},
    ("Adam", True): {"step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"},
}


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
    # before any step: no state at all, same param_groups
    sd_t0, sd_f0 = o_t.state_dict(), o_f.state_dict()
    assert sd_f0["state"] == {} and sd_t0["state"] == {}
    assert_param_groups_match(sd_f0["param_groups"], sd_t0["param_groups"], config, ignore=())
    run_steps(o_t, p_t, grads[:3])
    run_steps(o_f, p_f, grads[:3])
    sd_t, sd_f = o_t.state_dict(), o_f.state_dict()
    assert_state_dicts_match(sd_f, sd_t, config)
    # explicit format, independent of torch: state per index with torch's keys
    family = "SGD" if config.optim == "SGD" else "Adam"
    flag = (config.kwargs.get("momentum", 0) != 0) if family == "SGD" \
        else bool(config.kwargs.get("amsgrad", False))
    keys = EXPECTED_STATE_KEYS[(family, flag)]
    if keys:
        assert sorted(sd_f["state"].keys()) == list(range(len(SHAPES)))
    else:
        assert sd_f["state"] == {}  # SGD without momentum keeps no state, like torch
    for idx, st in sd_f["state"].items():
        assert set(st.keys()) == keys
        if "step" in st:
            step = st["step"]
            assert isinstance(step, torch.Tensor) and step.dim() == 0
            assert step.dtype == torch.float32 and step.device.type == "cpu"
            assert float(step) == 3.0
        for k, v in st.items():
            if k != "step":
                assert v.shape == SHAPES[idx] and v.dtype == torch.float64
    assert [g["params"] for g in sd_f["param_groups"]] == [list(range(len(SHAPES)))]


@pytest.mark.parametrize("via_bytes", [False, True], ids=["direct", "torch.save"])
@pytest.mark.parametrize("direction", ["torch_to_fused", "fused_to_torch"])
@pytest.mark.parametrize("config", ROUND_TRIP_CONFIGS, ids=config_ids(ROUND_TRIP_CONFIGS))
def test_round_trip_mid_run(config, direction, via_bytes):
    """Run the source optimizer 5 steps, load its state_dict into the other implementation,
    continue 5 steps; compare with an uninterrupted torch.optim run of 10 steps."""
    dtype = torch.float64
    values, grads = _setup(config)
    # uninterrupted torch run
    o_ref, p_ref = _build(torch_cls, config, values, "torch")
    run_steps(o_ref, p_ref, grads)

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
        assert_runs_match(o_dst, o_ref, p_dst, p_ref, config)
        if config.expects_fused_path:
            assert_fused_path(o_dst)
    else:
        # o_dst is torch here; compare ours-then-torch with pure torch
        for pd, pr in zip(p_dst, p_ref):
            torch.testing.assert_close(pd.detach(), pr.detach(), rtol=1e-10, atol=1e-12)
        assert_state_dicts_match(o_dst.state_dict(), o_ref.state_dict())
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
    # and it continues exactly like the uninterrupted torch run
    o_ref, p_ref = _build(torch_cls, config, values, "torch")
    run_steps(o_ref, p_ref, grads)
    run_steps(o_f, p_f, grads[5:])
    assert_runs_match(o_f, o_ref, p_f, p_ref, config)


@pytest.mark.parametrize("optim", ["SGD", "Adam", "AdamW"])
def test_named_parameters_param_names_in_state_dict(optim):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    kw = dict(lr=0.01, momentum=0.9) if optim == "SGD" else dict(lr=0.01)
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


@pytest.mark.parametrize("optim", ["SGD", "Adam", "AdamW"])
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
