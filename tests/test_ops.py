"""The registered ops, torch.ops.fusedoptim.* (csrc/ops.cpp): each gives bit for bit what the
optimizer's own step gives with the same hyperparameters, passes torch.library.opcheck
(schema mutations, fake implementation, autograd registration, AOT dispatch), and traces
into a torch.compile graph."""

import pytest
import torch

import fusedoptim
from fusedoptim._ops import BUCKET_METHOD_OPS, STEP_OPS
from optim_configs import ALL_CONFIGS, REPRESENTATIVE_CONFIGS, config_ids

# Several buckets per group (two dtypes), tail sizes, a 0-dim param, complex-free.
PARAM_SPECS = [((7,), torch.float32), ((3, 5), torch.float64), ((33,), torch.float32),
               ((), torch.float64), ((9,), torch.float32)]
NUM_STEPS = 3


class _Recorder:
    """Stands in for a compiled CPU Bucket: records the method an optimizer's _fused_step calls
    and its arguments, the same hyperparameters the op takes (NOTE: [Ops and buckets]). A CPU
    bucket keeps its scalars on the host and takes no device lr."""

    device_scalars = False

    def __getattr__(self, method):
        def record(*args, device_lr=None):
            assert device_lr is None, "a CPU bucket takes no device lr"
            self.call = (method, args)
        return record


def _list_argument_name(state_name):
    return {"sum": "state_sums", "step": "state_steps"}.get(state_name, state_name + "s")


def _op_arguments(optimizer, group, params, grads, states, scalars, first_step):
    """The op and its arguments for one step of `group`, from what _fused_step would send a
    bucket."""
    recorder = _Recorder()
    optimizer._fused_step(group, recorder)
    method, hyper = recorder.call
    op = getattr(torch.ops.fusedoptim, BUCKET_METHOD_OPS[method]).default
    schema_args = op._schema.arguments
    lists = {_list_argument_name(name): values for name, values in {**states, **scalars}.items()}
    kwargs = {"params": params, "grads": grads}
    hyper_names = []
    for arg in schema_args[2:]:
        if str(arg.type).startswith("List[Tensor]"):
            kwargs[arg.name] = lists.pop(arg.name, [])
        else:
            hyper_names.append(arg.name)
    assert not lists, f"states the op does not take: {list(lists)}"
    if method == "adam":
        *hyper, coefs_at_step = hyper
        assert coefs_at_step is None
    kwargs.update(zip(hyper_names, hyper))
    if "is_first_step" in hyper_names:
        kwargs["is_first_step"] = first_step
    return op, kwargs


def _fused_configs(configs):
    def supported(config):
        # A Tensor lr or betas makes Adam's host code call back into Python per step count,
        # which the op (float hyperparameters) does not take.
        tensor_hyper = config.optim in ("Adam", "AdamW") and any(
            isinstance(v, (tuple, list)) and any(not isinstance(x, (int, float)) for x in v)
            or not isinstance(v, (int, float, bool, tuple, list, type(None)))
            for k, v in config.kwargs.items() if k in ("lr", "betas"))
        return config.expects_fused_path and not tensor_hyper
    return [c for c in configs if supported(c)]


def _initial_states(optimizer, group, params):
    """The state lists and 0-dim state lists a first step of `optimizer` starts from."""
    states = {name: [torch.full_like(p, optimizer._initial_state(group, name)) for p in params]
              for name in optimizer._state_names(group)}
    scalars = {name: [torch.tensor(optimizer._initial_scalar(group, name), dtype=optimizer._step_dtype(group))
                      for _ in params]
               for name in optimizer._scalar_names(group)}
    return states, scalars


def _make_params(seed):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=generator, dtype=torch.float64).to(dtype)
            for shape, dtype in PARAM_SPECS]


@pytest.mark.parametrize("config", _fused_configs(ALL_CONFIGS), ids=config_ids(_fused_configs(ALL_CONFIGS)))
def test_op_matches_the_optimizer_step(config):
    initial = _make_params(0)
    params = [p.clone().requires_grad_() for p in initial]
    optimizer = getattr(fusedoptim, config.optim)(params, **config.fused_kwargs(torch.float32))
    group = optimizer.param_groups[0]
    op_params = [p.clone() for p in initial]
    states, scalars = _initial_states(optimizer, group, op_params)
    for step in range(NUM_STEPS):
        grads = _make_params(100 + step)
        for p, g in zip(params, grads):
            p.grad = g.clone()
        optimizer.step()
        assert optimizer.last_step_paths == {"fused": len(params), "reference": 0}
        op, kwargs = _op_arguments(optimizer, group, op_params, grads, states, scalars, first_step=step == 0)
        op(**kwargs)

    for i, (p, q) in enumerate(zip(params, op_params)):
        assert torch.equal(p.detach(), q), f"param {i}"
        for name, values in {**states, **scalars}.items():
            assert torch.equal(optimizer.state[p][name], values[i]), f"param {i} state {name}"


def _sample_arguments(config):
    """One step's op arguments for `config`, on fresh tensors that do not require grad."""
    params = [p.detach().clone() for p in _make_params(0)]
    optimizer = getattr(fusedoptim, config.optim)([p.clone().requires_grad_() for p in params],
                                                 **config.fused_kwargs(torch.float32))
    group = optimizer.param_groups[0]
    states, scalars = _initial_states(optimizer, group, params)
    for p in optimizer.param_groups[0]["params"]:
        p.grad = torch.ones_like(p)
    optimizer.step()
    return _op_arguments(optimizer, group, params, _make_params(1), states, scalars, first_step=True)


# LAMB with max_grad_norm sends the op a clip divisor from the step's global grad norm:
# covered by the parity test, where a real step computes it.
OPCHECK_CONFIGS = [c for c in _fused_configs(REPRESENTATIVE_CONFIGS)
                   if not (c.optim == "LAMB" and c.kwargs.get("max_grad_norm"))]


@pytest.mark.parametrize("config", OPCHECK_CONFIGS, ids=config_ids(OPCHECK_CONFIGS))
def test_opcheck(config):
    op, kwargs = _sample_arguments(config)
    torch.library.opcheck(op, (), kwargs)


def test_every_step_op_is_checked():
    checked = {_sample_arguments(c)[0]._schema.name.split("::")[1] for c in OPCHECK_CONFIGS}
    assert checked == set(STEP_OPS)


def test_grad_squares():
    grads = _make_params(3)
    expected = sum(g.double().pow(2).sum() for g in grads)
    result = torch.ops.fusedoptim.grad_squares(grads)
    assert result.dtype == torch.float64 and result.shape == ()
    torch.testing.assert_close(result, expected, rtol=1e-6, atol=0)
    torch.library.opcheck(torch.ops.fusedoptim.grad_squares.default, (grads,))


@pytest.mark.parametrize("norm_type", [2.0, 1.0, float("inf"), 3.0], ids=str)
def test_grad_norm_and_scale_grads(norm_type):
    """The two ops of fusedoptim.clip_grad_norm_ (tests/test_clip.py compares it with torch)."""
    grads = _make_params(3)
    flat = torch.cat([g.double().reshape(-1) for g in grads])
    expected = flat.abs().max() if norm_type == float("inf") else flat.abs().pow(norm_type).sum()
    result = torch.ops.fusedoptim.grad_norm(grads, norm_type)
    assert result.dtype == torch.float64 and result.shape == ()
    torch.testing.assert_close(result, expected, rtol=1e-14, atol=0)
    torch.library.opcheck(torch.ops.fusedoptim.grad_norm.default, (grads, norm_type))
    scaled = [g.clone() for g in grads]
    torch.ops.fusedoptim.scale_grads_(scaled, 0.3)
    assert all(torch.equal(s, g * 0.3) for s, g in zip(scaled, grads))
    torch.library.opcheck(torch.ops.fusedoptim.scale_grads_.default, ([g.clone() for g in grads], 0.3))


def test_grad_norm_rejects_what_it_cannot_reduce():
    with pytest.raises(ValueError, match="norm_type > 0"):
        torch.ops.fusedoptim.grad_norm([torch.ones(3)], 0.0)
    with pytest.raises(RuntimeError, match="complex, which only norm_type 2 takes"):
        torch.ops.fusedoptim.grad_norm([torch.ones(3, dtype=torch.complex64)], 1.0)


def test_op_traces_into_a_compiled_graph():
    params, grads = _make_params(0), _make_params(1)
    exp_avgs = [torch.zeros_like(p) for p in params]
    exp_avg_sqs = [torch.zeros_like(p) for p in params]
    steps = [torch.tensor(0.0) for _ in params]
    eager = [t.clone() for t in params], [t.clone() for t in exp_avgs], [t.clone() for t in exp_avg_sqs], [
        t.clone() for t in steps]

    def step(params, exp_avgs, exp_avg_sqs, steps, lr):
        torch.ops.fusedoptim.adam_(params, grads, exp_avgs, exp_avg_sqs, [], steps, lr, 0.9, 0.999, 1e-8, 0.0,
                                   False, False, False, 1.0)

    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    for lr in (1e-2, 5e-3):
        step(*eager, lr)
        compiled(params, exp_avgs, exp_avg_sqs, steps, lr)
    for ours, theirs in zip((params, exp_avgs, exp_avg_sqs, steps), eager):
        for a, b in zip(ours, theirs):
            assert torch.equal(a, b)


@pytest.mark.parametrize("bad, message", [
    (dict(grads=[torch.zeros(7)]), "1 grads for 5 params"),
    (dict(exp_avgs=[torch.zeros(7)]), "a state list has 1 tensors for 5 params"),
    (dict(max_exp_avg_sqs=[torch.zeros(7)] * 5), "max_exp_avg_sqs must be given exactly when amsgrad"),
])
def test_op_errors_name_the_problem(bad, message):
    params = _make_params(0)
    kwargs = dict(params=params, grads=_make_params(1), exp_avgs=[torch.zeros_like(p) for p in params],
                  exp_avg_sqs=[torch.zeros_like(p) for p in params], max_exp_avg_sqs=[],
                  state_steps=[torch.tensor(0.0) for _ in params], lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8,
                  weight_decay=0.0, amsgrad=False, maximize=False, decoupled_weight_decay=False, decay_factor=1.0)
    kwargs.update(bad)
    before = [p.clone() for p in params]
    with pytest.raises(RuntimeError, match=message):
        torch.ops.fusedoptim.adam_(**kwargs)
    assert all(torch.equal(p, q) for p, q in zip(params, before))


# ------------------------------------------------------------------ LBFGS's passes as ops

def _lbfgs_inputs(dtype=torch.float64, history=3):
    generator = torch.Generator().manual_seed(7)

    def vector(n):
        return torch.randn(n, generator=generator, dtype=torch.float64).to(dtype)

    params = [vector(5), vector(6).view(2, 3), vector(33)]
    grads = [vector(5), None, vector(33)]
    numel = 44
    return dict(params=params, grads=grads, direction=vector(numel), grad=vector(numel),
                prev_grad=vector(numel), old_dirs=[vector(numel) for _ in range(history)],
                old_stps=[vector(numel) for _ in range(history)],
                ro=[torch.tensor(0.5 + i, dtype=dtype) for i in range(history)])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_lbfgs_ops_match_the_optimizer_passes(dtype):
    """Each op gives what fusedoptim.LBFGS's own call of the same pass gives, bit for bit."""
    x = _lbfgs_inputs(dtype)
    lbfgs, ops = fusedoptim._extension._C.lbfgs, torch.ops.fusedoptim
    params = [p.clone() for p in x["params"]]
    for p, g in zip(params, x["grads"]):
        p.grad = g
    flat = lbfgs.FlatParams.of(params)

    def same(a, b):
        assert len(a) == len(b) and all(torch.equal(u, v) for u, v in zip(a, b))

    same(ops.lbfgs_gather_grads(x["params"], x["grads"], x["direction"]), flat.gather_grads(x["direction"]))
    vec, max_abs, dot = ops.lbfgs_gather_grads(x["params"], x["grads"], None)
    same((vec, max_abs), flat.gather_grads()[:2])
    assert dot.item() == 0
    assert torch.equal(ops.lbfgs_gather_params(x["params"]), flat.gather_params())
    same(ops.lbfgs_first_direction(x["grad"]), lbfgs.first_direction(x["grad"]))
    prev_for_op, prev_for_pass = x["prev_grad"].clone(), x["prev_grad"].clone()
    same(ops.lbfgs_update_memory(x["grad"], prev_for_op, x["direction"], 0.25),
         lbfgs.update_memory(x["grad"], prev_for_pass, x["direction"], 0.25))
    assert torch.equal(prev_for_op, x["grad"]) and torch.equal(prev_for_pass, x["grad"])
    same(ops.lbfgs_two_loop(x["grad"], x["old_dirs"], x["old_stps"], x["ro"], 0.7),
         lbfgs.two_loop(x["grad"], x["old_dirs"], x["old_stps"], x["ro"], 0.7))
    same(ops.lbfgs_max_abs_and_dot(x["grad"], x["direction"]), lbfgs.max_abs_and_dot(x["grad"], x["direction"]))
    origin = torch.zeros(44, dtype=dtype)
    op_params = [p.clone() for p in x["params"]]
    ops.lbfgs_add_step(op_params, origin, 0.5, x["direction"])
    flat.add_step(origin, 0.5, x["direction"])
    same(op_params, params)


LBFGS_OPCHECK_CASES = {
    "lbfgs_gather_grads": lambda x: (x["params"], x["grads"], x["direction"]),
    "lbfgs_gather_params": lambda x: (x["params"],),
    "lbfgs_add_step": lambda x: (x["params"], None, 0.5, x["direction"]),
    "lbfgs_first_direction": lambda x: (x["grad"],),
    "lbfgs_update_memory": lambda x: (x["grad"], x["prev_grad"], x["direction"], 0.25),
    "lbfgs_two_loop": lambda x: (x["grad"], x["old_dirs"], x["old_stps"], x["ro"], 0.7),
    "lbfgs_max_abs_and_dot": lambda x: (x["grad"], x["direction"]),
}


@pytest.mark.parametrize("name", sorted(LBFGS_OPCHECK_CASES))
def test_lbfgs_opcheck(name):
    op = getattr(torch.ops.fusedoptim, name).default
    torch.library.opcheck(op, LBFGS_OPCHECK_CASES[name](_lbfgs_inputs()))


def test_lbfgs_op_rejects_params_it_cannot_flatten():
    with pytest.raises(RuntimeError, match="lbfgs_gather_params: params must be non-overlapping contiguous CPU"):
        torch.ops.fusedoptim.lbfgs_gather_params([torch.zeros(4, dtype=torch.float16)])


def test_every_registered_op_is_checked():
    registered = {name.split("::")[1] for name in torch._C._dispatch_get_all_op_names()
                  if name.startswith("fusedoptim::")}
    assert registered == set(STEP_OPS) | {"grad_squares", "grad_norm", "scale_grads_"} | set(LBFGS_OPCHECK_CASES)
