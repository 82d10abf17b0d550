"""stochastic_rounding=True (NOTE: [Stochastic rounding] in fusedoptim/optimizer.py): the fp32
result of a 16-bit param's update is stored as one of its two 16-bit neighbours, unbiased,
reproducible from torch.manual_seed."""

import math

import pytest
import torch

import fusedoptim
from helpers import fused_cls

DTYPES = [torch.bfloat16, torch.float16]
N = 1 << 20


def _neighbours(x, dtype):
    """The two 16-bit neighbours of fp32 values x (lo <= x <= hi)."""
    nearest = x.to(dtype)
    up = torch.nextafter(nearest, torch.full_like(nearest, math.inf))
    down = torch.nextafter(nearest, torch.full_like(nearest, -math.inf))
    lo = torch.where(nearest.float() <= x, nearest, down)
    hi = torch.where(nearest.float() >= x, nearest, up)
    return lo, hi


def _sgd_step(values, grads, dtype, seed, lr=1.0, **options):
    """One SGD step p - lr * g on 16-bit params, fp32 math; returns the stored params."""
    p = values.to(dtype).requires_grad_()
    opt = fusedoptim.SGD([p], lr=lr, stochastic_rounding=True, **options)
    p.grad = grads.to(dtype)
    torch.manual_seed(seed)
    opt.step()
    return p.detach()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_unbiased_and_always_a_neighbour(dtype, isa):
    # p = 1 and g = -fraction * ulp: every fp32 result lies `fraction` of an ulp above 1.
    ulp = torch.finfo(dtype).eps
    for fraction in (0.3, 0.75):
        values = torch.ones(N)
        grads = torch.full((N,), -fraction * ulp)
        x = values - grads
        stored = _sgd_step(values, grads, dtype, seed=1)
        lo, hi = _neighbours(x, dtype)
        assert bool(((stored == lo) | (stored == hi)).all())
        up = (stored == hi).double().mean().item()
        sigma = math.sqrt(fraction * (1 - fraction) / N)
        assert abs(up - fraction) < 6 * sigma, (fraction, up)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_mean_error_vanishes_on_random_values(dtype):
    g = torch.Generator().manual_seed(0)
    values = torch.randn(N, generator=g).to(dtype).float()
    grads = (torch.randn(N, generator=g) * 1e-3).to(dtype).float()
    x = values - grads * 0.37
    stored = _sgd_step(values, grads, dtype, seed=2, lr=0.37).float()
    lo, hi = _neighbours(x, dtype)
    assert bool(((stored == lo.float()) | (stored == hi.float())).all())
    gap = (hi.float() - lo.float()).double()
    err = ((stored.double() - x.double()) / torch.where(gap > 0, gap, torch.ones_like(gap)))
    # Per element the error is a Bernoulli in ulps with variance <= 1/4: the mean is ~N^-1/2.
    assert abs(err.mean().item()) < 6 * 0.5 / math.sqrt(N)
    # And it does round: a good share of the values is not the nearest neighbour.
    nearest = x.to(dtype).float()
    assert (stored != nearest).double().mean().item() > 0.1


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_reproducible_from_torch_seed_and_thread_count(dtype):
    values = torch.ones(300_000)
    grads = torch.full((300_000,), -0.5 * torch.finfo(dtype).eps)
    a = _sgd_step(values, grads, dtype, seed=7)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        b = _sgd_step(values, grads, dtype, seed=7)
    finally:
        torch.set_num_threads(threads)
    c = _sgd_step(values, grads, dtype, seed=8)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_isas_agree():
    values = torch.ones(5000)
    grads = torch.full((5000,), -0.5 * torch.finfo(torch.bfloat16).eps)
    results = []
    previous = fusedoptim.cpu_capability()
    try:
        for name in fusedoptim.available_cpu_capabilities():
            fusedoptim.set_cpu_capability(name)
            results.append(_sgd_step(values, grads, torch.bfloat16, seed=3))
    finally:
        fusedoptim.set_cpu_capability(previous)
    assert all(torch.equal(results[0], r) for r in results[1:])


def _wide_values(dtype, n, generator):
    """fp32 values over the dtype's whole range (subnormals, the fp16 limit 65504 and past it),
    with signed zeros, infinities and NaN at scattered positions."""
    info = torch.finfo(dtype)
    low, high = math.floor(math.log2(info.smallest_normal)) - 10, math.ceil(math.log2(info.max)) + 1
    exponents = torch.randint(low, high, (n,), generator=generator).float()
    values = torch.randn(n, generator=generator) * torch.exp2(exponents)
    specials = torch.tensor([0.0, -0.0, math.inf, -math.inf, math.nan, 65504.0, -65504.0, 65519.0, 65520.0])
    values[7::97] = specials.repeat(n // 97 // len(specials) + 1)[: len(values[7::97])]
    return values


@pytest.mark.parametrize("optim, options", [("SGD", dict(lr=0.37, momentum=0.9)), ("AdamW", dict(lr=0.37))])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_vector_isas_round_like_scalar(dtype, optim, options):
    """The SIMD hash and rounding (cpu/vec.h) give the scalar path's bits (dtype.h), element
    for element: every vector-body and tail position, values over the whole range."""
    g = torch.Generator().manual_seed(11)
    sizes = [4097, 1, 7, 8, 9, 15, 16, 17, 31, 33, 65537]
    values = [_wide_values(dtype, n, g).to(dtype) for n in sizes]
    grads = [[_wide_values(dtype, n, g).to(dtype) for n in sizes] for _ in range(2)]
    results = {}
    previous = fusedoptim.cpu_capability()
    try:
        for name in fusedoptim.available_cpu_capabilities():
            fusedoptim.set_cpu_capability(name)
            params = [v.clone().requires_grad_() for v in values]
            opt = fused_cls(optim)(params, stochastic_rounding=True, **options)
            torch.manual_seed(5)
            for step_grads in grads:  # the second step rounds with another seed
                for p, grad in zip(params, step_grads):
                    p.grad = grad.clone()
                opt.step()
            results[name] = torch.cat([p.detach().view(torch.int16) for p in params])
    finally:
        fusedoptim.set_cpu_capability(previous)
    for name, bits in results.items():
        assert torch.equal(bits, results["scalar"]), name


def test_small_updates_survive_where_round_to_nearest_stalls():
    """AdamW with positive grads: every step moves each param down by ~lr = 1e-4, far below
    half a bf16 ulp at 1 (2^-9). Round to nearest never moves the params; stochastic rounding
    follows the fp32 run on average (50 steps: a drift of ~5e-3)."""
    g = torch.Generator().manual_seed(0)
    start = torch.ones(20_000)
    grads = [(torch.rand(20_000, generator=g) + 0.5).to(torch.bfloat16).float() for _ in range(50)]
    runs = {}
    for name, dtype, options in (("fp32", torch.float32, {}), ("nearest", torch.bfloat16, {}),
                                 ("stochastic", torch.bfloat16, {"stochastic_rounding": True})):
        torch.manual_seed(0)
        p = start.to(dtype, copy=True).requires_grad_()
        opt = fusedoptim.AdamW([p], lr=1e-4, weight_decay=0.0, **options)
        for grad in grads:
            p.grad = grad.to(dtype)
            opt.step()
        runs[name] = p.detach().float()
    assert torch.equal(runs["nearest"], start)
    drift = (runs["fp32"] - start).mean().item()
    assert drift < -4e-3
    # Per element the stored value is within an ulp (2^-8) of its fp32 path; averaged over
    # 20,000 elements the noise is ~1e-5.
    assert abs((runs["stochastic"] - start).mean().item() - drift) < 0.05 * abs(drift)


def test_fp32_params_unaffected():
    values = torch.randn(100)
    a = values.clone().requires_grad_()
    b = values.clone().requires_grad_()
    oa, ob = fusedoptim.Adam([a], lr=0.1), fusedoptim.Adam([b], lr=0.1, stochastic_rounding=True)
    a.grad = b.grad = torch.randn(100)
    oa.step()
    ob.step()
    assert torch.equal(a, b)


@pytest.mark.parametrize("kwargs, message", [
    (dict(stochastic_rounding=1), "Invalid stochastic_rounding value: 1"),
    (dict(stochastic_rounding=True, master_weights=True), "stochastic_rounding and master_weights=True cannot"),
    (dict(stochastic_rounding=True, state_dtype=torch.float32), "not supported with stochastic_rounding=True"),
    (dict(stochastic_rounding=True, differentiable=True), "stochastic_rounding is not supported with differentiable"),
])
@pytest.mark.parametrize("optim", ["SGD", "Adam", "LAMB"])
def test_invalid_options_raise(optim, kwargs, message):
    with pytest.raises(ValueError, match=message):
        fused_cls(optim)([torch.zeros(3, requires_grad=True)], lr=0.1, **kwargs)


@pytest.mark.filterwarnings("ignore::fusedoptim.ReferencePathWarning")
def test_reference_path_params_raise():
    p = torch.nn.Parameter(torch.ones(4, 3, dtype=torch.bfloat16).t())
    opt = fusedoptim.SGD([p], lr=0.1, stochastic_rounding=True)
    p.grad = torch.ones_like(p)
    with pytest.raises(ValueError, match="stochastic_rounding is not supported for param_groups"):
        opt.step()
