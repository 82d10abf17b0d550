"""state_dtype (NOTE: [State dtypes] in fusedoptim/optimizer.py): states stored in another dtype
than the params, math in fp32. The oracle is torch's (or the LAMB/Lion oracle's) fp32 step
with the stored values rounded as fusedoptim stores them after every step: the states to
state_dtype for fp32 params, the params to 16 bits for 16-bit params with fp32 states."""

import pytest
import torch

import fusedoptim
from helpers import as_params, fused_cls, make_grad_values, make_param_values, torch_cls
from optim_configs import REPRESENTATIVE_CONFIGS, config_ids

SHAPES = [(), (1,), (7,), (17,), (3, 5, 7), (33,)]
NUM_STEPS = 5
CONFIGS = REPRESENTATIVE_CONFIGS[1::2]
SCALAR_STATES = ("step", "eta", "mu", "mu_product")  # 0-dim: torch's dtypes whatever state_dtype


def _rounded(t, dtype):
    return t.to(dtype).to(t.dtype)


def _run(config, param_dtype, state_dtype):
    """(fusedoptim params, its optimizer, oracle params, oracle optimizer): fusedoptim on
    param_dtype params with state_dtype; the oracle in fp32, rounding what fusedoptim stores."""
    values = make_param_values(SHAPES, torch.float32)
    values = [_rounded(v, param_dtype) for v in values]
    grads = make_grad_values(SHAPES, param_dtype, num_steps=NUM_STEPS)
    pf = as_params([v.to(param_dtype) for v in values])
    pt = as_params(values)
    opt_f = fused_cls(config.optim)(pf, state_dtype=state_dtype, **config.fused_kwargs(torch.float32))
    opt_t = torch_cls(config.optim)(pt, **config.reference_kwargs(torch.float32))
    with torch.no_grad():
        for step_grads in grads:
            for p, q, g in zip(pf, pt, step_grads):
                p.grad, q.grad = g.clone(), g.float()
            opt_f.step()
            opt_t.step()
            for q in pt:
                if param_dtype != torch.float32:
                    q.copy_(_rounded(q, param_dtype))
                for name, value in opt_t.state[q].items():
                    if name not in SCALAR_STATES and state_dtype != torch.float32:
                        value.copy_(_rounded(value, state_dtype))
    return pf, opt_f, pt, opt_t


def _close(actual, expected, rtol):
    """Relative to the tensor's largest magnitude (small elements inherit its roundings)."""
    scale = max(1.0, expected.abs().max().item()) if expected.numel() else 1.0
    torch.testing.assert_close(actual.float(), expected.float(), rtol=rtol, atol=rtol * scale)


@pytest.mark.parametrize("config", CONFIGS, ids=config_ids(CONFIGS))
def test_fp32_params_bf16_states(config, isa):
    pf, opt_f, pt, opt_t = _run(config, torch.float32, torch.bfloat16)
    assert opt_f.last_step_paths["reference"] == 0
    for p, q in zip(pf, pt):
        assert p.dtype == torch.float32
        # fp32 differences of a step can move a stored state across a bf16 rounding boundary.
        _close(p, q, 2 ** -8)
        for name, value in opt_f.state[p].items():
            if name not in SCALAR_STATES:
                assert value.dtype == torch.bfloat16, name
                _close(value, opt_t.state[q][name], 2 ** -6)


@pytest.mark.parametrize("param_dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("config", CONFIGS, ids=config_ids(CONFIGS))
def test_16bit_params_fp32_states(config, param_dtype):
    pf, opt_f, pt, opt_t = _run(config, param_dtype, torch.float32)
    for p, q in zip(pf, pt):
        assert p.dtype == param_dtype
        _close(p, q, 2 ** -6 if param_dtype == torch.bfloat16 else 2 ** -9)
        for name, value in opt_f.state[p].items():
            if name not in SCALAR_STATES:
                assert value.dtype == torch.float32, name
                _close(value, opt_t.state[q][name], 1e-3)


def test_same_dtype_changes_nothing(isa):
    values = make_param_values(SHAPES, torch.float32)
    grads = make_grad_values(SHAPES, torch.float32, num_steps=3)
    runs = []
    for kwargs in ({}, {"state_dtype": torch.float32}):
        params = as_params(values)
        opt = fusedoptim.Adam(params, lr=0.01, **kwargs)
        for step_grads in grads:
            for p, g in zip(params, step_grads):
                p.grad = g.clone()
            opt.step()
        runs.append(params)
    assert all(torch.equal(a, b) for a, b in zip(*runs))


def test_state_dict_round_trip_with_torch():
    values = make_param_values(SHAPES, torch.float32)
    grads = make_grad_values(SHAPES, torch.float32, num_steps=4)

    def step(opt, params, step_grads):
        for p, g in zip(params, step_grads):
            p.grad = g.clone()
        opt.step()

    straight = as_params(values)
    opt = fusedoptim.AdamW(straight, lr=0.01, state_dtype=torch.bfloat16)
    for step_grads in grads:
        step(opt, straight, step_grads)

    params = as_params(values)
    opt = fusedoptim.AdamW(params, lr=0.01, state_dtype=torch.bfloat16)
    for step_grads in grads[:2]:
        step(opt, params, step_grads)
    sd = opt.state_dict()
    assert sd["state"][0]["exp_avg"].dtype == torch.bfloat16
    # torch.optim takes it (casting the states to the params' dtype) ...
    torch_opt = torch.optim.AdamW(as_params(values), lr=0.01)
    torch_opt.load_state_dict(sd)
    assert torch_opt.state_dict()["state"][0]["exp_avg"].dtype == torch.float32
    # ... and a fusedoptim optimizer loading torch's continues exactly as the straight run.
    resumed = fusedoptim.AdamW(params, lr=0.01, state_dtype=torch.bfloat16)
    resumed.load_state_dict(torch_opt.state_dict())
    for step_grads in grads[2:]:
        step(resumed, params, step_grads)
    assert all(torch.equal(a, b) for a, b in zip(params, straight))
    assert resumed.state[params[3]]["exp_avg"].dtype == torch.bfloat16


def test_adagrad_makes_its_state_in_state_dtype():
    p = torch.zeros(5, requires_grad=True)
    opt = fusedoptim.Adagrad([p], initial_accumulator_value=0.1, state_dtype=torch.bfloat16)
    assert opt.state[p]["sum"].dtype == torch.bfloat16


@pytest.mark.parametrize("kwargs, message", [
    (dict(state_dtype=torch.int32), "Invalid state_dtype value: torch.int32"),
    (dict(state_dtype="bfloat16"), "Invalid state_dtype value: bfloat16"),
    (dict(state_dtype=torch.bfloat16, differentiable=True), "state_dtype is not supported with differentiable=True"),
])
@pytest.mark.parametrize("optim", ["SGD", "Adam", "LAMB", "Lion"])
def test_invalid_options_raise(optim, kwargs, message):
    with pytest.raises(ValueError, match=message):
        fused_cls(optim)([torch.zeros(3, requires_grad=True)], lr=0.1, **kwargs)


@pytest.mark.parametrize("param_dtype, state_dtype", [
    (torch.float64, torch.bfloat16), (torch.float64, torch.float32), (torch.float32, torch.float16),
    (torch.bfloat16, torch.float16), (torch.complex64, torch.bfloat16),
], ids=str)
def test_pairs_without_kernels_raise_before_anything_changes(param_dtype, state_dtype):
    p = torch.ones(4, dtype=param_dtype, requires_grad=True)
    opt = fusedoptim.Adam([p], lr=0.1, state_dtype=state_dtype)
    p.grad = torch.ones_like(p)
    with pytest.raises(ValueError, match=f"state_dtype={state_dtype} is not supported for {param_dtype} params"):
        opt.step()
    assert len(opt.state) == 0 and torch.equal(p, torch.ones_like(p))


@pytest.mark.filterwarnings("ignore::fusedoptim.ReferencePathWarning")
def test_reference_path_params_raise():
    p = torch.nn.Parameter(torch.ones(4, 3).t())  # non-contiguous: the reference path
    opt = fusedoptim.Adam([p], lr=0.1, state_dtype=torch.bfloat16)
    p.grad = torch.ones_like(p)
    with pytest.raises(ValueError, match=r"state_dtype is not supported for param_groups\[0\]\['params'\]\[0\]"):
        opt.step()
    assert len(opt.state) == 0 and torch.equal(p, torch.ones(4, 3).t())
