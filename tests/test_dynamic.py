"""Things users change between steps - state entries, param storage, group options that change
which state exists, duplicated params, empty groups - give torch.optim's results."""

import collections
import copy

import pytest
import torch

import fusedoptim

from helpers import (
    NUM_STEPS,
    as_params,
    assert_fused_path,
    assert_runs_match,
    fused_cls,
    make_grad_values,
    make_param_values,
    outcome,
    set_grads,
    torch_cls,
)
from optim_configs import OPTIM_NAMES, REPRESENTATIVE_CONFIGS, config_ids

SHAPES = [(7,), (17,), (3, 5)]


def _pair(config, dtype=torch.float64, seed=60, shapes=SHAPES):
    values = make_param_values(shapes, dtype, seed=seed)
    grads = make_grad_values(shapes, dtype, seed=seed * 100)
    p_t, p_f = as_params(values), as_params(values)
    o_t = torch_cls(config.optim)(p_t, **config.reference_kwargs(dtype))
    o_f = fused_cls(config.optim)(p_f, **config.fused_kwargs(dtype))
    return (o_t, p_t), (o_f, p_f), grads


def _lockstep(pairs, grads, before_step=None):
    """Run torch and ours side by side; before_step(step, opt, params) mutates both alike."""
    for step, gs in enumerate(grads):
        for o, ps in pairs:
            if before_step is not None:
                before_step(step, o, ps)
            set_grads(ps, gs)
            o.step()


@pytest.mark.parametrize("config", REPRESENTATIVE_CONFIGS, ids=config_ids(REPRESENTATIVE_CONFIGS))
def test_user_modified_state_is_respected(config):
    """In-place edits of opt.state[p] tensors, replacing entries, deleting a param's state,
    replacing the whole state mapping: all take effect like with torch."""

    def mutate(step, o, ps):
        if step == 3:
            for p in ps:
                for key, v in o.state.get(p, {}).items():
                    if key == "step":
                        v.fill_(1.0)
                    else:
                        v.mul_(0.5)
        if step == 5:
            for p in ps:
                st = o.state.get(p, {})
                for key in list(st.keys()):
                    if key != "step":
                        st[key] = st[key] * 2 + 0.25
        if step == 6:
            o.state.pop(ps[1], None)  # this param restarts from scratch
        if step == 7 and ps[2] in o.state:
            del o.state[ps[2]]
        if step == 8:
            o.state = collections.defaultdict(dict, {k: dict(v) for k, v in o.state.items()})

    (o_t, p_t), (o_f, p_f), grads = _pair(config)
    _lockstep([(o_t, p_t), (o_f, p_f)], grads, mutate)
    assert_runs_match(o_f, o_t, p_f, p_t, config)
    assert_fused_path(o_f)


@pytest.mark.parametrize("config", REPRESENTATIVE_CONFIGS, ids=config_ids(REPRESENTATIVE_CONFIGS))
def test_state_reset_by_new_mapping(config):
    """opt.state = defaultdict(dict) (a common 'reset the optimizer' idiom) restarts state."""

    def mutate(step, o, ps):
        if step == 4:
            o.state = collections.defaultdict(dict)

    (o_t, p_t), (o_f, p_f), grads = _pair(config, seed=61)
    _lockstep([(o_t, p_t), (o_f, p_f)], grads, mutate)
    assert_runs_match(o_f, o_t, p_f, p_t, config)


@pytest.mark.parametrize("config", REPRESENTATIVE_CONFIGS, ids=config_ids(REPRESENTATIVE_CONFIGS))
def test_param_storage_replaced_between_steps(config):
    """p.data = new tensor / p.set_(new storage) between steps: the next step updates the new
    storage (no stale pointers), like torch."""

    def mutate(step, o, ps):
        if step == 3:
            ps[0].data = ps[0].data.clone() + 0.125
        if step == 5:
            with torch.no_grad():
                ps[1].set_(ps[1].detach().clone() * 0.5)
        if step == 7:
            with torch.no_grad():
                ps[2].copy_(ps[2] - 0.25)

    (o_t, p_t), (o_f, p_f), grads = _pair(config, seed=62)
    _lockstep([(o_t, p_t), (o_f, p_f)], grads, mutate)
    assert_runs_match(o_f, o_t, p_f, p_t, config)
    assert_fused_path(o_f)


@pytest.mark.parametrize("config", REPRESENTATIVE_CONFIGS, ids=config_ids(REPRESENTATIVE_CONFIGS))
def test_grads_are_not_modified_by_step(config):
    """torch.optim never writes into .grad (maximize / weight decay make new tensors)."""
    (o_t, p_t), (o_f, p_f), grads = _pair(config, seed=63)
    for gs in grads:
        set_grads(p_t, gs)
        set_grads(p_f, gs)
        o_t.step()
        o_f.step()
        for p, g in zip(p_f, gs):
            assert torch.equal(p.grad, g)
    assert_runs_match(o_f, o_t, p_f, p_t, config)


@pytest.mark.parametrize("config", REPRESENTATIVE_CONFIGS, ids=config_ids(REPRESENTATIVE_CONFIGS))
def test_held_state_tensors_stay_live(config):
    """A reference to opt.state[p][key] taken early keeps reflecting the optimizer's state, as
    with torch, across events that make fusedoptim rebuild its buffers (a param's first grad,
    add_param_group, a state entry replaced by the user)."""
    dtype = torch.float64
    shapes = SHAPES + [(9,)]
    values = make_param_values(shapes, dtype, seed=64)
    grads = make_grad_values(shapes, dtype, seed=6400)
    extra_values = make_param_values([(5,)], dtype, seed=65)
    extra_grads = make_grad_values([(5,)], dtype, seed=6500)

    def run(cls_get, which):
        ps = as_params(values)
        extra = as_params(extra_values)
        kw = config.fused_kwargs(dtype) if which == "fused" else config.reference_kwargs(dtype)
        o = cls_get(config.optim)(ps, **kw)
        held = {}
        for step, gs in enumerate(grads):
            gs = list(gs)
            if step < 5:
                gs[3] = None  # param 3 gets its first grad at step 5
            if step == 7:
                o.add_param_group({"params": extra, "lr": 0.03})
            if step >= 7:
                set_grads(extra, extra_grads[step])
            set_grads(ps, gs)
            o.step()
            if step == 1:
                held = {(i, k): v for i, p in enumerate(ps) for k, v in o.state.get(p, {}).items()}
        return o, ps, held

    o_t, p_t, held_t = run(torch_cls, "torch")
    o_f, p_f, held_f = run(fused_cls, "fused")
    assert held_f.keys() == held_t.keys()
    for (i, k), v_t in held_t.items():
        assert v_t is o_t.state[p_t[i]][k]  # torch: the very same tensor all along
        torch.testing.assert_close(held_f[(i, k)], o_f.state[p_f[i]][k], rtol=0, atol=0,
                                   msg=lambda m: f"held state[{k!r}] of param {i} is stale\n{m}")
    assert_runs_match(o_f, o_t, p_f, p_t, config)


SGD_SWITCHES = [
    ("momentum_0_to_09", {3: dict(momentum=0.9)}),
    ("momentum_09_to_0_to_09", {0: dict(momentum=0.9), 3: dict(momentum=0.0),
                                6: dict(momentum=0.9)}),
    ("nesterov_on_off", {0: dict(momentum=0.9), 3: dict(nesterov=True), 6: dict(nesterov=False)}),
]
ADAM_SWITCHES = [
    ("amsgrad_on_to_off_to_on", {0: dict(amsgrad=True), 3: dict(amsgrad=False),
                                 6: dict(amsgrad=True)}),
    # (amsgrad switched on after state exists has no torch behaviour to compare with: torch
    # itself fails with KeyError('max_exp_avg_sq'); on->off->on reuses the kept buffer.)
    ("decoupled_toggle", {0: dict(weight_decay=0.1), 3: dict(decoupled_weight_decay=True),
                          6: dict(decoupled_weight_decay=False)}),
    ("fused_flag_toggle", {3: dict(fused=True), 6: dict(fused=None)}),
]
# RMSprop's momentum_buffer / grad_avg exist only if momentum > 0 / centered when a param's
# state is made: switched on later, torch's step fails with KeyError('momentum_buffer') /
# KeyError('grad_avg') (and so must ours, before changing anything); switched off, the stale
# buffer is kept (and reused, unchanged, when switched on again).
RMSPROP_SWITCHES = [
    ("momentum_0_to_09", {3: dict(momentum=0.9)}),
    ("momentum_09_to_0_to_09", {0: dict(momentum=0.9), 3: dict(momentum=0.0),
                                6: dict(momentum=0.9)}),
    ("centered_off_to_on", {4: dict(centered=True)}),
    ("centered_on_off_on", {0: dict(centered=True), 3: dict(centered=False),
                            6: dict(centered=True)}),
    ("momentum_value_change", {0: dict(momentum=0.9), 4: dict(momentum=0.3)}),
]
OTHER_SWITCHES = [
    ("NAdam", "decoupled_toggle", {0: dict(weight_decay=0.1), 3: dict(decoupled_weight_decay=True),
                                   6: dict(decoupled_weight_decay=False)}),
    ("RAdam", "decoupled_toggle", {0: dict(weight_decay=0.1), 3: dict(decoupled_weight_decay=True),
                                   6: dict(decoupled_weight_decay=False)}),
    ("Adagrad", "fused_flag_toggle", {3: dict(fused=True), 6: dict(fused=None)}),
    ("Adagrad", "initial_accumulator_value_change", {3: dict(initial_accumulator_value=2.0)}),
    ("ASGD", "t0_lowered_mid_run", {5: dict(t0=2)}),
    ("Rprop", "etas_and_step_sizes", {2: dict(etas=(0.2, 2.0)), 5: dict(step_sizes=(0.01, 0.02))}),
    ("LAMB", "decoupled_and_adapt_toggle",
     {0: dict(weight_decay=0.0), 3: dict(always_adapt=True), 5: dict(weight_decay=0.1),
      6: dict(decoupled_weight_decay=False), 8: dict(max_grad_norm=0.5)}),
    ("Lion", "weight_decay_on", {4: dict(weight_decay=0.5)}),
]
SWITCH_CASES = [("SGD", n, s) for n, s in SGD_SWITCHES] + [
    (o, n, s) for o in ("Adam", "AdamW") for n, s in ADAM_SWITCHES
] + [("RMSprop", n, s) for n, s in RMSPROP_SWITCHES] + OTHER_SWITCHES


@pytest.mark.parametrize("optim,name,switches", SWITCH_CASES,
                         ids=[f"{o}-{n}" for o, n, _ in SWITCH_CASES])
def test_group_options_changed_mid_training(optim, name, switches):
    """Options that decide which state exists, edited in param_groups between steps: same
    params and state as torch (stale buffers are kept and reused as torch does), or torch's
    exact error where torch fails."""
    dtype = torch.float64
    values = make_param_values(SHAPES, dtype, seed=66)
    grads = make_grad_values(SHAPES, dtype, seed=6600)

    def run(cls, log=None):
        ps = as_params(values)
        o = cls(ps, lr=0.02)
        for step, gs in enumerate(grads):
            for k, v in switches.get(step, {}).items():
                o.param_groups[0][k] = v
            set_grads(ps, gs)
            if log is not None:
                log[:] = [o, ps, [p.detach().clone() for p in ps],
                          {i: {k: v.clone() for k, v in o.state[p].items()}
                           for i, p in enumerate(ps) if p in o.state}]
            o.step()
        return o, ps

    kind, res = outcome(lambda: run(torch_cls(optim)))
    if kind == "raise":
        log = []
        with pytest.raises(type(res)) as info:
            run(fused_cls(optim), log)
        assert str(info.value) == str(res)
        # the failed step changed nothing
        o, ps, params_before, state_before = log
        for p, b in zip(ps, params_before):
            assert torch.equal(p.detach(), b)
        for i, st in state_before.items():
            assert o.state[ps[i]].keys() == st.keys()
            for k, v in st.items():
                assert torch.equal(o.state[ps[i]][k], v), (i, k)
        return
    o_t, p_t = res
    o_f, p_f = run(fused_cls(optim))
    assert_runs_match(o_f, o_t, p_f, p_t)


@pytest.mark.parametrize("config", REPRESENTATIVE_CONFIGS, ids=config_ids(REPRESENTATIVE_CONFIGS))
def test_duplicate_params_in_group_updated_like_torch(config):
    """torch warns and then updates a duplicated param twice per step; so must we."""
    dtype = torch.float64
    values = make_param_values([(7,), (9,)], dtype, seed=67)
    grads = make_grad_values([(7,), (9,)], dtype, seed=6700)

    def run(cls_get, which):
        ps = as_params(values)
        kw = config.fused_kwargs(dtype) if which == "fused" else config.reference_kwargs(dtype)
        with pytest.warns(UserWarning, match="duplicate parameters"):
            o = cls_get(config.optim)([ps[0], ps[1], ps[0]], **kw)
        for gs in grads:
            set_grads(ps, gs)
            o.step()
        return o, ps

    o_t, p_t = run(torch_cls, "torch")
    o_f, p_f = run(fused_cls, "fused")
    assert_runs_match(o_f, o_t, p_f, p_t, config)


@pytest.mark.parametrize("optim", OPTIM_NAMES)
def test_empty_param_groups(optim):
    """Groups without params (allowed by torch) are harmless, also when added later."""
    dtype = torch.float32
    values = make_param_values([(7,), (33,)], dtype, seed=68)
    grads = make_grad_values([(7,), (33,)], dtype, seed=6800)

    def run(cls):
        ps = as_params(values)
        o = cls([{"params": []}, {"params": ps[:1], "lr": 0.01}, {"params": ps[1:]}], lr=0.02)
        for step, gs in enumerate(grads):
            if step == 4:
                o.add_param_group({"params": [], "lr": 1.0})
            set_grads(ps, gs)
            o.step()
        return o, ps

    o_t, p_t = run(torch_cls(optim))
    o_f, p_f = run(fused_cls(optim))
    assert len(o_f.param_groups) == 4
    assert_runs_match(o_f, o_t, p_f, p_t)
    assert_fused_path(o_f)


@pytest.mark.parametrize("config", REPRESENTATIVE_CONFIGS, ids=config_ids(REPRESENTATIVE_CONFIGS))
def test_load_partial_state_then_new_params_get_grads(config):
    """Load a torch state_dict in which some params have no state yet; those params then get
    their first grad: they start fresh exactly as torch's would."""
    dtype = torch.float64
    shapes = [(7,), (17,), (3, 5)]
    values = make_param_values(shapes, dtype, seed=69)
    grads = make_grad_values(shapes, dtype, seed=6900)
    for step in range(6):
        grads[step][2] = None  # param 2 gets no grad before step 6

    src = as_params(values)
    o_src = torch_cls(config.optim)(src, **config.reference_kwargs(dtype))
    for gs in grads[:4]:
        set_grads(src, gs)
        o_src.step()
    sd = o_src.state_dict()
    p_t, p_f = as_params([p.detach() for p in src]), as_params([p.detach() for p in src])
    o_t = torch_cls(config.optim)(p_t, **config.reference_kwargs(dtype))
    o_f = fused_cls(config.optim)(p_f, **config.fused_kwargs(dtype))
    o_t.load_state_dict(copy.deepcopy(sd))
    o_f.load_state_dict(sd)
    for gs in grads[4:]:
        set_grads(p_t, gs)
        set_grads(p_f, gs)
        o_t.step()
        o_f.step()
    assert_runs_match(o_f, o_t, p_f, p_t, config)
    assert len(grads) == NUM_STEPS


def test_grad_becoming_a_tensor_subclass_takes_the_reference_path():
    """A grad that turns into a wrapper subclass (no memory of its own, like a DTensor) after
    the plan was built is not swept by the kernels: the plan is rebuilt and the param takes
    the reference path, which does what torch.optim does with it."""
    from torch.testing._internal.two_tensor import TwoTensor

    def run(optimizer_class):
        param = torch.arange(5.0, requires_grad=True)
        optimizer = optimizer_class([param], lr=0.1, momentum=0.9)
        param.grad = torch.ones(5)
        optimizer.step()
        param.grad = TwoTensor(torch.full((5,), 2.0), torch.full((5,), 3.0))
        optimizer.step()
        return optimizer, param

    optimizer, param = run(fusedoptim.SGD)
    assert optimizer.last_step_paths == {"fused": 0, "reference": 1}
    _, torch_param = run(torch.optim.SGD)
    assert torch.equal(param.detach(), torch_param.detach())
