"""bf16 / fp16 params: error vs an fp64 reference trajectory must not exceed twice torch.optim's
own error (plus one ulp of slack), and state is kept in the param's dtype like torch.

Method (for each configuration):
  * initial params are generated in fp64 and cast to the 16-bit dtype; grads likewise.
  * reference: torch.optim in fp64, started from the fp64 copy of the *16-bit* initial params and
    fed the fp64 copies of the *16-bit* grads, so that the reference sees exactly the same inputs
    and only the optimizer arithmetic differs;
  * torch.optim in the 16-bit dtype and fusedoptim in the 16-bit dtype on the same inputs;
  * for the params and for each kind of state tensor, with the max taken over all elements of
    all params: max|ours - ref| <= 2 * max|torch16 - ref| + 1 ulp.

Grads are kept away from zero (|g| >= 0.15, also after adding L2 weight decay, params being
kept within [-1, 1]): with fp16 params torch.optim.Adam's for-loop implementation turns a grad
of magnitude < ~8e-3 into exp_avg_sq == 0 (g*g*(1-beta2) underflows) and eps=1e-8 into 0, i.e.
an inf/nan update, which would make torch's error infinite and the comparison vacuous.  Every
comparison also asserts that torch's own error is finite.

Baseline for fused=True SGD configurations: torch 2.13's CPU *fused* SGD kernel is wrong for
bf16/fp16 params (max error ~1 after 10 steps where its for-loop implementation has ~0.02; e.g.
SGD(lr=0.05, fused=True) on a 65-element bf16 param), so for SGD the 16-bit baseline and the fp64
reference use torch's default (for-loop) implementation.  fused=True Adam/AdamW keep torch's fused
kernel as the (stricter) baseline.

Slack: results are stored in the 16-bit dtype, so even an exact implementation is up to half an
ulp away from the fp64 reference, while torch's own error can by chance be smaller than that
(e.g. updates that round back to the same value).  One ulp of the dtype at the magnitude of the
compared tensors (largest |ref| entry) covers that rounding of the stored result, nothing more.
"""

import math

import pytest
import torch

from helpers import (
    LOW_PRECISION,
    SCALAR_STATE_KEYS,
    as_params,
    assert_fused_path,
    assert_reference_path,
    fused_cls,
    make_grad_values,
    make_param_values,
    run_steps,
    torch_cls,
    ulp_at,
)
from optim_configs import ALL_CONFIGS, REPRESENTATIVE_CONFIGS, config_ids

LP_IDS = ["bf16", "fp16"]
SHAPES = [(), (1,), (7,), (17,), (3, 5, 7), (33,)]
TAIL_SHAPES = [(n,) for n in [0, 1, 7, 8, 9, 15, 16, 17, 31, 33, 4097, 65537]] + [(3, 5, 7)]


def _max_err(x, ref):
    if x.numel() == 0:
        return 0.0
    return (x.detach().double() - ref.detach()).abs().max().item()


def _run(cls_name, module_cls, kwargs, values, grads, requires_grad):
    params = as_params(values, requires_grad=requires_grad)
    opt = module_cls(cls_name)(params, **kwargs)
    run_steps(opt, params, grads)
    return opt, params


def _sign_consistent(grads):
    """Each element keeps the sign of its first grad on every step (magnitudes still vary).

    Lion's update is lr * sign(beta1 * m + (1 - beta1) * g): where that blend is within a few
    16-bit roundings of zero, *which* side of zero a run lands on is chance (an implementation
    with a more accurate m can land on the wrong side: a 2 * lr jump, e.g. fp16 Lion(lr=1e-3) on
    a (33,) param, step 10, blend 2.8e-6 in fp64).  With sign-consistent grads m always has
    g's sign and |blend| >= (1 - beta1) * |g|, so every run takes the same sign decisions and
    the comparison measures rounding, as for the other algorithms."""
    signs = [torch.where(g < 0, -1.0, 1.0).to(g.dtype) for g in grads[0]]
    return [[g.abs() * s for g, s in zip(gs, signs)] for gs in grads]


def check_against_fp64_reference(config, dtype, shapes, seed, device="cpu"):
    # |param| <= 1 and |grad| >= 0.15 (min_abs 0.3 times the smallest per-step scale 0.5): an
    # L2 weight-decay term (wd <= 0.1 here) can never cancel a grad, see the module docstring.
    values64 = [(v * 0.5).clamp(-1, 1) for v in make_param_values(shapes, torch.float64, seed)]
    values16 = [v.to(dtype) for v in values64]
    grads64 = make_grad_values(shapes, torch.float64, seed=seed + 1000, min_abs=0.3)
    if config.optim == "Lion":
        grads64 = _sign_consistent(grads64)
    grads16 = [[g.to(dtype) for g in gs] for gs in grads64]
    # the reference sees the 16-bit inputs exactly (see module docstring)
    ref_values = [v.double() for v in values16]
    ref_grads = [[g.double() for g in gs] for gs in grads16]
    if device != "cpu":  # tests/test_cuda.py: every run on the device
        values16, ref_values = [v.to(device) for v in values16], [v.to(device) for v in ref_values]
        grads16 = [[g.to(device) for g in gs] for gs in grads16]
        ref_grads = [[g.to(device) for g in gs] for gs in ref_grads]

    rg = not config.differentiable
    # Tensor hyperparameters are float32 tensors for all three runs (TensorHP with dtype None and
    # a 16-bit param dtype), so that every run uses the same hyperparameter values.
    def baseline_kwargs():  # fresh Tensor hyperparameters on each call
        kw = config.reference_kwargs(dtype)
        if config.optim == "SGD":
            kw.pop("fused", None)  # torch's fused CPU SGD is wrong for 16-bit, see docstring
        return kw

    kw_ref = baseline_kwargs()
    kw_t16 = baseline_kwargs()
    kw_f16 = config.fused_kwargs(dtype)
    o_ref, p_ref = _run(config.optim, torch_cls, kw_ref, ref_values, ref_grads, rg)
    o_t16, p_t16 = _run(config.optim, torch_cls, kw_t16, values16, grads16, rg)
    o_f16, p_f16 = _run(config.optim, fused_cls, kw_f16, values16, grads16, rg)

    by_kind = {}  # "param" / state key -> list of (param index, ref, torch16, ours16)
    for i, (pr, pt, pf) in enumerate(zip(p_ref, p_t16, p_f16)):
        assert pf.dtype == dtype
        by_kind.setdefault("param", []).append((i, pr, pt, pf))
        st_r, st_t, st_f = o_ref.state.get(pr, {}), o_t16.state.get(pt, {}), o_f16.state.get(pf, {})
        assert set(st_f) == set(st_t) == set(st_r), (i, sorted(st_f), sorted(st_t))
        for key in st_t:
            if key == "step":
                assert st_f[key].dtype == st_t[key].dtype, (st_f[key], st_t[key])
                assert float(st_f[key]) == float(st_t[key]) == float(st_r[key])
                continue
            if key in SCALAR_STATE_KEYS:
                # ASGD's eta/mu, NAdam's mu_product: 0-dim tensors in torch's scalar dtype
                # (float32 here), which depend on the hyperparameters and the step count only
                assert st_f[key].dtype == st_t[key].dtype == st_r[key].dtype, (i, key)
                assert st_f[key].shape == st_t[key].shape == torch.Size([]), (i, key)
                # (on CUDA, capturable keeps ours on the device, torch's runs without it on the CPU)
                torch.testing.assert_close(st_f[key], st_t[key], rtol=1e-6, atol=0, check_device=False)
                torch.testing.assert_close(st_f[key], st_r[key], rtol=1e-6, atol=0, check_device=False)
                continue
            # reduced-precision state is stored in the param's dtype, as torch does
            assert st_f[key].dtype == st_t[key].dtype == dtype, (i, key, st_f[key].dtype)
            assert st_f[key].shape == pf.shape
            by_kind.setdefault(f"state[{key!r}]", []).append((i, st_r[key], st_t[key], st_f[key]))

    # The max error is taken over all elements of all params of the optimizer (per kind:
    # params, exp_avg, ...).  All tensors have the same scale by construction.  A per-tensor
    # max would be a single sample for 1-element params: e.g. torch's fp16 SGD momentum buffer
    # of a 1-element param happened to land 0.4 ulp from the reference while its other buffers
    # were 4-15 ulp off, which says nothing about either implementation.
    for what, items in by_kind.items():
        errs_t = [_max_err(t, r) for _, r, t, _ in items]
        errs_f = [_max_err(f, r) for _, r, _, f in items]
        err_torch, err_ours = max(errs_t), max(errs_f)
        assert math.isfinite(err_torch), (what, "torch's own 16-bit run blew up")
        mag = max((r.detach().abs().max().item() for _, r, _, _ in items if r.numel()),
                  default=0.0)
        slack = ulp_at(dtype, mag)
        worst = max(range(len(items)), key=lambda j: errs_f[j])
        assert err_ours <= 2 * err_torch + slack, (
            f"{what}: fusedoptim max error {err_ours:.6g} vs fp64 reference exceeds "
            f"2 * torch.optim's {err_torch:.6g} + {slack:.3g} (1 ulp at {mag:.4g}); worst is "
            f"param {items[worst][0]} (shape {tuple(items[worst][1].shape)}); per-param "
            f"errors ours={[f'{e:.3g}' for e in errs_f]} torch={[f'{e:.3g}' for e in errs_t]}"
        )
    assert "param" in by_kind and len(by_kind["param"]) == len(shapes)
    return o_f16


@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=LP_IDS)
@pytest.mark.parametrize("config", ALL_CONFIGS, ids=config_ids(ALL_CONFIGS))
def test_low_precision_vs_fp64_reference(config, dtype, isa):
    opt = check_against_fp64_reference(config, dtype, SHAPES, seed=11)
    if config.expects_fused_path:
        assert_fused_path(opt)
    else:
        assert_reference_path(opt)


@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=LP_IDS)
@pytest.mark.parametrize("config", REPRESENTATIVE_CONFIGS, ids=config_ids(REPRESENTATIVE_CONFIGS))
def test_low_precision_tail_sizes(config, dtype, isa):
    opt = check_against_fp64_reference(config, dtype, TAIL_SHAPES, seed=12)
    assert_fused_path(opt)


@pytest.mark.parametrize("dtype", LOW_PRECISION + (torch.float32, torch.float64),
                         ids=LP_IDS + ["fp32", "fp64"])
@pytest.mark.parametrize("config", REPRESENTATIVE_CONFIGS, ids=config_ids(REPRESENTATIVE_CONFIGS))
def test_state_dtypes_follow_param_dtype(config, dtype):
    """State tensors have the param's dtype/shape/device exactly as torch's; 'step' (and the other
    0-dim states) is torch's 0-dim float32 CPU tensor."""
    shapes = [(5,), (2, 3)]
    values = make_param_values(shapes, dtype, seed=13)
    grads = make_grad_values(shapes, dtype, num_steps=2, seed=1300)
    o_t, p_t = _run(config.optim, torch_cls, config.reference_kwargs(dtype), values, grads, True)
    o_f, p_f = _run(config.optim, fused_cls, config.fused_kwargs(dtype), values, grads, True)
    for pt, pf in zip(p_t, p_f):
        st_t, st_f = o_t.state.get(pt, {}), o_f.state.get(pf, {})
        assert set(st_f) == set(st_t)
        for k in st_t:
            assert st_f[k].dtype == st_t[k].dtype, (k, st_f[k].dtype, st_t[k].dtype)
            assert st_f[k].shape == st_t[k].shape and st_f[k].device == st_t[k].device
            if k in SCALAR_STATE_KEYS:
                # 'step' (and ASGD's eta/mu, NAdam's mu_product): torch's 0-dim float32
                assert st_f[k].dtype == torch.float32 and st_f[k].dim() == 0
            else:
                assert st_f[k].dtype == dtype
