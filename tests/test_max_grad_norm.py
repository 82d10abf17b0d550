"""max_grad_norm / norm_type on every optimizer (NOTE: [max_grad_norm] in fusedoptim/optimizer.py):
a step equals torch.nn.utils.clip_grad_norm_ over all the optimizer's params followed by the
torch step, with fp64 tight and fp32 close; the norm covers every group; a coefficient of 1 is
bit-identical to the unclipped step; the grads are left as they were; invalid uses raise."""

import math

import pytest
import torch

import fusedoptim
from helpers import (TOLERANCES, as_params, assert_params_match, assert_states_match, fused_cls,
                     make_grad_values, make_param_values, torch_cls)
from optim_configs import REPRESENTATIVE_CONFIGS, config_ids

SHAPES = [(), (1,), (7,), (17,), (3, 5, 7), (33,)]
NUM_STEPS = 4
# One rich configuration per algorithm that takes the option (LAMB clips Apex's way).
CONFIGS = [c for c in REPRESENTATIVE_CONFIGS if c.optim != "LAMB"][1::2]


def _run_pair(config, dtype, max_norm, norm_type, shapes=SHAPES, split=None):
    """fusedoptim with max_grad_norm against torch's clip_grad_norm_ + step. split: the index
    at which the params form a second group without clipping."""
    values = make_param_values(shapes, dtype)
    grads = make_grad_values(shapes, dtype, num_steps=NUM_STEPS)
    kw_f, kw_t = config.fused_kwargs(dtype), config.reference_kwargs(dtype)
    pf, pt = as_params(values), as_params(values)

    def groups(params, clip):
        if split is None:
            return [dict(params=params, **clip)]
        return [dict(params=params[:split], **clip), dict(params=params[split:], lr=kw_f.get("lr", 0.01) / 2)]

    opt_f = fused_cls(config.optim)(groups(pf, dict(max_grad_norm=max_norm, norm_type=norm_type)), **kw_f)
    opt_t = torch_cls(config.optim)(groups(pt, {}), **kw_t)
    for step_grads in grads:
        for p, q, g in zip(pf, pt, step_grads):
            p.grad, q.grad = g.clone(), g.clone()
        opt_f.step()
        total = torch.nn.utils.get_total_norm([q.grad for q in pt], norm_type)
        torch.nn.utils.clip_grads_with_norm_(pt if split is None else pt[:split], max_norm, total)
        opt_t.step()
        for p, g in zip(pf, step_grads):
            assert torch.equal(p.grad, g), "the step modified a grad"
    return opt_f, opt_t, pf, pt


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("config", CONFIGS, ids=config_ids(CONFIGS))
def test_equals_clip_grad_norm_then_step(config, dtype):
    opt_f, opt_t, pf, pt = _run_pair(config, dtype, max_norm=1.0, norm_type=2.0)
    assert opt_f.last_step_paths == {"fused": len(SHAPES), "reference": 0}
    tol = dict(rtol=1e-13, atol=1e-15) if dtype == torch.float64 else TOLERANCES[dtype]
    assert_params_match(pf, pt, tol=tol)
    assert_states_match(opt_f, opt_t, pf, pt, tol=tol)


@pytest.mark.parametrize("norm_type", [1.0, float("inf"), "inf", 3.0], ids=str)
@pytest.mark.parametrize("config", CONFIGS[:3], ids=config_ids(CONFIGS[:3]))
def test_other_norms_and_groups(config, norm_type):
    # The norm covers both groups; only the first clips.
    opt_f, opt_t, pf, pt = _run_pair(config, torch.float64, max_norm=0.5, norm_type=norm_type, split=3)
    assert_params_match(pf, pt, tol=dict(rtol=1e-13, atol=1e-15))
    assert_states_match(opt_f, opt_t, pf, pt, tol=dict(rtol=1e-13, atol=1e-15))


def test_norm_below_max_is_bit_identical_to_no_clipping(isa):
    values = make_param_values(SHAPES, torch.float32)
    grads = make_grad_values(SHAPES, torch.float32, num_steps=3)
    results = []
    for clip in ({}, {"max_grad_norm": 1e9}):
        params = as_params(values)
        opt = fusedoptim.AdamW(params, lr=0.01, **clip)
        for step_grads in grads:
            for p, g in zip(params, step_grads):
                p.grad = g.clone()
            opt.step()
        results.append(params)
    assert all(torch.equal(a, b) for a, b in zip(*results))


@pytest.mark.filterwarnings("ignore::fusedoptim.ReferencePathWarning")
def test_reference_path_params_get_the_same_coefficient():
    # A non-contiguous param takes the reference path; the fused ones share its coefficient.
    dtype = torch.float64
    base = make_param_values([(6, 4), (9,), (20,)], dtype)
    grads = make_grad_values([(4, 6), (9,), (20,)], dtype, num_steps=3)
    pf = [torch.nn.Parameter(base[0].clone().t()), *[torch.nn.Parameter(v.clone()) for v in base[1:]]]
    pt = [torch.nn.Parameter(p.detach().clone()) for p in pf]
    assert not pf[0].is_contiguous()
    opt_f = fusedoptim.Adam(pf, lr=0.01, weight_decay=0.1, max_grad_norm=0.3)
    opt_t = torch.optim.Adam(pt, lr=0.01, weight_decay=0.1)
    for step_grads in grads:
        for p, q, g in zip(pf, pt, step_grads):
            p.grad, q.grad = g.clone(), g.clone()
        opt_f.step()
        for p, g in zip(pf, step_grads):
            assert torch.equal(p.grad, g)
        torch.nn.utils.clip_grad_norm_(pt, 0.3)
        opt_t.step()
    assert opt_f.last_step_paths == {"fused": 2, "reference": 1}
    assert_params_match(pf, pt, tol=dict(rtol=1e-13, atol=1e-15))


def test_bf16_follows_fp32_clipped_run(isa):
    values = make_param_values(SHAPES, torch.float32)
    grads = make_grad_values(SHAPES, torch.float32, num_steps=3)
    results = {}
    for dtype in (torch.float32, torch.bfloat16):
        params = as_params([v.to(dtype) for v in values])
        opt = fusedoptim.Adam(params, lr=0.01, max_grad_norm=0.5)
        for step_grads in grads:
            for p, g in zip(params, step_grads):
                p.grad = g.to(dtype)
            opt.step()
        results[dtype] = params
    for a, b in zip(results[torch.float32], results[torch.bfloat16]):
        torch.testing.assert_close(b.float(), a, rtol=2 ** -6, atol=2 ** -7)


@pytest.mark.parametrize("kwargs, message", [
    (dict(max_grad_norm=0.0), "Invalid max_grad_norm value: 0.0"),
    (dict(max_grad_norm=-1.0), "Invalid max_grad_norm value: -1.0"),
    (dict(max_grad_norm=1.0, norm_type=0), "Invalid norm_type value: 0"),
    (dict(norm_type="two"), "Invalid norm_type value: two"),
    (dict(max_grad_norm=1.0, differentiable=True), "max_grad_norm is not supported with differentiable=True"),
])
@pytest.mark.parametrize("optim", ["SGD", "Adam", "AdamW", "Rprop", "Lion"])
def test_invalid_options_raise(optim, kwargs, message):
    with pytest.raises(ValueError, match=message):
        fused_cls(optim)([torch.zeros(3, requires_grad=True)], lr=0.1, **kwargs)


def test_add_param_group_refuses_and_leaves_groups_alone():
    opt = fusedoptim.SGD([torch.zeros(3, requires_grad=True)], lr=0.1)
    with pytest.raises(ValueError, match="max_grad_norm"):
        opt.add_param_group({"params": [torch.zeros(2, requires_grad=True)], "max_grad_norm": -2.0})
    assert len(opt.param_groups) == 1


def test_lbfgs_and_lamb_keep_their_own_signatures():
    with pytest.raises(TypeError):
        fusedoptim.LBFGS([torch.zeros(3, requires_grad=True)], max_grad_norm=1.0)
    with pytest.raises(TypeError):
        fusedoptim.LAMB([torch.zeros(3, requires_grad=True)], norm_type=1.0)


def test_state_dict_round_trips_with_torch():
    p = torch.randn(10, requires_grad=True)
    opt = fusedoptim.Adam([p], lr=0.01, max_grad_norm=0.5, norm_type=math.inf)
    p.grad = torch.randn(10)
    opt.step()
    sd = opt.state_dict()
    assert sd["param_groups"][0]["max_grad_norm"] == 0.5
    # torch.optim keeps the extra group keys and ignores them.
    q = p.detach().clone().requires_grad_()
    torch_opt = torch.optim.Adam([q], lr=0.01)
    torch_opt.load_state_dict(sd)
    q.grad = torch.randn(10)
    torch_opt.step()
    # Loaded back, the saved clip options come with it.
    again = fusedoptim.Adam([p], lr=0.01)
    again.load_state_dict(torch_opt.state_dict())
    assert again.param_groups[0]["max_grad_norm"] == 0.5 and again.param_groups[0]["norm_type"] == math.inf
    # A state_dict of torch's own (no clip keys) leaves this optimizer's clip options as they were.
    plain = torch.optim.Adam([q], lr=0.01)
    q.grad = torch.randn(10)
    plain.step()
    again = fusedoptim.Adam([p], lr=0.01, max_grad_norm=0.25)
    again.load_state_dict(plain.state_dict())
    assert again.param_groups[0]["max_grad_norm"] == 0.25 and again.param_groups[0]["norm_type"] == 2.0
    p.grad = torch.randn(10)
    again.step()
