"""fusedoptim.LBFGS against torch.optim.LBFGS, side by side in one process.

Each test runs both optimizers from the same params on the same closure: a smooth,
non-separable function of a few hundred elements over several tensors (quadratic + quartic +
a coupling between neighbours), well enough conditioned that fp64 rounding differences (our
dots are not BLAS's) stay far below the 1e-10 tolerance over several steps.
"""

import copy
import importlib
import inspect
import io
import math
import random

import pytest
import torch

import fusedoptim
import fusedoptim.lbfgs
from helpers import assert_raises_like_torch

torch_lbfgs_module = importlib.import_module("torch.optim.lbfgs")

SHAPES = [(40,), (7, 5), (0,), (), (3, 4, 6), (97,), (1,), (12, 11)]
FP64_TOL = dict(rtol=1e-10, atol=1e-12)
FP32_TOL = dict(rtol=2e-4, atol=1e-5)
STATE_KEYS = {"func_evals", "n_iter", "d", "t", "old_dirs", "old_stps", "ro", "H_diag", "prev_flat_grad", "prev_loss", "al"}


def initial_values(dtype, shapes=SHAPES, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.complex128 if dtype.is_complex else torch.float64
    return [torch.randn(s, generator=g, dtype=base).to(dtype) for s in shapes]


def make_params(values):
    return [v.clone().requires_grad_() for v in values]


def as_real_flat(p):
    return (torch.view_as_real(p) if p.is_complex() else p).reshape(-1)


def objective(params):
    """sum_k (k+1)/4 * [x^T A x / 2 + x^4 / 4] with A tridiagonal (diagonal 2..4, off-diagonal 0.5)."""
    x = torch.cat([as_real_flat(p) for p in params])
    n = x.numel()
    curvature = 2.0 + 2.0 * torch.arange(n, dtype=x.dtype) / max(n, 1)
    weight = torch.cat([torch.full((as_real_flat(p).numel(),), (k + 1) / 4, dtype=x.dtype) for k, p in enumerate(params)])
    quadratic = 0.5 * (curvature * x * x).sum() + 0.5 * (x[1:] * x[:-1]).sum()
    return (weight * (0.25 * x**4)).sum() + quadratic * 1.5 - x.sum() * 0.3


def make_closure(opt, params, counter=None):
    def closure():
        if counter is not None:
            counter[0] += 1
        opt.zero_grad()
        loss = objective(params)
        loss.backward()
        return loss

    return closure


def run(cls, values, steps, **kwargs):
    params = make_params(values)
    opt = cls(params, **kwargs)
    closure = make_closure(opt, params)
    losses = [opt.step(closure) for _ in range(steps)]
    return opt, params, losses


def assert_values_close(actual, expected, path, tol):
    if isinstance(expected, torch.Tensor):
        assert isinstance(actual, torch.Tensor), f"{path}: {type(actual)} is not a Tensor"
        assert actual.dtype == expected.dtype and actual.shape == expected.shape, (path, actual, expected)
        torch.testing.assert_close(actual, expected, msg=lambda m: f"{path}: {m}", **tol)
    elif isinstance(expected, list):
        assert isinstance(actual, list) and len(actual) == len(expected), (path, len(actual), len(expected))
        for i, (a, e) in enumerate(zip(actual, expected)):
            assert_values_close(a, e, f"{path}[{i}]", tol)
    elif isinstance(expected, float):
        assert type(actual) is float, (path, actual)
        torch.testing.assert_close(actual, expected, msg=lambda m: f"{path}: {m}", **tol)
    else:
        assert type(actual) is type(expected) and actual == expected, (path, actual, expected)


def assert_lbfgs_match(fused, torch_opt, fused_params, torch_params, tol=FP64_TOL):
    """Same params, and the same state: keys, types (tensor or number, list lengths) and values."""
    for i, (pf, pt) in enumerate(zip(fused_params, torch_params)):
        torch.testing.assert_close(pf.detach(), pt.detach(), msg=lambda m: f"param {i}: {m}", **tol)
    assert len(fused.state) == len(torch_opt.state) == 1
    state_f, state_t = fused.state[fused_params[0]], torch_opt.state[torch_params[0]]
    assert set(state_f) == set(state_t), (sorted(state_f), sorted(state_t))
    for key, expected in state_t.items():
        assert_values_close(state_f[key], expected, f"state[{key!r}]", tol)


def forbid_torch_passes(opt):
    """Make torch's per-param helpers raise on this optimizer: the step must not use them."""

    def forbidden(*args, **kwargs):
        raise AssertionError("the fused step used torch.optim.LBFGS's per-param helpers")

    for name in ("_gather_flat_grad", "_add_grad", "_clone_param", "_set_param", "_directional_evaluate"):
        setattr(opt, name, forbidden)


# ---------------------------------------------------------------------------------- parity


@pytest.mark.parametrize("line_search_fn", [None, "strong_wolfe"])
def test_fp64_iterates_match_torch(line_search_fn):
    kwargs = dict(line_search_fn=line_search_fn, max_iter=8, lr=1 if line_search_fn else 0.3)
    values = initial_values(torch.float64)
    params_t = make_params(values)
    params_f = make_params(values)
    torch_opt = torch.optim.LBFGS(params_t, **kwargs)
    fused = fusedoptim.LBFGS(params_f, **kwargs)
    forbid_torch_passes(fused)
    closure_t, closure_f = make_closure(torch_opt, params_t), make_closure(fused, params_f)
    for _ in range(4):
        loss_t = torch_opt.step(closure_t)
        loss_f = fused.step(closure_f)
        torch.testing.assert_close(loss_f, loss_t, **FP64_TOL)
        assert_lbfgs_match(fused, torch_opt, params_f, params_t)
    state = fused.state[params_f[0]]
    assert state["n_iter"] > 8 and len(state["old_dirs"]) > 4 and set(state) == STATE_KEYS
    # the problem is not solved yet, so every step did work
    assert objective(params_f).item() < objective(make_params(values)).item()


@pytest.mark.parametrize("line_search_fn", [None, "strong_wolfe"])
def test_history_wraps_around(line_search_fn):
    kwargs = dict(line_search_fn=line_search_fn, history_size=3, max_iter=5, lr=1 if line_search_fn else 0.3)
    values = initial_values(torch.float64)
    torch_opt, params_t, _ = run(torch.optim.LBFGS, values, 4, **kwargs)
    fused, params_f, _ = run(fusedoptim.LBFGS, values, 4, **kwargs)
    assert fused.state[params_f[0]]["n_iter"] > 3 * 3
    assert len(fused.state[params_f[0]]["old_dirs"]) == 3
    assert_lbfgs_match(fused, torch_opt, params_f, params_t)


@pytest.mark.parametrize("line_search_fn", [None, "strong_wolfe"])
@pytest.mark.parametrize("max_eval", [2, 7])  # 2: the line search itself runs out of evaluations
def test_max_eval_ends_the_step(line_search_fn, max_eval):
    kwargs = dict(line_search_fn=line_search_fn, max_iter=50, max_eval=max_eval, lr=1 if line_search_fn else 0.3)
    values = initial_values(torch.float64)
    torch_opt, params_t, _ = run(torch.optim.LBFGS, values, 2, **kwargs)
    fused, params_f, _ = run(fusedoptim.LBFGS, values, 2, **kwargs)
    assert torch_opt.state[params_t[0]]["func_evals"] <= 2 * 8
    assert_lbfgs_match(fused, torch_opt, params_f, params_t)


@pytest.mark.parametrize("line_search_fn", [None, "strong_wolfe"])
@pytest.mark.parametrize(
    "tolerances",
    [
        dict(tolerance_grad=1e3),  # optimal at the first evaluation: the step returns at once
        dict(tolerance_grad=0.5),  # optimal after some iterations
        dict(tolerance_change=1e-2),  # lack of progress (loss change or step size)
        dict(tolerance_change=1e2),  # the loss changed less than that in the first iteration
        dict(tolerance_change=1e5),  # gtd above -tolerance_change: break before the line search
    ],
    ids=["grad-at-start", "grad", "change", "change-after-one", "gtd"],
)
def test_tolerance_exits(line_search_fn, tolerances):
    kwargs = dict(line_search_fn=line_search_fn, max_iter=40, lr=1 if line_search_fn else 0.3, **tolerances)
    values = initial_values(torch.float64)
    torch_opt, params_t, losses_t = run(torch.optim.LBFGS, values, 2, **kwargs)
    fused, params_f, losses_f = run(fusedoptim.LBFGS, values, 2, **kwargs)
    assert torch_opt.state[params_t[0]]["n_iter"] < 2 * 40  # a tolerance, not max_iter, ended the steps
    assert [x.item() for x in losses_f] == pytest.approx([x.item() for x in losses_t], rel=1e-10)
    assert_lbfgs_match(fused, torch_opt, params_f, params_t)


@pytest.mark.parametrize("dtype", [torch.float32, torch.complex64, torch.complex128])
@pytest.mark.parametrize("line_search_fn", [None, "strong_wolfe"])
def test_other_dtypes(dtype, line_search_fn):
    # torch's LBFGS views complex params as real; so do we. In 32 bits, stop well before the
    # loss is solved to fp32 precision: there the line search works on rounding noise and
    # torch diverges from itself as much under a 1e-7 perturbation of the start.
    real = dtype.to_real() if dtype.is_complex else dtype
    steps = 3 if real == torch.float64 else 2
    kwargs = dict(line_search_fn=line_search_fn, max_iter=5, lr=1 if line_search_fn else 0.3)
    values = initial_values(dtype)
    torch_opt, params_t, _ = run(torch.optim.LBFGS, values, steps, **kwargs)
    fused = fusedoptim.LBFGS(make_params(values), **kwargs)
    forbid_torch_passes(fused)
    params_f = fused.param_groups[0]["params"]
    closure = make_closure(fused, params_f)
    for _ in range(steps):
        fused.step(closure)
    assert_lbfgs_match(fused, torch_opt, params_f, params_t, tol=FP64_TOL if real == torch.float64 else FP32_TOL)
    assert fused.state[params_f[0]]["d"].dtype == real


def test_failed_line_searches_return_their_start():
    # The loss jumps up wherever the params move (the jump has no gradient): every line search
    # ends at t=0 with the gradient it started from, and tolerance_change < 0 keeps the step
    # iterating from that gradient, which must still be intact.
    values = initial_values(torch.float64)

    def run_with(cls):
        params = make_params(values)
        start = torch.cat([as_real_flat(p).detach() for p in params])
        opt = cls(params, line_search_fn="strong_wolfe", max_iter=6, max_eval=40, tolerance_change=-1.0)

        def closure():
            opt.zero_grad()
            loss = objective(params)
            loss.backward()
            moved = (torch.cat([as_real_flat(p).detach() for p in params]) - start).abs().max()
            return loss + 1e6 * moved

        opt.step(closure)
        return opt, params

    torch_opt, params_t = run_with(torch.optim.LBFGS)
    fused, params_f = run_with(fusedoptim.LBFGS)
    state = torch_opt.state[params_t[0]]
    assert state["t"] == 0 and state["n_iter"] == 6
    assert_lbfgs_match(fused, torch_opt, params_f, params_t)


def _line_search_cases():
    """(a, b, c, w, t0, max_ls) for phi(t) = -a t + b t^2 + c sin(w t): seeded random ones, and
    ones whose zoom moves a trial away from a bracket end (`insuf_progress`)."""
    rng = random.Random(0)
    cases = [
        (1.7906482754516133, 1.9917238527265462, 0.11455323060111933, 8.144514614114927, 5.0, 3),
        (1.3125773840612294, 0.12861513111071873, 1.5461759169154412, 0.7720982033592079, 30.0, 3),
        (1.633581172082398, 1.858023976359437, 0.042816822545000965, 16.894131330621523, 30.0, 6),
        (0.951143616285612, 0.6699097693043482, 0.07878436670586475, 11.33816976061913, 0.1, 6),  # near the top end
    ]
    while len(cases) < 40:
        a, b, c, w = rng.uniform(0.5, 2), rng.uniform(0.01, 2), rng.uniform(0, 3), rng.uniform(0.5, 20)
        if -a + c * w < 0:  # a descent direction
            cases.append((a, b, c, w, rng.choice([0.1, 1.0, 5.0, 30.0]), rng.choice([3, 6, 25])))
    return cases


@pytest.mark.skipif(not hasattr(torch_lbfgs_module, "_strong_wolfe"), reason="torch's line search moved")
def test_line_search_matches_torchs():
    # Our port on 1-D functions (a 1-element flat vector, d = [1]) against torch's own, value for value.
    direction = torch.ones(1, dtype=torch.float64)
    for a, b, c, w, t0, max_ls in _line_search_cases():
        phi = lambda t: -a * t + b * t * t + c * math.sin(w * t)
        slope = lambda t: torch.tensor([-a + 2 * b * t + c * w * math.cos(w * t)], dtype=torch.float64)
        g0 = slope(0.0)
        expected = torch_lbfgs_module._strong_wolfe(
            lambda x, t, d: (phi(float(t)), slope(float(t))), None, t0, direction, phi(0.0), g0, g0.dot(direction),
            max_ls=max_ls,
        )

        def evaluate(t):
            g = slope(float(t))
            return phi(float(t)), fusedoptim.lbfgs._FlatGrad(g, g.abs().max()), g.dot(direction)

        f, g, t, evals = fusedoptim.lbfgs._strong_wolfe(
            evaluate, t0, direction.abs().max(), phi(0.0), fusedoptim.lbfgs._FlatGrad(g0, g0.abs().max()),
            g0.dot(direction), max_ls=max_ls,
        )
        assert (f, float(t), evals) == (expected[0], float(expected[2]), expected[3]), (a, b, c, w, t0, max_ls)
        assert torch.equal(g.vec, expected[1])


@pytest.mark.parametrize("line_search_fn", [None, "strong_wolfe"])
def test_old_state_tensors_change_as_torchs_do(line_search_fn):
    # torch never writes a state tensor after the step that made it, except prev_flat_grad
    # (copied into): references a user keeps must see the same.
    values = initial_values(torch.float64)

    def changes(cls):
        params = make_params(values)
        opt = cls(params, line_search_fn=line_search_fn, max_iter=4, history_size=3)
        closure = make_closure(opt, params)
        opt.step(closure)
        state = opt.state[params[0]]
        kept = [state["d"], state["prev_flat_grad"], state["H_diag"], *state["old_dirs"], *state["old_stps"], *state["ro"]]
        kept += [a for a in state["al"] if a is not None]
        before = [t.clone() for t in kept]
        opt.step(closure)
        return [not torch.equal(t, b) for t, b in zip(kept, before)]

    assert changes(fusedoptim.LBFGS) == changes(torch.optim.LBFGS)


def test_fp64_result_does_not_depend_on_the_number_of_threads():
    # Over 32,768 elements the passes run in parallel; reductions go in a fixed order.
    values = initial_values(torch.float64, shapes=[(40_000,), (30_000,), (77,)])
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, max(2, threads)):
            torch.set_num_threads(n)
            opt, params, _ = run(fusedoptim.LBFGS, values, 1, line_search_fn="strong_wolfe", max_iter=6)
            results.append([p.detach().clone() for p in params] + [opt.state[params[0]]["d"]])
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(*results):
        assert torch.equal(a, b)
    torch_opt, params_t, _ = run(torch.optim.LBFGS, values, 1, line_search_fn="strong_wolfe", max_iter=6)
    for a, b in zip(results[0], params_t):
        torch.testing.assert_close(a, b.detach(), **FP64_TOL)


def test_every_cpu_capability_gives_the_same_bits(isa):
    # The baseline and AVX2 builds of the passes keep the same lanes in the same order.
    values = initial_values(torch.float32, shapes=[(40_001,), (9,), (24_000,)])
    opt, params, _ = run(fusedoptim.LBFGS, values, 2, line_search_fn="strong_wolfe", max_iter=5)
    fusedoptim.set_cpu_capability("scalar")
    reference, params_ref, _ = run(fusedoptim.LBFGS, values, 2, line_search_fn="strong_wolfe", max_iter=5)
    for a, b in zip(params + [opt.state[params[0]]["d"]], params_ref + [reference.state[params_ref[0]]["d"]]):
        assert torch.equal(a, b)


def test_tensor_lr():
    values = initial_values(torch.float64)
    torch_opt, params_t, _ = run(torch.optim.LBFGS, values, 2, lr=torch.tensor([0.5], dtype=torch.float64), max_iter=5)
    fused, params_f, _ = run(fusedoptim.LBFGS, values, 2, lr=torch.tensor([0.5], dtype=torch.float64), max_iter=5)
    assert_lbfgs_match(fused, torch_opt, params_f, params_t)


def test_params_without_grad_and_sparse_grads():
    # A param the closure doesn't use has no grad (zeros in the flat gradient); a sparse grad
    # goes through torch's own gather. Both must give torch's iterates.
    values = initial_values(torch.float64, shapes=[(20,), (6, 3), (9,)])

    def run_with(cls):
        used, unused = make_params(values[:2]), make_params(values[2:])
        embedding = torch.nn.Embedding(6, 3, sparse=True, dtype=torch.float64)
        embedding.weight.data.copy_(values[1])
        params = [used[0], embedding.weight] + unused
        opt = cls(params, max_iter=5)

        def closure():
            opt.zero_grad()
            rows = embedding(torch.tensor([0, 2, 5, 2]))
            loss = objective([used[0], rows])
            loss.backward()
            return loss

        for _ in range(2):
            opt.step(closure)
        return opt, params

    torch_opt, params_t = run_with(torch.optim.LBFGS)
    fused, params_f = run_with(fusedoptim.LBFGS)
    assert params_f[1].grad.is_sparse and params_f[2].grad is None
    assert_lbfgs_match(fused, torch_opt, params_f, params_t)


@pytest.mark.parametrize("line_search_fn", [None, "strong_wolfe"])
def test_params_are_bumped_like_torch(line_search_fn):
    # In-place updates bump the version counter, so autograd notices stale saved tensors.
    values = initial_values(torch.float64)
    fused, params_f, _ = run(fusedoptim.LBFGS, values, 1, line_search_fn=line_search_fn, max_iter=3)
    torch_opt, params_t, _ = run(torch.optim.LBFGS, values, 1, line_search_fn=line_search_fn, max_iter=3)
    assert all(pf._version > 0 for pf in params_f)
    assert all(pt._version > 0 for pt in params_t)


@pytest.mark.parametrize(
    "make_values",
    [
        lambda: initial_values(torch.bfloat16),  # no fused kernel for 16-bit params
        lambda: initial_values(torch.float64)[:2] + initial_values(torch.float32)[2:],  # mixed dtypes
    ],
    ids=["bfloat16", "mixed-dtypes"],
)
def test_unsupported_params_run_torchs_step(make_values):
    values = make_values()
    torch_opt, params_t, losses_t = run(torch.optim.LBFGS, values, 2, max_iter=4, line_search_fn="strong_wolfe")
    fused, params_f, losses_f = run(fusedoptim.LBFGS, values, 2, max_iter=4, line_search_fn="strong_wolfe")
    for pf, pt in zip(params_f, params_t):
        assert torch.equal(pf, pt)  # torch's own code: bit for bit
    assert [x.item() for x in losses_f] == [x.item() for x in losses_t]


def test_non_contiguous_params_raise_torchs_error():
    # Their grads have the params' strides, which torch's grad.view(-1) rejects.
    values = [v.t() if v.dim() == 2 else v for v in initial_values(torch.float64)]
    assert not all(v.is_contiguous() for v in values)
    assert_raises_like_torch(lambda cls: run(cls, values, 1, max_iter=4), "LBFGS")


@pytest.mark.filterwarnings("ignore:optimizer contains a parameter group with duplicate parameters")
def test_duplicate_params_run_torchs_step():
    values = initial_values(torch.float64)

    def run_with(cls):
        params = make_params(values)
        opt = cls(params + params[:1], max_iter=4)
        closure = make_closure(opt, params)
        for _ in range(2):
            opt.step(closure)
        return params

    for pf, pt in zip(run_with(fusedoptim.LBFGS), run_with(torch.optim.LBFGS)):
        assert torch.equal(pf, pt)


# ------------------------------------------------------------------------------ state_dict


def saved_and_loaded(state_dict):
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("line_search_fn", [None, "strong_wolfe"])
@pytest.mark.parametrize("direction", ["torch-to-fused", "fused-to-torch"])
def test_state_dict_loads_both_ways_and_continues(direction, line_search_fn):
    kwargs = dict(line_search_fn=line_search_fn, max_iter=5, history_size=4, lr=1 if line_search_fn else 0.3)
    values = initial_values(torch.float64)
    source_cls, target_cls = (
        (torch.optim.LBFGS, fusedoptim.LBFGS) if direction == "torch-to-fused" else (fusedoptim.LBFGS, torch.optim.LBFGS)
    )
    # the reference: torch for all 4 steps
    reference, params_ref, _ = run(torch.optim.LBFGS, values, 4, **kwargs)

    source, params_source, _ = run(source_cls, values, 2, **kwargs)
    state_dict = saved_and_loaded(source.state_dict())
    params = make_params([p.detach() for p in params_source])
    target = target_cls(params, **kwargs)
    target.load_state_dict(state_dict)
    assert set(target.state[params[0]]) == STATE_KEYS
    closure = make_closure(target, params)
    for _ in range(2):
        target.step(closure)
    assert_lbfgs_match(target, reference, params, params_ref)


def test_state_dict_has_torchs_format():
    values = initial_values(torch.float64)
    torch_opt, _, _ = run(torch.optim.LBFGS, values, 2, max_iter=5, history_size=3)
    fused, _, _ = run(fusedoptim.LBFGS, values, 2, max_iter=5, history_size=3)
    sd_t, sd_f = torch_opt.state_dict(), fused.state_dict()
    assert sd_f["param_groups"] == sd_t["param_groups"]
    assert list(sd_f["state"]) == list(sd_t["state"]) == [0]
    for key, expected in sd_t["state"][0].items():
        assert_values_close(sd_f["state"][0][key], expected, key, FP64_TOL)
    # the al list keeps torch's length (history_size) and its unfilled entries
    assert len(sd_f["state"][0]["al"]) == 3


def test_deepcopy_and_load_into_a_fresh_fused_optimizer():
    values = initial_values(torch.float64)
    fused, params, _ = run(fusedoptim.LBFGS, values, 2, max_iter=4)
    twin_params = make_params([p.detach() for p in params])
    twin = fusedoptim.LBFGS(twin_params, max_iter=4)
    twin.load_state_dict(copy.deepcopy(fused.state_dict()))
    fused.step(make_closure(fused, params))
    twin.step(make_closure(twin, twin_params))
    assert_lbfgs_match(twin, fused, twin_params, params, tol=dict(rtol=0, atol=0))


# ------------------------------------------------------------------------ interface, errors


def test_interface_is_torchs():
    assert inspect.signature(fusedoptim.LBFGS) == inspect.signature(torch.optim.LBFGS)
    assert inspect.signature(fusedoptim.LBFGS.step) == inspect.signature(torch.optim.LBFGS.step)
    params = make_params(initial_values(torch.float64))
    fused = fusedoptim.LBFGS(params)
    assert isinstance(fused, torch.optim.LBFGS)
    assert fused.defaults == torch.optim.LBFGS(make_params(initial_values(torch.float64))).defaults
    assert fused.defaults["max_eval"] == 25 and fusedoptim.LBFGS(params, max_iter=7).defaults["max_eval"] == 8
    assert "LBFGS" in fusedoptim.__all__


@pytest.mark.parametrize(
    "make",
    [
        lambda cls: cls([torch.zeros(3, requires_grad=True)], lr=-1.0),
        lambda cls: cls([torch.zeros(3, requires_grad=True)], lr=torch.tensor([1.0, 2.0])),
        lambda cls: cls([{"params": [torch.zeros(3, requires_grad=True)]}, {"params": [torch.zeros(2, requires_grad=True)]}]),
        lambda cls: cls([]),
        lambda cls: cls(torch.zeros(3, requires_grad=True)),
    ],
    ids=["negative-lr", "tensor-lr-2-elements", "two-groups", "no-params", "a-tensor"],
)
def test_constructor_errors_are_torchs(make):
    assert_raises_like_torch(make, "LBFGS")


@pytest.mark.parametrize("call", [lambda opt: opt.step(), lambda opt: opt.step(None)], ids=["no-argument", "None"])
def test_step_without_closure_raises_torchs_error(call):
    def make(cls):
        call(cls([torch.zeros(3, requires_grad=True)]))

    assert_raises_like_torch(make, "LBFGS")


def test_added_param_group_raises_torchs_error():
    def make(cls):
        opt = cls([torch.zeros(3, requires_grad=True)])
        opt.add_param_group({"params": [torch.zeros(2, requires_grad=True)]})
        opt.step(lambda: 0.0)

    assert_raises_like_torch(make, "LBFGS")


def test_bad_line_search_fn_raises_before_anything_changes():
    # torch raises the same error in the first iteration, after evaluating the closure
    values = initial_values(torch.float64)
    params_t = make_params(values)
    torch_opt = torch.optim.LBFGS(params_t, line_search_fn="backtracking")
    with pytest.raises(RuntimeError) as expected:
        torch_opt.step(make_closure(torch_opt, params_t))

    params = make_params(values)
    fused = fusedoptim.LBFGS(params, line_search_fn="backtracking")
    calls = [0]
    with pytest.raises(RuntimeError) as raised:
        fused.step(make_closure(fused, params, calls))
    assert str(raised.value) == str(expected.value) == "only 'strong_wolfe' is supported"
    assert calls == [0] and len(fused.state) == 0
    for p, v in zip(params, values):
        assert torch.equal(p.detach(), v) and p.grad is None


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_step_hooks_run_once(dtype):
    # bfloat16: the fallback calls torch's step without its hook wrapper
    torch.optim.LBFGS([torch.zeros(1, requires_grad=True)])  # makes torch hook its own step
    params = make_params(initial_values(dtype))
    fused = fusedoptim.LBFGS(params, max_iter=2)
    calls = []
    fused.register_step_pre_hook(lambda *args: calls.append("pre"))
    fused.register_step_post_hook(lambda *args: calls.append("post"))
    fused.step(make_closure(fused, params))
    assert calls == ["pre", "post"]


def test_closure_runs_with_grad_enabled_and_loss_is_returned():
    values = initial_values(torch.float64)
    params = make_params(values)
    fused = fusedoptim.LBFGS(params, max_iter=3, line_search_fn="strong_wolfe")
    grad_modes = []

    def closure():
        grad_modes.append(torch.is_grad_enabled())
        fused.zero_grad()
        loss = objective(params)
        loss.backward()
        return loss

    with torch.no_grad():
        loss = fused.step(closure)
    assert all(grad_modes) and len(grad_modes) == fused.state[params[0]]["func_evals"]
    assert loss.item() == pytest.approx(objective(make_params(values)).item(), rel=1e-12)
