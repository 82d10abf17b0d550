"""Shared harness: build identical seeded params/grads, run torch.optim and fusedoptim side by
side, and compare params, state and state_dict structure."""

from __future__ import annotations

import math
import re
from contextlib import contextmanager

import pytest
import torch

import fusedoptim
import reference_optimizers
from optim_configs import FUSEDOPTIM_OPTIONS

# Tolerances required by the project's standards (after >= 10 steps).  For fp32 / complex64,
# assert_tensor_close scales atol by the tensor's largest magnitude (see _scale_aware).
TOLERANCES = {
    torch.float64: dict(rtol=1e-10, atol=1e-12),
    torch.complex128: dict(rtol=1e-10, atol=1e-12),
    torch.float32: dict(rtol=1e-5, atol=1e-6),
    torch.complex64: dict(rtol=1e-5, atol=1e-6),
}

LOW_PRECISION = (torch.bfloat16, torch.float16)

# 0-dim per-param states kept in torch's scalar dtype (float32, or float64 under
# torch.set_default_dtype(torch.float64)) whatever the param's dtype.
SCALAR_STATE_KEYS = frozenset({"step", "eta", "mu", "mu_product"})

NUM_STEPS = 10

# Shapes used by the registry-wide parity tests: 0-dim, empty, odd tails, multi-dim.
DEFAULT_SHAPES = [(), (0,), (1,), (7,), (17,), (3, 5, 7), (2, 0, 3), (33,)]


def torch_cls(name):
    """The class fusedoptim.<name> is compared with: torch.optim's, or for the algorithms
    torch.optim does not have (LAMB, Lion) the plain-torch oracle in reference_optimizers.py."""
    if name in reference_optimizers.__all__:
        return getattr(reference_optimizers, name)
    return getattr(torch.optim, name)


# A typical, state-rich configuration of each optimizer, for the interface tests (hooks,
# closures, schedulers, param forms ...) that run every optimizer once.
INTERFACE_KWARGS = {
    "SGD": dict(lr=0.05, momentum=0.9),
    "Adam": dict(lr=0.01),
    "AdamW": dict(lr=0.01),
    "Adadelta": dict(lr=0.5),
    "Adagrad": dict(lr=0.1, lr_decay=0.01),
    "Adamax": dict(lr=0.01),
    "ASGD": dict(lr=0.05, t0=3),
    "NAdam": dict(lr=0.01),
    "RAdam": dict(lr=0.01, betas=(0.9, 0.9)),
    "RMSprop": dict(lr=0.01, momentum=0.9, centered=True),
    "Rprop": dict(lr=0.05, step_sizes=(0.02, 0.06)),
    "LAMB": dict(lr=0.01, max_grad_norm=1.0),
    "Lion": dict(lr=1e-3, weight_decay=0.1),
}


def interface_kwargs(optim):
    return dict(INTERFACE_KWARGS[optim])


def accepts(optim, option):
    """Whether optimizer `optim`'s constructor (torch's, or the oracle's) takes `option`."""
    import inspect

    return option in inspect.signature(torch_cls(optim).__init__).parameters


def fused_cls(name):
    return getattr(fusedoptim, name)


def real_dtype(dtype):
    return dtype.to_real() if dtype.is_complex else dtype


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def make_param_values(shapes, dtype, seed=0):
    """Seeded initial values, generated in (complex) fp64 and cast to ``dtype``."""
    g = _gen(seed)
    base = torch.complex128 if dtype.is_complex else torch.float64
    return [torch.randn(s, generator=g, dtype=base).to(dtype) for s in shapes]


def make_grad_values(shapes, dtype, num_steps=NUM_STEPS, seed=1000, scale=1.0,
                     min_abs=0.0):
    """grads[step][i]: deterministic, non-zero, step-varying; generated in fp64 then cast.

    The magnitude varies per step too (so that Adam's normalisation is not trivially ~1).
    ``min_abs`` > 0 keeps every entry at least that far from zero (real dtypes only).
    """
    out = []
    base = torch.complex128 if dtype.is_complex else torch.float64
    for step in range(num_steps):
        g = _gen(seed + step)
        mag = scale * (0.5 + step % 3)
        gs = []
        for s in shapes:
            r = torch.randn(s, generator=g, dtype=base)
            if min_abs > 0:
                r = torch.where(r < 0, r - min_abs, r + min_abs)
            gs.append((r * mag).to(dtype))
        out.append(gs)
    return out


def as_params(values, requires_grad=True):
    return [v.detach().clone().requires_grad_(requires_grad) for v in values]


def set_grads(params, grads):
    for p, g in zip(params, grads, strict=True):
        p.grad = None if g is None else g.detach().clone()


def run_steps(opt, params, grads_per_step, after_step=None):
    for i, grads in enumerate(grads_per_step):
        set_grads(params, grads)
        opt.step()
        if after_step is not None:
            after_step(i)
    return opt


def run_config(config, make_opt_cls, kwargs_fn, values, grads_per_step, requires_grad=True):
    params = as_params(values, requires_grad=requires_grad)
    opt = make_opt_cls(config.optim)(params, **kwargs_fn(values[0].dtype))
    run_steps(opt, params, grads_per_step)
    return opt, params


def run_torch(config, values, grads_per_step, requires_grad=True):
    return run_config(config, torch_cls, config.reference_kwargs, values, grads_per_step,
                      requires_grad)


def run_fused(config, values, grads_per_step, requires_grad=True):
    return run_config(config, fused_cls, config.fused_kwargs, values, grads_per_step,
                      requires_grad)


# ----------------------------------------------------------------------------- comparisons


def tol_for(dtype):
    return TOLERANCES[dtype]


def _scale_aware(expected, tol):
    """fp32: the absolute tolerance scales with the tensor's largest magnitude.

    Rounding errors of fp32 arithmetic are relative to the terms combined, i.e. to the
    tensor's scale, not to each result element: a momentum buffer with entries up to ~30
    (RMSprop's sum of normalised grads) has entries near 0 that come out of cancellation
    with an absolute error of ~1e-5 - torch's own fp32 run is as far from an fp64 run as
    fusedoptim there.  So atol (1e-6) is taken per unit of max|expected| (never below 1e-6);
    rtol is unchanged.  fp64 keeps its fixed atol.
    """
    if expected.dtype not in (torch.float32, torch.complex64) or expected.numel() == 0:
        return tol
    finite = expected[torch.isfinite(expected)] if expected.is_floating_point() else expected
    scale = finite.abs().max().item() if finite.numel() else 0.0
    if "atol" in tol and scale > 1.0:
        tol = dict(tol, atol=tol["atol"] * scale)
    return tol


def assert_tensor_close(actual, expected, *, msg="", equal_nan=False, **tol):
    if expected.is_sparse or actual.is_sparse:
        assert actual.is_sparse == expected.is_sparse, msg
        actual, expected = actual.to_dense(), expected.to_dense()
    tol = _scale_aware(expected, tol)
    torch.testing.assert_close(
        actual, expected, equal_nan=equal_nan, msg=lambda m: f"{msg}\n{m}", **tol
    )


def assert_states_match(fused_opt, torch_opt, fused_params, torch_params, *, equal_nan=False,
                        tol=None, check_step_dtype=True):
    """Every param: same presence of state, same keys, close tensors, identical 'step'."""
    for i, (pf, pt) in enumerate(zip(fused_params, torch_params, strict=True)):
        st_t = torch_opt.state.get(pt, {})
        st_f = fused_opt.state.get(pf, {})
        assert set(st_f.keys()) == set(st_t.keys()), (
            f"param {i}: state keys {sorted(st_f)} != torch {sorted(st_t)}"
        )
        t = tol if tol is not None else tol_for(pt.dtype)
        for key, vt in st_t.items():
            vf = st_f[key]
            if isinstance(vt, torch.Tensor):
                assert isinstance(vf, torch.Tensor), f"param {i} state[{key!r}] not a Tensor"
                if key == "step":
                    # step counts must agree exactly, with torch's dtype/device/shape.
                    assert vf.shape == vt.shape == torch.Size([]), (i, vf.shape, vt.shape)
                    if check_step_dtype:
                        assert vf.dtype == vt.dtype, (i, vf.dtype, vt.dtype)
                    assert vf.device == vt.device, (i, vf.device, vt.device)
                    assert float(vf) == float(vt), f"param {i}: step {float(vf)} != {float(vt)}"
                else:
                    assert_tensor_close(vf, vt, msg=f"param {i} state[{key!r}]",
                                        equal_nan=equal_nan, **t)
            else:
                assert vf == vt, (i, key, vf, vt)


def assert_params_match(fused_params, torch_params, *, equal_nan=False, tol=None):
    for i, (pf, pt) in enumerate(zip(fused_params, torch_params, strict=True)):
        t = tol if tol is not None else tol_for(pt.dtype)
        assert_tensor_close(pf.detach(), pt.detach(), msg=f"param {i}", equal_nan=equal_nan, **t)


def _values_equal(a, b):
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (
            isinstance(a, torch.Tensor)
            and isinstance(b, torch.Tensor)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and torch.equal(a, b)
        )
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return type(a) is type(b) and len(a) == len(b) and all(
            _values_equal(x, y) for x, y in zip(a, b)
        )
    return type(a) is type(b) and a == b


def assert_param_groups_match(fused_groups, torch_groups, config=None, ignore=("params",)):
    """Same keys and the same hyperparameter values (types included) as torch."""
    differing = config.differing_keys if config is not None else set()
    assert len(fused_groups) == len(torch_groups)
    for gi, (gf, gt) in enumerate(zip(fused_groups, torch_groups)):
        # fusedoptim's own options (max_grad_norm, norm_type) are the only keys torch lacks.
        assert set(gt) <= set(gf) and set(gf) - set(gt) <= set(FUSEDOPTIM_OPTIONS), (gi, sorted(gf), sorted(gt))
        for k in gt:
            if k in ignore:
                continue
            if k in differing:
                # torch ran with other flags (see the config's note): ours keeps what we passed
                if k in config.kwargs and isinstance(config.kwargs[k], bool):
                    assert gf[k] is config.kwargs[k], (gi, k, gf[k])
                continue
            assert _values_equal(gf[k], gt[k]), f"group {gi} key {k!r}: {gf[k]!r} != {gt[k]!r}"


def assert_state_dicts_match(sd_f, sd_t, config=None, tol=None, equal_nan=False):
    assert set(sd_f.keys()) == set(sd_t.keys()) == {"state", "param_groups"}
    assert set(sd_f["state"].keys()) == set(sd_t["state"].keys()), (
        sorted(sd_f["state"]), sorted(sd_t["state"]))
    for idx, st_t in sd_t["state"].items():
        st_f = sd_f["state"][idx]
        assert set(st_f.keys()) == set(st_t.keys()), (idx, sorted(st_f), sorted(st_t))
        for k, vt in st_t.items():
            vf = st_f[k]
            if k == "step":
                assert isinstance(vf, torch.Tensor) and vf.dim() == 0
                assert vf.dtype == vt.dtype and vf.device == vt.device, (vf, vt)
                assert float(vf) == float(vt)
            else:
                t = tol if tol is not None else tol_for(vt.dtype)
                assert_tensor_close(vf, vt, msg=f"state[{idx}][{k!r}]", equal_nan=equal_nan, **t)
    assert_param_groups_match(sd_f["param_groups"], sd_t["param_groups"], config, ignore=())


def assert_runs_match(fused_opt, torch_opt, fused_params, torch_params, config=None,
                      equal_nan=False):
    assert_params_match(fused_params, torch_params, equal_nan=equal_nan)
    assert_states_match(fused_opt, torch_opt, fused_params, torch_params, equal_nan=equal_nan)
    assert_param_groups_match(fused_opt.param_groups, torch_opt.param_groups, config)
    sd_f, sd_t = fused_opt.state_dict(), torch_opt.state_dict()
    assert_state_dicts_match(sd_f, sd_t, config, equal_nan=equal_nan)


def assert_fused_path(opt):
    paths = opt.last_step_paths
    assert set(paths.keys()) == {"fused", "reference"}, paths
    assert paths["fused"] > 0 and paths["reference"] == 0, paths


def assert_reference_path(opt):
    paths = opt.last_step_paths
    assert paths["reference"] > 0 and paths["fused"] == 0, paths


# ----------------------------------------------------------------------------- errors


def capture_exception(fn):
    """Run fn; return the exception it raised (or fail if it did not raise)."""
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - we want torch's exact exception
        return e
    raise AssertionError("expected torch to raise for this input, it did not")


def assert_raises_like_torch(make, name):
    """``make(cls)`` must raise with torch.optim.<name>; ours must raise the same type+message."""
    expected = capture_exception(lambda: make(torch_cls(name)))
    with pytest.raises(type(expected), match=re.escape(str(expected))) as info:
        make(fused_cls(name))
    assert type(info.value) is type(expected)
    assert str(info.value) == str(expected)
    return expected


def outcome(fn):
    """('ok', result) or ('raise', exception) - to compare torch and ours when torch may raise."""
    try:
        return "ok", fn()
    except Exception as e:  # noqa: BLE001
        return "raise", e


# ----------------------------------------------------------------------------- low precision


def ulp_at(dtype, magnitude):
    """Spacing of ``dtype`` numbers at ``magnitude`` (1 ulp); tiny positive for magnitude 0."""
    fi = torch.finfo(dtype)
    if magnitude <= fi.tiny:
        return fi.tiny * fi.eps
    return fi.eps * 2.0 ** math.floor(math.log2(magnitude))


@contextmanager
def cpu_capability(name):
    prev = fusedoptim.set_cpu_capability(name)
    try:
        yield
    finally:
        fusedoptim.set_cpu_capability(prev)
