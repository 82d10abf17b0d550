"""fusedoptim.clip_grad_norm_ against torch.nn.utils.clip_grad_norm_: the returned norm (value,
dtype, device), the clipped grads, the errors and edge cases (NOTE: [Fused grad norms] in
fusedoptim/clip.py says which rounding differences are expected and why)."""

import math
import warnings

import pytest
import torch

import fusedoptim

TAIL_SIZES = [1, 7, 8, 9, 15, 16, 17, 33, 4097, 65537]
NORM_TYPES = [2.0, 1.0, float("inf"), 3.0, 0.5]
# How far our total norm may be from torch's, relative: fp64 differs in summation order only;
# torch sums fp32 in fp32 (its p-norms other than 1, 2, inf lose ~1e-5 on 65537 elements) and
# rounds every 16-bit tensor's norm to 16 bits, where we round the exact sum once.
NORM_RTOL = {torch.float64: 1e-13, torch.float32: 1e-5, torch.bfloat16: 2 ** -6, torch.float16: 2 ** -9}
# How far our total norm may be from the exact norm of the same values: one rounding to the
# result dtype (fp64: the double sum's own error).
EXACT_RTOL = {torch.float64: 1e-14, torch.float32: 2 ** -24, torch.bfloat16: 2 ** -8, torch.float16: 2 ** -11}


def _params(sizes, dtype, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    params = []
    for n in sizes:
        p = torch.zeros(n, dtype=dtype, requires_grad=True)
        p.grad = (torch.randn(n, generator=g, dtype=torch.float64) * scale).to(dtype)
        params.append(p)
    return params


def _clone(params):
    out = []
    for p in params:
        q = p.detach().clone().requires_grad_(True)
        q.grad = None if p.grad is None else p.grad.clone()
        out.append(q)
    return out


def _clip_both(params, max_norm, **kwargs):
    ours, theirs = _clone(params), _clone(params)
    a = fusedoptim.clip_grad_norm_(ours, max_norm, **kwargs)
    b = torch.nn.utils.clip_grad_norm_(theirs, max_norm, **kwargs)
    return a, b, ours, theirs


def _exact_norm(params, norm_type):
    flat = torch.cat([p.grad.double().reshape(-1) for p in params if p.grad is not None])
    return torch.linalg.vector_norm(flat, norm_type).item()


@pytest.mark.parametrize("norm_type", NORM_TYPES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_matches_torch(dtype, norm_type):
    params = _params(TAIL_SIZES, dtype, scale=0.5 if dtype == torch.float16 else 1.0)
    total, expected, ours, theirs = _clip_both(params, max_norm=0.25, norm_type=norm_type)
    assert total.dtype == expected.dtype == dtype and total.shape == () and total.device == expected.device
    rtol = NORM_RTOL[dtype]
    assert total.double().item() == pytest.approx(expected.double().item(), rel=rtol)
    exact = _exact_norm(params, norm_type)
    if exact < torch.finfo(dtype).max:  # fp16's 0.5-norm overflows, in torch's result too
        assert total.double().item() == pytest.approx(exact, rel=EXACT_RTOL[dtype])
    for p, q in zip(ours, theirs):
        torch.testing.assert_close(p.grad, q.grad, rtol=rtol * 2, atol=0)


@pytest.mark.parametrize("norm_type", [2.0, 1.0, float("inf")], ids=str)
def test_fp64_is_tight_with_many_tensors(norm_type, isa):
    g = torch.Generator().manual_seed(3)
    sizes = torch.randint(1, 300, (500,), generator=g).tolist()
    params = _params(sizes, torch.float64, seed=4)
    total, expected, ours, theirs = _clip_both(params, max_norm=1.0, norm_type=norm_type)
    assert total.item() == pytest.approx(expected.item(), rel=1e-14)
    for p, q in zip(ours, theirs):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-14, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_below_max_norm_leaves_grads_bit_identical(dtype, isa):
    params = _params([5, 70, 1000], dtype)
    total, expected, ours, theirs = _clip_both(params, max_norm=1e6)
    for p, q, r in zip(ours, theirs, params):
        assert torch.equal(p.grad, r.grad) and torch.equal(q.grad, r.grad)


def test_fp32_scaling_is_torchs_multiplication(isa):
    # With the same coefficient the scaling pass gives torch's bits: feed both torch's norm.
    params = _params(TAIL_SIZES, torch.float32)
    ours, theirs = _clone(params), _clone(params)
    expected = torch.nn.utils.clip_grad_norm_(theirs, 0.5)
    from fusedoptim.clip import _clip_grads_with_norm
    _clip_grads_with_norm([p.grad for p in ours], 0.5, expected)
    for p, q in zip(ours, theirs):
        assert torch.equal(p.grad, q.grad)


def test_mixed_dtypes_promote_as_torch():
    params = _params([9, 100], torch.float32) + _params([17], torch.float64, seed=1) + _params([33], torch.bfloat16, seed=2)
    total, expected, ours, theirs = _clip_both(params, max_norm=0.5)
    assert total.dtype == expected.dtype == torch.float64
    # torch rounds the bf16 grad's norm to bf16; ours is the exact norm of all values.
    assert total.item() == pytest.approx(expected.item(), rel=2 ** -7)
    assert total.item() == pytest.approx(_exact_norm(params, 2.0), rel=1e-14)
    for p, q in zip(ours, theirs):
        torch.testing.assert_close(p.grad, q.grad, rtol=2 ** -7, atol=0)  # the coefficients differ as the norms


def test_grads_the_kernels_cant_take_go_to_torch():
    params = _params([40, 12], torch.float32)
    strided = torch.zeros(6, 4, requires_grad=True)
    strided.grad = torch.randn(4, 6).t()  # non-contiguous
    cplx = torch.zeros(10, dtype=torch.complex64, requires_grad=True)
    cplx.grad = torch.randn(10, dtype=torch.complex64)
    params += [strided, cplx]
    for norm_type in (2.0, 1.0, float("inf")):
        total, expected, ours, theirs = _clip_both(params, max_norm=0.5, norm_type=norm_type)
        assert total.dtype == expected.dtype
        assert total.item() == pytest.approx(expected.item(), rel=2e-6)
        for p, q in zip(ours, theirs):
            torch.testing.assert_close(p.grad, q.grad, rtol=4e-6, atol=1e-7)


@pytest.mark.parametrize("norm_type", [0.0, -1.0, float("-inf")], ids=str)
def test_norm_types_without_a_kernel_are_torchs(norm_type):
    params = _params([7, 20], torch.float32)
    total, expected, ours, theirs = _clip_both(params, max_norm=0.5, norm_type=norm_type)
    assert torch.equal(total, expected)
    for p, q in zip(ours, theirs):
        assert torch.equal(p.grad, q.grad)


def test_edge_cases():
    # No grads: torch's tensor(0.), grads untouched.
    p = torch.zeros(3, requires_grad=True)
    assert torch.equal(fusedoptim.clip_grad_norm_([p], 1.0), torch.nn.utils.clip_grad_norm_([p], 1.0))
    assert fusedoptim.clip_grad_norm_([p], 1.0).dtype == torch.get_default_dtype()
    # A single tensor, 'inf' as a string, an int max_norm.
    q = _params([50], torch.float64)[0]
    r = _clone([q])[0]
    a = fusedoptim.clip_grad_norm_(q, 1, norm_type="inf")
    b = torch.nn.utils.clip_grad_norm_(r, 1, norm_type="inf")
    assert torch.equal(a, b) and torch.equal(q.grad, r.grad)
    # An empty generator warns as torch does.
    with pytest.warns(UserWarning, match="empty generator"):
        fusedoptim.clip_grad_norm_((x for x in []), 1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fusedoptim.clip_grad_norm_([], 1.0)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")], ids=str)
@pytest.mark.parametrize("norm_type", [2.0, float("inf")], ids=str)
def test_nonfinite(bad, norm_type):
    params = _params([20, 9], torch.float32)
    params[1].grad[3] = bad
    with pytest.raises(RuntimeError) as ours:
        fusedoptim.clip_grad_norm_(_clone(params), 1.0, norm_type=norm_type, error_if_nonfinite=True)
    with pytest.raises(RuntimeError) as theirs:
        torch.nn.utils.clip_grad_norm_(_clone(params), 1.0, norm_type=norm_type, error_if_nonfinite=True)
    assert str(ours.value) == str(theirs.value)
    total, expected, a, b = _clip_both(params, 1.0, norm_type=norm_type)
    assert torch.equal(total, expected) or (math.isnan(total.item()) and math.isnan(expected.item()))
    for p, q in zip(a, b):
        torch.testing.assert_close(p.grad, q.grad, equal_nan=True)


def test_deterministic_across_thread_counts():
    params = _params([300_000, 70_000, 5], torch.float32)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            ours = _clone(params)
            results.append((fusedoptim.clip_grad_norm_(ours, 1.0), [p.grad for p in ours]))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(results[0][0], results[1][0])
    assert all(torch.equal(a, b) for a, b in zip(results[0][1], results[1][1]))
