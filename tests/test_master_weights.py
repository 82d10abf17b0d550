"""master_weights=True (NOTE: [Master weights] in fusedoptim/optimizer.py): bf16/fp16 params
updated through an fp32 master copy in the state."""

import pytest
import torch

import fusedoptim
from helpers import fused_cls
from optim_configs import REPRESENTATIVE_CONFIGS, config_ids

CONFIGS = [c for c in REPRESENTATIVE_CONFIGS if c.optim != "LAMB"][::2] + [
    c for c in REPRESENTATIVE_CONFIGS if c.optim == "LAMB"][:1]
SHAPES = [(1,), (7,), (17,), (3, 5, 7), (33,)]


def _values(dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    # Params near 1 (a bf16 ulp there is 2^-7), grads bf16-representable.
    params = [(1 + 0.1 * torch.randn(s, generator=g)).to(dtype).float() for s in SHAPES]
    grads = [[torch.randn(s, generator=g).to(dtype).float() for s in SHAPES] for _ in range(40)]
    return params, grads


def _train(cls, kwargs, params, grads, dtype, **options):
    ps = [p.detach().to(dtype, copy=True).requires_grad_() for p in params]
    opt = cls(ps, **kwargs, **options)
    for step_grads in grads:
        for p, g in zip(ps, step_grads):
            p.grad = g.to(dtype)
        opt.step()
    return ps, opt


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_tracks_fp32_where_plain_16bit_stalls(dtype, isa):
    """AdamW with a small lr and weight decay: each update is below half a 16-bit ulp of the
    params. Plain 16-bit params never move; with master weights the master follows the fp32
    run exactly (same fp32 arithmetic on the same grads) and the param is it rounded once."""
    params, grads = _values(dtype)
    kwargs = dict(lr=1e-4, weight_decay=0.1)
    fp32, _ = _train(fusedoptim.AdamW, kwargs, params, grads, torch.float32)
    plain, _ = _train(fusedoptim.AdamW, kwargs, params, grads, dtype)
    master, opt = _train(fusedoptim.AdamW, kwargs, params, grads, dtype, master_weights=True)
    for p0, a, b, m in zip(params, fp32, plain, master):
        assert torch.equal(b.float(), p0), "plain 16-bit params were expected to stall"
        assert not torch.equal(a, p0)
        assert torch.equal(opt.state[m]["master_param"], a)
        assert torch.equal(m, a.to(dtype))  # within one 16-bit rounding of the fp32 run
        assert opt.state[m]["exp_avg"].dtype == torch.float32
    assert opt.state[master[0]]["master_param"].dtype == torch.float32


@pytest.mark.parametrize("config", CONFIGS, ids=config_ids(CONFIGS))
def test_every_algorithm_matches_its_fp32_run(config):
    params, grads = _values(torch.bfloat16)
    grads = grads[:5]
    cls = fused_cls(config.optim)
    fp32, fp32_opt = _train(cls, config.fused_kwargs(torch.float32), params, grads, torch.float32)
    master, opt = _train(cls, config.fused_kwargs(torch.float32), params, grads, torch.bfloat16, master_weights=True)
    assert opt.last_step_paths == {"fused": len(SHAPES), "reference": 0}
    for a, m in zip(fp32, master):
        assert torch.equal(opt.state[m]["master_param"], a)
        assert torch.equal(m, a.to(torch.bfloat16))
        for name, value in fp32_opt.state[a].items():
            assert torch.equal(opt.state[m][name], value), name


def test_fp32_params_are_untouched():
    params, grads = _values(torch.float32)
    plain, _ = _train(fusedoptim.Adam, dict(lr=0.01), params, grads[:3], torch.float32)
    with_option, opt = _train(fusedoptim.Adam, dict(lr=0.01), params, grads[:3], torch.float32, master_weights=True)
    assert all(torch.equal(a, b) for a, b in zip(plain, with_option))
    assert "master_param" not in opt.state[with_option[0]]


def test_with_max_grad_norm_and_sgd_without_state():
    params, grads = _values(torch.bfloat16)
    kwargs = dict(lr=1e-3, max_grad_norm=0.5)
    fp32, _ = _train(fusedoptim.SGD, kwargs, params, grads[:5], torch.float32)
    master, opt = _train(fusedoptim.SGD, kwargs, params, grads[:5], torch.bfloat16, master_weights=True)
    for a, m in zip(fp32, master):
        # bf16 grads give a bf16 norm and clip coefficient (torch's dtype rule), fp32 ones fp32.
        torch.testing.assert_close(opt.state[m]["master_param"], a, rtol=0, atol=1e-4)
        assert list(opt.state[m]) == ["master_param"]


def test_state_dict_round_trip():
    params, grads = _values(torch.bfloat16)
    straight, _ = _train(fusedoptim.Adam, dict(lr=1e-3), params, grads[:6], torch.bfloat16, master_weights=True)
    ps, opt = _train(fusedoptim.Adam, dict(lr=1e-3), params, grads[:3], torch.bfloat16, master_weights=True)
    sd = opt.state_dict()
    assert sd["state"][0]["master_param"].dtype == torch.float32
    # torch.optim loads it (it casts every state, the master too, to the param dtype) ...
    torch_opt = torch.optim.Adam([p.detach().clone().requires_grad_() for p in ps], lr=1e-3)
    torch_opt.load_state_dict(sd)
    # ... and fusedoptim keeps the master in fp32, so a resumed run equals the straight one.
    resumed = fusedoptim.Adam(ps, lr=1e-3, master_weights=True)
    resumed.load_state_dict(sd)
    assert resumed.state[ps[0]]["master_param"].dtype == torch.float32
    for step_grads in grads[3:6]:
        for p, g in zip(ps, step_grads):
            p.grad = g.to(torch.bfloat16)
        resumed.step()
    assert all(torch.equal(a, b) for a, b in zip(ps, straight))


@pytest.mark.parametrize("kwargs, message", [
    (dict(master_weights=1), "Invalid master_weights value: 1"),
    (dict(master_weights=True, differentiable=True), "master_weights is not supported with differentiable=True"),
    (dict(master_weights=True, state_dtype=torch.bfloat16),
     "state_dtype=torch.bfloat16 is not supported with master_weights=True"),
])
@pytest.mark.parametrize("optim", ["SGD", "Adam", "LAMB"])
def test_invalid_options_raise(optim, kwargs, message):
    with pytest.raises(ValueError, match=message):
        fused_cls(optim)([torch.zeros(3, requires_grad=True)], lr=0.1, **kwargs)


@pytest.mark.filterwarnings("ignore::fusedoptim.ReferencePathWarning")
def test_reference_path_params_raise():
    p = torch.nn.Parameter(torch.ones(4, 3, dtype=torch.bfloat16).t())
    opt = fusedoptim.Adam([p], lr=0.1, master_weights=True)
    p.grad = torch.ones_like(p)
    with pytest.raises(ValueError, match="master_weights is not supported for param_groups"):
        opt.step()
    assert len(opt.state) == 0
