"""The CUDA kernels against torch.optim on the same GPU (skipped without one).

What the CPU suites check, with params on CUDA: parity for every registry configuration in
fp32 and fp64 after 10 steps, 16-bit params within twice torch's own error against an fp64
reference, tail sizes, misaligned views (the element-wise path), a bucket of thousands of
tensors (one launch), the paths taken, mixed devices, the registered ops, and a tensor of more
than 2**31 elements (slow); and for every algorithm with a device-side `step` (capturable=True,
fused=True), graph capture and replay and steps without host syncs. GradScaler on CUDA and checkpoints moving between CPU and CUDA are in
test_ecosystem.py.
"""

import pytest
import torch

import fusedoptim
from helpers import (
    DEFAULT_SHAPES,
    as_params,
    assert_fused_path,
    assert_params_match,
    assert_reference_path,
    assert_runs_match,
    assert_states_match,
    fused_cls,
    make_grad_values,
    make_param_values,
    run_steps,
    torch_cls,
)
from optim_configs import ALL_CONFIGS, REPRESENTATIVE_CONFIGS, config_ids
from test_precision import LP_IDS, SHAPES, check_against_fp64_reference

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() or not fusedoptim.cuda_kernels_compiled(),
    reason="needs a CUDA device and fusedoptim built with its CUDA kernels",
)

TAIL_SHAPES = [(n,) for n in [1, 7, 8, 9, 15, 16, 17, 31, 33, 4097, 65537, 16384 * 3 + 5]] + [(3, 5, 7)]


def _keeps_step_on_device(config):
    has_step = config.optim not in ("SGD", "Lion")
    return has_step and bool(config.kwargs.get("capturable") or config.kwargs.get("fused"))


def _device_steps(config):
    """Every algorithm with a `step` runs such groups with a CUDA step kernel when its lr and betas
    are Python numbers, Adam and AdamW also with a Tensor lr (a TensorHP is float32 or float64,
    which their kernels read on the device); the others take the reference path (NOTE: [CUDA
    steps] in fusedoptim/optimizer.py)."""
    def is_tensor(value):
        return type(value).__name__ == "TensorHP"
    tensor_lr_taken = config.optim in ("Adam", "AdamW") or not is_tensor(config.kwargs.get("lr"))
    tensor_betas = any(is_tensor(b) for b in config.kwargs.get("betas", ()))
    return config.optim not in ("SGD", "Lion", "LAMB", "LBFGS") and tensor_lr_taken and not tensor_betas


def _expects_fused(config):
    return config.expects_fused_path and (not _keeps_step_on_device(config) or _device_steps(config))


def _to_cuda(value):
    if isinstance(value, torch.Tensor):
        return value.cuda()
    return tuple(_to_cuda(v) for v in value) if isinstance(value, tuple) else value


def _cuda_kwargs(config, kwargs_fn):
    """The registry runs torch without capturable=True where torch can't take it on the CPU; on
    CUDA torch runs the configuration itself. Tensor hyperparameters of capturable groups live
    on the device, as torch's capturable code expects."""
    def kwargs(dtype):
        out = config.fused_kwargs(dtype) if config.kwargs.get("capturable") else kwargs_fn(dtype)
        return {k: _to_cuda(v) for k, v in out.items()} if out.get("capturable") else out
    return kwargs


def _float32_step_arithmetic(config, dtype):
    """Whether torch's side computes fp64 params' step coefficients in float32: its capturable
    (not fused) code does tensor arithmetic on the float32 `step` (beta1 ** step, ...), in an
    order of its own for foreach (CUDA's default). Our step kernel computes them in double as
    torch's Python-float path does (NOTE: [Step coefficients] in math/rule.h), and our
    reference path as torch's single-tensor capturable code: both differ from torch's default
    run by float32 roundings of the coefficients, far over the fp64 tolerance."""
    return dtype == torch.float64 and config.kwargs.get("capturable") and not config.kwargs.get("fused")


def _same_arithmetic_kwargs(config, dtype):
    """The torch run that computes fp64 step coefficients as ours do (_float32_step_arithmetic):
    without capturable for device steps, single-tensor capturable for the reference path."""
    if _device_steps(config):  # single-tensor: torch's foreach ASGD computes eta in float32 too
        return {**{k: v for k, v in config.reference_kwargs(dtype).items() if k != "capturable"}, "foreach": False}
    return dict(_cuda_kwargs(config, config.fused_kwargs)(dtype), foreach=False)


def _run(cls, config, kwargs_fn, values, grads):
    params = as_params([v.cuda() for v in values])
    opt = cls(config.optim)(params, **_cuda_kwargs(config, kwargs_fn)(values[0].dtype))
    run_steps(opt, params, [[g.cuda() for g in gs] for gs in grads])
    return opt, params


def _capture_step(opt, static_grads=(), warm_up_grads=((),), before_step=None):
    """Warm-up steps on a side stream (they build the plan, the state and the device tables, as
    torch's graph recipe asks), each after copying its grads into `static_grads` (and calling
    before_step(k) for warm-up step k); then one step captured in a CUDA graph, which is
    returned."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for k, grads in enumerate(warm_up_grads):
            for g, value in zip(static_grads, grads):
                g.copy_(value)
            if before_step is not None:
                before_step(k)
            opt.step()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        opt.step()
    return graph


def _check_paths(config, opt):
    if _expects_fused(config):
        assert_fused_path(opt)
    else:
        assert_reference_path(opt)


@pytest.mark.filterwarnings("ignore::fusedoptim.ReferencePathWarning")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("config", ALL_CONFIGS, ids=config_ids(ALL_CONFIGS))
def test_registry_parity_on_cuda(config, dtype):
    if config.differentiable:
        pytest.skip("differentiable=True takes the reference path on every device (test_parity.py)")
    values = make_param_values(DEFAULT_SHAPES, dtype, seed=1)
    grads = make_grad_values(DEFAULT_SHAPES, dtype, seed=100)
    t_opt, t_params = _run(torch_cls, config, config.reference_kwargs, values, grads)
    f_opt, f_params = _run(fused_cls, config, config.fused_kwargs, values, grads)
    if _float32_step_arithmetic(config, dtype):
        # Against torch's capturable run at fp32's tolerance (its float32 0.999 ** step alone is
        # 1e-5 off in 1 - beta2 ** step), and tightly against the torch run that computes the
        # coefficients as we do.
        loose = dict(rtol=1e-5, atol=1e-6)
        assert_params_match(f_params, t_params, tol=loose)
        assert_states_match(f_opt, t_opt, f_params, t_params, tol=loose)
        s_params = as_params([v.cuda() for v in values])
        s_opt = torch_cls(config.optim)(s_params, **_same_arithmetic_kwargs(config, dtype))
        run_steps(s_opt, s_params, [[g.cuda() for g in gs] for gs in grads])
        assert_params_match(f_params, s_params)
    else:
        assert_runs_match(f_opt, t_opt, f_params, t_params, config)
    _check_paths(config, f_opt)
    assert all(p.is_cuda for p in f_params)
    step_device = "cuda" if _keeps_step_on_device(config) else "cpu"
    assert all(f_opt.state[p]["step"].device.type == step_device for p in f_params if "step" in f_opt.state[p])


@pytest.mark.filterwarnings("ignore::fusedoptim.ReferencePathWarning")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=LP_IDS)
@pytest.mark.parametrize("config", ALL_CONFIGS, ids=config_ids(ALL_CONFIGS))
def test_low_precision_on_cuda(config, dtype):
    if config.differentiable:
        pytest.skip("differentiable=True takes the reference path on every device (test_precision.py)")
    opt = check_against_fp64_reference(config, dtype, SHAPES, seed=11, device="cuda")
    _check_paths(config, opt)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=["fp32", "bf16", "fp64"])
@pytest.mark.parametrize("config", REPRESENTATIVE_CONFIGS, ids=config_ids(REPRESENTATIVE_CONFIGS))
def test_tail_sizes_on_cuda_match_the_cpu_kernels(config, dtype):
    """Every tail of a 16-byte pack, and tensors spanning several chunks: the CUDA kernels run
    the same rule with the same per-tensor coefficients and no FMA contraction (setup.py's
    --fmad=false), so they agree with the CPU kernels to rounding."""
    if not _expects_fused(config):
        pytest.skip("this configuration takes the reference path on CUDA")
    values = make_param_values(TAIL_SHAPES, dtype, seed=3)
    grads = make_grad_values(TAIL_SHAPES, dtype, seed=300)
    cpu_params = as_params(values)
    cpu_opt = fused_cls(config.optim)(cpu_params, **config.fused_kwargs(dtype))
    run_steps(cpu_opt, cpu_params, grads)
    f_opt, f_params = _run(fused_cls, config, config.fused_kwargs, values, grads)
    assert_fused_path(f_opt)
    tol = {torch.float32: 1e-6, torch.float64: 1e-14, torch.bfloat16: 1e-2}[dtype]
    for pc, pf in zip(cpu_params, f_params):
        torch.testing.assert_close(pf.detach().cpu(), pc.detach(), rtol=tol, atol=tol)


def test_misaligned_views_take_the_elementwise_path():
    """Params that are views at odd offsets of one buffer (not 16-byte aligned)."""
    buffer = torch.randn(4 * 1000 + 3, device="cuda", dtype=torch.float32)
    offsets = [1, 1002, 2003, 3005]  # 4, 4008, 8012, 12020 bytes: none a multiple of 16
    grads = make_grad_values([(997,)] * 4, torch.float32, seed=5)
    base_t, base_f = buffer.clone(), buffer.clone()
    t_params = [base_t.narrow(0, o, 997).detach().requires_grad_() for o in offsets]
    f_params = [base_f.narrow(0, o, 997).detach().requires_grad_() for o in offsets]
    assert all(p.data_ptr() % 16 != 0 for p in f_params)
    t_opt = torch.optim.Adam(t_params, lr=1e-2, weight_decay=0.1)
    f_opt = fusedoptim.Adam(f_params, lr=1e-2, weight_decay=0.1)
    run_steps(t_opt, t_params, [[g.cuda() for g in gs] for gs in grads])
    run_steps(f_opt, f_params, [[g.cuda() for g in gs] for gs in grads])
    assert_fused_path(f_opt)
    torch.testing.assert_close(base_f, base_t, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("optim", ["SGD", "Adam", "RMSprop"])
def test_thousands_of_tensors_in_one_bucket(optim):
    """10,000 small tensors of varying sizes (one bucket, one launch) against torch."""
    shapes = [(1 + (i * 37) % 1000,) for i in range(10_000)]
    values = make_param_values(shapes, torch.float32, seed=4)
    grads = make_grad_values(shapes, torch.float32, num_steps=3, seed=400)
    kwargs = {"SGD": dict(lr=0.1, momentum=0.9), "Adam": dict(lr=1e-2), "RMSprop": dict(lr=1e-2)}[optim]
    t_params = as_params([v.cuda() for v in values])
    f_params = as_params([v.cuda() for v in values])
    t_opt = getattr(torch.optim, optim)(t_params, **kwargs)
    f_opt = getattr(fusedoptim, optim)(f_params, **kwargs)
    cuda_grads = [[g.cuda() for g in gs] for gs in grads]
    run_steps(t_opt, t_params, cuda_grads)
    run_steps(f_opt, f_params, cuda_grads)
    assert_fused_path(f_opt)
    assert f_opt.last_step_paths["fused"] == len(shapes)
    torch.testing.assert_close(torch.cat([p.detach() for p in f_params]), torch.cat([p.detach() for p in t_params]),
                               rtol=1e-5, atol=1e-6)


def _run_on_devices(optim, values, grads, devices):
    """torch.optim and fusedoptim side by side on one group of params on `devices`, lr 1e-2."""
    t_params = [v.to(d).requires_grad_() for v, d in zip(values, devices)]
    f_params = [v.to(d).requires_grad_() for v, d in zip(values, devices)]
    t_opt, f_opt = torch_cls(optim)(t_params, lr=1e-2), fused_cls(optim)(f_params, lr=1e-2)
    for gs in grads:
        for ps in (t_params, f_params):
            for p, g, d in zip(ps, gs, devices):
                p.grad = g.to(d)
        t_opt.step()
        f_opt.step()
    return t_opt, f_opt, t_params, f_params


def test_cpu_and_cuda_params_in_one_group_form_separate_buckets():
    shapes = [(17,), (33,), (5, 3)]
    values = make_param_values(shapes, torch.float32, seed=6)
    grads = make_grad_values(shapes, torch.float32, seed=600)
    t_opt, f_opt, t_params, f_params = _run_on_devices("AdamW", values, grads, ["cpu", "cuda", "cpu"])
    assert_fused_path(f_opt)
    for pf, pt in zip(f_params, t_params):
        assert pf.device == pt.device
        torch.testing.assert_close(pf, pt, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(f_opt.state[pf]["exp_avg"], t_opt.state[pt]["exp_avg"], rtol=1e-5, atol=1e-6)
        assert f_opt.state[pf]["exp_avg"].device == pf.device
        assert f_opt.state[pf]["step"].device.type == "cpu"  # as torch keeps it without capturable


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_params_on_two_gpus():
    values = make_param_values([(33,), (65,)], torch.float32, seed=7)
    grads = make_grad_values([(33,), (65,)], torch.float32, seed=700)
    t_opt, f_opt, t_params, f_params = _run_on_devices("Adam", values, grads, ["cuda:0", "cuda:1"])
    assert_fused_path(f_opt)
    for pf, pt in zip(f_params, t_params):
        torch.testing.assert_close(pf, pt, rtol=1e-5, atol=1e-6)


def test_step_runs_on_the_current_stream():
    """Work queued on a side stream is ordered with the step: the grads written there are the
    ones the kernels read."""
    values = make_param_values([(4097,)], torch.float32, seed=8)
    t_params, f_params = as_params([v.cuda() for v in values]), as_params([v.cuda() for v in values])
    t_opt, f_opt = torch.optim.Adam(t_params, lr=1e-2), fusedoptim.Adam(f_params, lr=1e-2)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for step in range(3):
            grad = torch.full((4097,), 0.5 + step, device="cuda")
            t_params[0].grad, f_params[0].grad = grad.clone(), grad.clone()
            t_opt.step()
            f_opt.step()
    torch.cuda.current_stream().wait_stream(stream)
    torch.testing.assert_close(f_params[0], t_params[0], rtol=1e-5, atol=1e-6)


def test_registered_op_on_cuda_matches_the_optimizer():
    values = make_param_values([(7,), (4097,)], torch.float32, seed=9)
    grads = [g.cuda() for g in make_grad_values([(7,), (4097,)], torch.float32, num_steps=1, seed=900)[0]]
    params = as_params([v.cuda() for v in values])
    opt = fusedoptim.Adam(params, lr=1e-2)
    for p, g in zip(params, grads):
        p.grad = g.clone()
    opt.step()
    op_params = [v.cuda() for v in values]
    exp_avgs = [torch.zeros_like(p) for p in op_params]
    exp_avg_sqs = [torch.zeros_like(p) for p in op_params]
    steps = [torch.zeros(()) for _ in op_params]
    torch.ops.fusedoptim.adam_(op_params, grads, exp_avgs, exp_avg_sqs, [], steps, 1e-2, 0.9, 0.999, 1e-8, 0.0,
                               False, False, False, 1.0)
    for p, q in zip(params, op_params):
        torch.testing.assert_close(q, p.detach(), rtol=0, atol=0)


@pytest.mark.slow
def test_tensor_of_more_than_2_31_elements():
    """64-bit indexing: SGD with momentum on a bf16 tensor of 2**31 + 37 elements (12 GB with
    its grad and buffer), checked at the start, across the 2**31 boundary and at the end."""
    numel = 2**31 + 37
    if torch.cuda.get_device_properties(0).total_memory < 24 * 2**30:
        pytest.skip("needs a GPU with 24 GB")
    param = torch.ones(numel, dtype=torch.bfloat16, device="cuda", requires_grad=True)
    param.grad = torch.full_like(param, 0.5)
    opt = fusedoptim.SGD([param], lr=0.25, momentum=0.5)
    opt.step()
    opt.step()
    assert_fused_path(opt)
    # step 1: buf = g = 0.5, p = 1 - 0.125; step 2: buf = 0.75, p = 0.875 - 0.1875 = 0.6875
    for index in (0, 2**31 - 1, 2**31, numel - 1):
        assert param[index].item() == 0.6875, index
        assert opt.state[param]["momentum_buffer"][index].item() == 0.75, index


# Every algorithm torch gives capturable=True or fused=True (a `step` on the device), with the
# options that change its step coefficients or 0-dim states; RAdam's rectification starts at
# step 6 and ASGD averages from step 3 within the six steps.
DEVICE_STEP_CASES = [
    ("Adam", dict(lr=1e-2, capturable=True)),
    ("AdamW", dict(lr=1e-2, weight_decay=0.1, capturable=True, amsgrad=True)),
    ("Adam", dict(lr=1e-2, fused=True)),
    ("Adadelta", dict(lr=0.5, weight_decay=0.1, capturable=True)),
    ("Adagrad", dict(lr=0.1, lr_decay=0.05, weight_decay=0.1, fused=True)),
    ("Adamax", dict(lr=1e-2, weight_decay=0.1, capturable=True)),
    ("ASGD", dict(lr=1e-2, t0=2, lambd=0.1, weight_decay=0.1, capturable=True)),
    ("NAdam", dict(lr=1e-2, weight_decay=0.1, momentum_decay=0.1, capturable=True)),
    ("NAdam", dict(lr=1e-2, weight_decay=0.1, decoupled_weight_decay=True, capturable=True)),
    ("RAdam", dict(lr=1e-2, weight_decay=0.1, capturable=True)),
    ("RMSprop", dict(lr=1e-2, momentum=0.9, centered=True, capturable=True)),
    ("Rprop", dict(lr=1e-2, capturable=True)),
]
DEVICE_STEP_IDS = [f"{optim}-{'-'.join(kwargs)}" for optim, kwargs in DEVICE_STEP_CASES]


def _captured_and_torch_runs(optim, torch_kwargs, fused_kwargs, num_steps, seed):
    """torch.optim's eager steps, and ours: two warm-up steps, then one captured in a CUDA graph
    and replayed for the rest. Returns (torch optimizer, params, ours, params)."""
    shapes = [(4097,), (33,), (16384 * 2 + 3,)]
    values = make_param_values(shapes, torch.float32, seed=seed)
    grads = make_grad_values(shapes, torch.float32, num_steps=num_steps, seed=seed * 100)
    t_params = as_params([v.cuda() for v in values])
    t_opt = getattr(torch.optim, optim)(t_params, **torch_kwargs)
    run_steps(t_opt, t_params, [[g.cuda() for g in gs] for gs in grads])

    f_params = as_params([v.cuda() for v in values])
    static_grads = [torch.zeros_like(p) for p in f_params]
    for p, g in zip(f_params, static_grads):
        p.grad = g
    f_opt = getattr(fusedoptim, optim)(f_params, **fused_kwargs)
    graph = _capture_step(f_opt, static_grads, grads[:2])
    for step in range(2, num_steps):
        for g, value in zip(static_grads, grads[step]):
            g.copy_(value)
        graph.replay()
    torch.cuda.synchronize()
    return t_opt, t_params, f_opt, f_params


@pytest.mark.parametrize("optim,kwargs", DEVICE_STEP_CASES, ids=DEVICE_STEP_IDS)
def test_captured_step_replays_like_eager_torch(optim, kwargs):
    """A whole step with device-side `step` (and mu_product, eta, mu) captured in a CUDA graph
    and replayed: the params and every state as torch's eager steps with the same flags (NOTE:
    [Device steps and GradScaler])."""
    t_opt, t_params, f_opt, f_params = _captured_and_torch_runs(optim, kwargs, kwargs, num_steps=6, seed=10)
    assert_fused_path(f_opt)
    assert_params_match(f_params, t_params)
    assert_states_match(f_opt, t_opt, f_params, t_params)
    assert all(f_opt.state[p]["step"].item() == 6 and f_opt.state[p]["step"].is_cuda for p in f_params)


@pytest.mark.filterwarnings("ignore::fusedoptim.ReferencePathWarning")
def test_capturable_adam_on_the_reference_path_captures():
    """A capturable Adam whose Tensor lr the kernels don't read (float16: NOTE: [Device learning
    rates] in csrc/cuda/sweep.cuh) takes the reference path, which computes as torch's
    single-tensor capturable code, with no host sync: it can be captured."""
    def lr():
        return torch.tensor(1e-2, dtype=torch.float16, device="cuda")
    t_opt, t_params, f_opt, f_params = _captured_and_torch_runs(
        "Adam", dict(lr=lr(), capturable=True, foreach=False), dict(lr=lr(), capturable=True), num_steps=5, seed=18)
    assert_reference_path(f_opt)
    assert_params_match(f_params, t_params)
    assert_states_match(f_opt, t_opt, f_params, t_params)


DEVICE_LR_CASES = [
    ("Adam", dict(capturable=True), torch.float32),
    ("Adam", dict(capturable=True), torch.float64),
    ("AdamW", dict(weight_decay=0.1, amsgrad=True, capturable=True), torch.float32),
    ("AdamW", dict(weight_decay=0.1, fused=True), torch.float32),  # torch's fused kernel reads a float32 lr
]


@pytest.mark.parametrize(
    "optim,kwargs,lr_dtype", DEVICE_LR_CASES,
    ids=[f"{o}-{'-'.join(k)}-lr_{str(d).split('.')[1]}" for o, k, d in DEVICE_LR_CASES],
)
def test_captured_step_follows_a_device_lr(optim, kwargs, lr_dtype):
    """A Tensor lr on the device (NOTE: [Device learning rates] in csrc/cuda/sweep.cuh) is read by
    the kernels: one step captured in a CUDA graph follows the lr a scheduler writes into the
    tensor before each replay, as torch's eager steps do, and no step syncs with the host."""
    num_steps = 6
    lrs = [1e-2 * 0.6**k for k in range(num_steps)]
    shapes = [(4097,), (33,), (16384 * 2 + 3,)]
    values = make_param_values(shapes, torch.float32, seed=18)
    grads = make_grad_values(shapes, torch.float32, num_steps=num_steps, seed=1800)

    t_lr = torch.tensor(lrs[0], dtype=lr_dtype, device="cuda")
    t_params = as_params([v.cuda() for v in values])
    t_opt = getattr(torch.optim, optim)(t_params, lr=t_lr, **kwargs)
    for step in range(num_steps):
        t_lr.fill_(lrs[step])
        for p, g in zip(t_params, grads[step]):
            p.grad = g.cuda()
        t_opt.step()

    f_lr = torch.tensor(lrs[0], dtype=lr_dtype, device="cuda")
    f_params = as_params([v.cuda() for v in values])
    static_grads = [torch.zeros_like(p) for p in f_params]
    for p, g in zip(f_params, static_grads):
        p.grad = g
    f_opt = getattr(fusedoptim, optim)(f_params, lr=f_lr, **kwargs)
    graph = _capture_step(f_opt, static_grads, grads[:2], before_step=lambda k: f_lr.fill_(lrs[k]))
    for step in range(2, num_steps):
        f_lr.fill_(lrs[step])
        for g, value in zip(static_grads, grads[step]):
            g.copy_(value)
        graph.replay()
    torch.cuda.synchronize()
    assert_fused_path(f_opt)
    assert_params_match(f_params, t_params)
    assert_states_match(f_opt, t_opt, f_params, t_params)
    _steps_without_host_sync(f_opt, f_params)


def _steps_without_host_sync(opt, params):
    """Three fused steps on fresh grads, the last two under torch's sync debug mode, which
    raises on any host sync (the first builds the plan, the state and the device tables); then
    every state is on the device."""
    for step in range(3):
        for p in params:
            p.grad = torch.randn_like(p)
        if step == 0:
            opt.step()
            continue
        torch.cuda.set_sync_debug_mode("error")
        try:
            opt.step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert_fused_path(opt)
    assert all(value.is_cuda for p in params for value in opt.state[p].values())


@pytest.mark.parametrize("optim,kwargs", DEVICE_STEP_CASES, ids=DEVICE_STEP_IDS)
def test_device_steps_make_no_host_sync(optim, kwargs):
    """After the first step (the plan, the state, the device tables), a step with device-side
    `step` (and 0-dim states) syncs with the host nowhere (torch's sync debug mode raises on
    any sync)."""
    params = as_params([v.cuda() for v in make_param_values([(4097,), (33,)], torch.float32, seed=16)])
    opt = getattr(fusedoptim, optim)(params, **kwargs)
    _steps_without_host_sync(opt, params)


@pytest.mark.parametrize(
    "optim,device_lr", [("Adam", False), ("Adam", True), ("Adagrad", False)], ids=["Adam", "Adam-device_lr", "Adagrad"]
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_grad_scaler_unscales_and_skips_in_the_kernels(dtype, optim, device_lr):
    """A fused=True optimizer under GradScaler with an inf injected on some steps: the same
    params, states, steps and scaler history as torch's fused one, with no host sync of
    found_inf; with a Tensor lr on the device as well (NOTE: [Device learning rates])."""
    shapes = [(4097,), (7,)]
    values = make_param_values(shapes, dtype, seed=12)
    targets = make_grad_values(shapes, torch.float32, num_steps=6, seed=1200)
    runs = []
    for cls in (getattr(torch.optim, optim), getattr(fusedoptim, optim)):
        params = [v.cuda().requires_grad_() for v in values]
        opt = cls(params, lr=torch.tensor(1e-2, device="cuda") if device_lr else 1e-2, fused=True)
        scaler = torch.amp.GradScaler("cuda", init_scale=2.0**12, growth_interval=2)
        scales = []
        for step in range(6):
            opt.zero_grad()
            loss = sum(0.5 * ((p.float() - t.cuda()) ** 2).sum() for p, t in zip(params, targets[step]))
            scaler.scale(loss).backward()
            if step in (1, 4):
                params[0].grad.view(-1)[step] = float("inf")
            scaler.step(opt)
            scaler.update()
            scales.append(scaler.get_scale())
        runs.append((opt, params, scales))
    (t_opt, t_params, t_scales), (f_opt, f_params, f_scales) = runs
    assert f_scales == t_scales
    assert_fused_path(f_opt)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-3, atol=1e-3)
    for pf, pt in zip(f_params, t_params):
        torch.testing.assert_close(pf, pt, **tol)
        assert f_opt.state[pf]["step"].item() == t_opt.state[pt]["step"].item() == 4
        assert f_opt.state[pf]["step"].is_cuda


@pytest.mark.parametrize("momentum", [0.0, 0.9], ids=["plain", "momentum"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_sgd_grad_scaler_unscales_and_skips_in_the_kernel(dtype, momentum):
    """fused=True SGD under GradScaler with an inf injected on steps 2 and 4 (not the first:
    torch's fused SGD would leave uninitialized momentum buffers): the same params, momentum
    buffers, grads and scaler history as torch's fused SGD; from the second step on (every
    momentum buffer holds values), the kernel unscales and skips, and scaler.step makes no
    host sync."""
    shapes = [(4097,), (7,)]
    values = make_param_values(shapes, dtype, seed=13)
    targets = make_grad_values(shapes, torch.float32, num_steps=6, seed=1300)
    runs = []
    for cls in (torch.optim.SGD, fusedoptim.SGD):
        params = [v.cuda().requires_grad_() for v in values]
        opt = cls(params, lr=1e-2, momentum=momentum, fused=True)
        scaler = torch.amp.GradScaler("cuda", init_scale=2.0**12, growth_interval=2)
        scales = []
        for step in range(6):
            opt.zero_grad()
            loss = sum(0.5 * ((p.float() - t.cuda()) ** 2).sum() for p, t in zip(params, targets[step]))
            scaler.scale(loss).backward()
            if step in (2, 4):
                params[0].grad.view(-1)[step] = float("inf")
            checks_sync = cls is fusedoptim.SGD and step >= 1
            torch.cuda.set_sync_debug_mode("error" if checks_sync else "default")
            try:
                scaler.step(opt)
            finally:
                torch.cuda.set_sync_debug_mode("default")
            scaler.update()
            scales.append(scaler.get_scale())
        runs.append((opt, params, scales))
    (t_opt, t_params, t_scales), (f_opt, f_params, f_scales) = runs
    assert f_scales == t_scales
    assert_fused_path(f_opt)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-3, atol=1e-3)
    for pf, pt in zip(f_params, t_params):
        torch.testing.assert_close(pf, pt, **tol)
        torch.testing.assert_close(pf.grad, pt.grad, **tol)
        if momentum:
            torch.testing.assert_close(f_opt.state[pf]["momentum_buffer"], t_opt.state[pt]["momentum_buffer"], **tol)


@pytest.mark.parametrize("norm_type", [2.0, 1.0, float("inf")], ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_clip_grad_norm_on_cuda_matches_torch_without_a_host_sync(dtype, norm_type):
    """fusedoptim.clip_grad_norm_ on CUDA grads: torch's norm and scaling, and no host sync
    (torch's sync debug mode raises on any)."""
    shapes = [(4097,), (33,), (7, 9)]
    values = make_param_values(shapes, dtype, seed=17)
    grads = make_grad_values(shapes, dtype, seed=1700)[0]
    norms = []
    for clip in (torch.nn.utils.clip_grad_norm_, fusedoptim.clip_grad_norm_):
        params = as_params([v.cuda() for v in values])
        for p, g in zip(params, grads):
            p.grad = g.cuda() * 10
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error" if clip is fusedoptim.clip_grad_norm_ else "default")
        try:
            norm = clip(params, 1.0, norm_type)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        norms.append((norm, [p.grad for p in params]))
    (t_norm, t_grads), (f_norm, f_grads) = norms
    assert f_norm.device == t_norm.device and f_norm.dtype == t_norm.dtype
    torch.testing.assert_close(f_norm, t_norm, rtol=0, atol=0)
    for gf, gt in zip(f_grads, t_grads):
        torch.testing.assert_close(gf, gt, rtol=0, atol=0)


# Issue 5's options on CUDA (NOTE: [Precision options on CUDA] in csrc/cuda/sweep.cuh).
OPTION_CASES = [
    (torch.bfloat16, dict(master_weights=True)),
    (torch.float16, dict(master_weights=True)),
    (torch.bfloat16, dict(state_dtype=torch.float32)),
    (torch.float32, dict(state_dtype=torch.bfloat16)),
    (torch.float32, dict(max_grad_norm=0.5)),
    (torch.float64, dict(max_grad_norm=0.5, norm_type=float("inf"))),
    (torch.bfloat16, dict(max_grad_norm=0.5, norm_type=1.0, master_weights=True)),
]


@pytest.mark.parametrize("dtype,options", OPTION_CASES, ids=[f"{d}-{o}" for d, o in OPTION_CASES])
@pytest.mark.parametrize("config", REPRESENTATIVE_CONFIGS, ids=config_ids(REPRESENTATIVE_CONFIGS))
def test_options_on_cuda_match_the_cpu_kernels(config, dtype, options):
    """master_weights, state_dtype and max_grad_norm: the CUDA kernels run the CPU kernels'
    rules on the same dtype pairs, so both devices agree to rounding (the grad norm's summation
    order differs, so the clip coefficient may differ in its last bits)."""
    if not _expects_fused(config):
        pytest.skip("this configuration takes the reference path on CUDA")
    if "max_grad_norm" in options and config.optim == "LAMB":
        pytest.skip("LAMB's max_grad_norm is Apex's (its own tests)")
    values = make_param_values(TAIL_SHAPES, dtype, seed=4)
    grads = make_grad_values(TAIL_SHAPES, dtype, seed=400)
    cpu_params = as_params(values)
    cpu_opt = fused_cls(config.optim)(cpu_params, **config.fused_kwargs(dtype), **options)
    run_steps(cpu_opt, cpu_params, grads)
    f_params = as_params([v.cuda() for v in values])
    f_opt = fused_cls(config.optim)(f_params, **_cuda_kwargs(config, config.fused_kwargs)(dtype), **options)
    run_steps(f_opt, f_params, [[g.cuda() for g in gs] for gs in grads])
    assert_fused_path(f_opt)
    tol = {torch.float32: 1e-5, torch.float64: 1e-12, torch.bfloat16: 1e-2, torch.float16: 2e-3}[dtype]
    for pc, pf in zip(cpu_params, f_params):
        torch.testing.assert_close(pf.detach().cpu(), pc.detach(), rtol=tol, atol=tol)
        for key, value in cpu_opt.state[pc].items():
            if torch.is_tensor(value) and value.dim() > 0:
                got = f_opt.state[pf][key]
                assert got.dtype == value.dtype and got.is_cuda, key
                state_tol = 1e-2 if value.element_size() == 2 else max(tol, 1e-5)  # a 16-bit rounding flip
                torch.testing.assert_close(got.cpu().double(), value.double(), rtol=state_tol, atol=state_tol)


@pytest.mark.parametrize("norm_type", [2.0, 1.0, float("inf"), 3.0], ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_max_grad_norm_on_cuda_equals_clip_then_torch_step(dtype, norm_type):
    """The clip coefficient folded into the CUDA kernels: torch's clip_grad_norm_ followed by its
    step, with the user's grads left as they were."""
    shapes = [(4097,), (33,), (16384 * 2 + 3,)]
    values = make_param_values(shapes, dtype, seed=13)
    grads = [[g.cuda() * 10 for g in gs] for gs in make_grad_values(shapes, dtype, seed=1300)]
    t_params, f_params = as_params([v.cuda() for v in values]), as_params([v.cuda() for v in values])
    t_opt = torch.optim.AdamW(t_params, lr=1e-2)
    f_opt = fusedoptim.AdamW(f_params, lr=1e-2, max_grad_norm=1.0, norm_type=norm_type)
    for gs in grads:
        for p, g in zip(t_params, gs):
            p.grad = g.clone()
        torch.nn.utils.clip_grad_norm_(t_params, 1.0, norm_type=norm_type)
        t_opt.step()
        for p, g in zip(f_params, gs):
            p.grad = g.clone()
        f_opt.step()
        for p, g in zip(f_params, gs):
            assert torch.equal(p.grad, g)
    assert_fused_path(f_opt)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-13)
    for pf, pt in zip(f_params, t_params):
        torch.testing.assert_close(pf, pt, **tol)


def test_max_grad_norm_and_device_steps_make_no_host_sync():
    """A fused=True AdamW step with max_grad_norm on a CUDA model: the norm, the coefficient and
    the update stay on the device (torch's sync debug mode raises on any sync)."""
    params = as_params([v.cuda() for v in make_param_values([(4097,), (33,)], torch.float32, seed=14)])
    opt = fusedoptim.AdamW(params, lr=1e-2, fused=True, max_grad_norm=0.5)
    _steps_without_host_sync(opt, params)


@pytest.mark.parametrize("options", [dict(max_grad_norm=0.5), dict(master_weights=True)], ids=str)
def test_captured_step_with_options_replays_like_eager(options):
    """max_grad_norm (the norm's kernels, torch's ops on the coefficient) and master weights under
    a CUDA graph: replays give what eager steps give."""
    dtype = torch.bfloat16 if options.get("master_weights") else torch.float32
    shapes = [(4097,), (33,), (16384 * 2 + 3,)]
    values = make_param_values(shapes, dtype, seed=15)
    grads = [[g.cuda() * 10 for g in gs] for gs in make_grad_values(shapes, dtype, num_steps=6, seed=1500)]
    e_params = as_params([v.cuda() for v in values])
    e_opt = fusedoptim.AdamW(e_params, lr=1e-2, capturable=True, **options)
    run_steps(e_opt, e_params, grads)

    c_params = as_params([v.cuda() for v in values])
    static_grads = [torch.zeros_like(p) for p in c_params]
    for p, g in zip(c_params, static_grads):
        p.grad = g
    c_opt = fusedoptim.AdamW(c_params, lr=1e-2, capturable=True, **options)
    graph = _capture_step(c_opt, static_grads, grads[:2])
    for step in range(2, 6):
        for g, value in zip(static_grads, grads[step]):
            g.copy_(value)
        graph.replay()
    torch.cuda.synchronize()
    assert_fused_path(c_opt)
    for pc, pe in zip(c_params, e_params):
        assert torch.equal(pc, pe)
        assert torch.equal(c_opt.state[pc]["exp_avg"], e_opt.state[pe]["exp_avg"])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_stochastic_rounding_on_cuda_is_unbiased(dtype):
    """p = 1 and g = -fraction * ulp: every result is one of the two neighbours of 1 + fraction
    ulp, the upper one a `fraction` of the time (6 sigma)."""
    n = 1 << 20
    ulp = torch.finfo(dtype).eps
    for fraction in (0.3, 0.75):
        p = torch.ones(n, dtype=dtype, device="cuda", requires_grad=True)
        p.grad = torch.full_like(p, -fraction * ulp)
        opt = fusedoptim.SGD([p], lr=1.0, stochastic_rounding=True)
        opt.step()
        assert_fused_path(opt)
        hi = torch.tensor(1.0 + ulp, dtype=dtype, device="cuda")
        assert bool(((p == 1.0) | (p == hi)).all())
        up = (p == hi).double().mean().item()
        assert abs(up - fraction) < 6 * (fraction * (1 - fraction) / n) ** 0.5, (fraction, up)


def test_stochastic_rounding_under_a_graph_draws_new_bits_each_replay():
    """The seed mixes a device-side counter the step advances, so a replayed graph rounds with
    new bits: the same starting params and grads round differently on two replays."""
    n = 1 << 16
    p = torch.ones(n, dtype=torch.bfloat16, device="cuda", requires_grad=True)
    p.grad = torch.full_like(p, -0.5 * torch.finfo(torch.bfloat16).eps)
    opt = fusedoptim.SGD([p], lr=1.0, stochastic_rounding=True)
    graph = _capture_step(opt)
    results = []
    for _ in range(2):
        with torch.no_grad():
            p.fill_(1.0)
        graph.replay()
        results.append(p.detach().clone())
    torch.cuda.synchronize()
    assert not torch.equal(results[0], results[1])
    for r in results:
        assert 0.4 < (r != 1.0).double().mean().item() < 0.6
