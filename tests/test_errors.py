"""Validation errors identical to torch.optim (type and message), bad grads (beyond torch),
NaN/Inf propagation, unsupported sparse grads."""

import warnings

import pytest
import torch

from helpers import (
    NUM_STEPS,
    as_params,
    assert_raises_like_torch,
    capture_exception,
    assert_runs_match,
    fused_cls,
    make_grad_values,
    make_param_values,
    outcome,
    set_grads,
    torch_cls,
)
from optim_configs import OPTIM_NAMES, REPRESENTATIVE_CONFIGS, config_ids

OPTIMS = list(OPTIM_NAMES)


def _p(*shape, dtype=torch.float32):
    return torch.zeros(shape or (3,), dtype=dtype, requires_grad=True)


# Each entry: (id, optimizers it applies to, make(cls) that must raise with torch.optim)
_COMMON = [
    ("empty_list", OPTIMS, lambda cls: cls([])),
    ("empty_generator", OPTIMS, lambda cls: cls(iter([]))),
    ("single_tensor", OPTIMS, lambda cls: cls(_p())),
    ("set_in_group", OPTIMS, lambda cls: cls([{"params": {_p()}}])),
    ("non_tensor_param", OPTIMS, lambda cls: cls([1.0])),
    ("non_tensor_param_in_group", OPTIMS, lambda cls: cls([{"params": [_p(), "x"]}])),
    ("non_leaf", OPTIMS, lambda cls: cls([_p() * 2])),
    ("param_in_two_groups", OPTIMS,
     lambda cls: (lambda p: cls([{"params": [p]}, {"params": [_p(), p]}]))(_p())),
    ("names_missing", OPTIMS, lambda cls: cls([("a", _p()), _p()])),
    ("named_and_unnamed_groups", OPTIMS,
     lambda cls: cls([{"params": [("a", _p())]}, {"params": [_p()]}])),
    ("add_param_group_not_dict", OPTIMS, lambda cls: cls([_p()]).add_param_group([_p()])),
    ("add_param_group_overlap", OPTIMS,
     lambda cls: (lambda p: cls([p]).add_param_group({"params": p}))(_p())),
    ("negative_lr", OPTIMS, lambda cls: cls([_p()], lr=-0.1)),
    ("negative_tensor_lr", OPTIMS, lambda cls: cls([_p()], lr=torch.tensor(-0.1))),
    ("tensor_lr_2_elements", OPTIMS, lambda cls: cls([_p()], lr=torch.tensor([0.1, 0.2]))),
    ("fused_and_foreach", OPTIMS, lambda cls: cls([_p()], fused=True, foreach=True)),
    ("fused_and_differentiable", OPTIMS,
     lambda cls: cls([_p()], fused=True, differentiable=True)),
    ("unknown_kwarg", OPTIMS, lambda cls: cls([_p()], lr=0.1, bogus=1)),
]

_SGD = [
    ("negative_momentum", ["SGD"], lambda cls: cls([_p()], momentum=-0.5)),
    ("negative_weight_decay", ["SGD"], lambda cls: cls([_p()], weight_decay=-1e-3)),
    ("nesterov_without_momentum", ["SGD"], lambda cls: cls([_p()], nesterov=True)),
    ("nesterov_with_dampening", ["SGD"],
     lambda cls: cls([_p()], momentum=0.9, dampening=0.1, nesterov=True)),
]

_ADAM = ["Adam", "AdamW"]
_ADAM_ERRS = [
    ("negative_eps", _ADAM, lambda cls: cls([_p()], eps=-1e-8)),
    ("beta0_is_1", _ADAM, lambda cls: cls([_p()], betas=(1.0, 0.999))),
    ("beta0_negative", _ADAM, lambda cls: cls([_p()], betas=(-0.1, 0.999))),
    ("beta1_is_1", _ADAM, lambda cls: cls([_p()], betas=(0.9, 1.0))),
    ("beta1_above_1", _ADAM, lambda cls: cls([_p()], betas=(0.9, 1.5))),
    ("tensor_beta_out_of_range", _ADAM,
     lambda cls: cls([_p()], betas=(torch.tensor(1.5), torch.tensor(0.9)))),
    ("negative_weight_decay", _ADAM, lambda cls: cls([_p()], weight_decay=-0.1)),
    ("betas_float_tensor_mix", _ADAM, lambda cls: cls([_p()], betas=(0.9, torch.tensor(0.99)))),
    ("betas_tensor_float_mix", _ADAM, lambda cls: cls([_p()], betas=(torch.tensor(0.9), 0.99))),
    ("tensor_beta0_2_elements", _ADAM,
     lambda cls: cls([_p()], betas=(torch.tensor([0.9, 0.8]), torch.tensor(0.99)))),
    ("tensor_beta1_2_elements", _ADAM,
     lambda cls: cls([_p()], betas=(torch.tensor(0.9), torch.tensor([0.99, 0.9])))),
    ("tensor_lr_with_foreach", _ADAM,
     lambda cls: cls([_p()], lr=torch.tensor(0.01), foreach=True)),
    ("tensor_betas_with_foreach", _ADAM,
     lambda cls: cls([_p()], betas=(torch.tensor(0.9), torch.tensor(0.99)), foreach=True)),
    ("adamw_decoupled_kwarg", ["AdamW"],
     lambda cls: cls([_p()], decoupled_weight_decay=False)),
]

# Shared checks of the newer algorithms (torch's messages: "Invalid epsilon value: -1e-08" ...)
_WITH_EPS = ["Adadelta", "Adagrad", "Adamax", "NAdam", "RAdam", "RMSprop", "LAMB"]
_WITH_BETAS = ["Adamax", "NAdam", "RAdam", "LAMB", "Lion"]
_WITH_WD = ["Adadelta", "Adagrad", "Adamax", "ASGD", "NAdam", "RAdam", "RMSprop", "LAMB", "Lion"]
_NEW_SHARED = [
    ("negative_eps", _WITH_EPS, lambda cls: cls([_p()], eps=-1e-8)),
    ("negative_weight_decay", _WITH_WD, lambda cls: cls([_p()], weight_decay=-0.1)),
    ("beta0_negative", _WITH_BETAS, lambda cls: cls([_p()], betas=(-0.1, 0.99))),
    ("beta0_above_1", _WITH_BETAS, lambda cls: cls([_p()], betas=(1.5, 0.99))),
    ("beta1_negative", _WITH_BETAS, lambda cls: cls([_p()], betas=(0.9, -0.5))),
    ("beta1_above_1", _WITH_BETAS, lambda cls: cls([_p()], betas=(0.9, 1.01))),
    # beta == 1: refused by torch's Adamax/NAdam/RAdam (and LAMB), allowed by Lion's closed
    # interval (see the registry's Lion betas=(0.0, 1.0))
    ("beta0_is_1", ["Adamax", "NAdam", "RAdam", "LAMB"],
     lambda cls: cls([_p()], betas=(1.0, 0.99))),
    ("beta1_is_1", ["Adamax", "NAdam", "RAdam", "LAMB"],
     lambda cls: cls([_p()], betas=(0.9, 1.0))),
]
_NEW_OWN = [
    ("negative_rho", ["Adadelta"], lambda cls: cls([_p()], rho=-0.1)),
    ("rho_above_1", ["Adadelta"], lambda cls: cls([_p()], rho=1.5)),
    ("negative_lr_decay", ["Adagrad"], lambda cls: cls([_p()], lr_decay=-0.1)),
    ("negative_initial_accumulator_value", ["Adagrad"],
     lambda cls: cls([_p()], initial_accumulator_value=-0.5)),
    ("adagrad_fused_and_foreach", ["Adagrad"], lambda cls: cls([_p()], fused=True, foreach=True)),
    ("negative_momentum_decay", ["NAdam"], lambda cls: cls([_p()], momentum_decay=-1e-3)),
    ("negative_alpha", ["RMSprop"], lambda cls: cls([_p()], alpha=-0.5)),
    ("negative_momentum", ["RMSprop"], lambda cls: cls([_p()], momentum=-0.9)),
    ("etaminus_zero", ["Rprop"], lambda cls: cls([_p()], etas=(0.0, 1.2))),
    ("etaminus_above_1", ["Rprop"], lambda cls: cls([_p()], etas=(1.5, 2.0))),
    ("etaplus_below_1", ["Rprop"], lambda cls: cls([_p()], etas=(0.5, 0.9))),
    ("etas_both_1", ["Rprop"], lambda cls: cls([_p()], etas=(1.0, 1.0))),
    ("negative_max_grad_norm", ["LAMB"], lambda cls: cls([_p()], max_grad_norm=-1.0)),
    ("capturable_unknown", ["Adagrad", "LAMB", "Lion"], lambda cls: cls([_p()], capturable=True)),
    ("foreach_unknown", ["LAMB", "Lion"], lambda cls: cls([_p()], foreach=True)),
    ("amsgrad_unknown", ["NAdam", "RAdam", "Adamax", "LAMB"], lambda cls: cls([_p()], amsgrad=True)),
    ("lion_eps_unknown", ["Lion"], lambda cls: cls([_p()], eps=1e-8)),
    # keyword-only options passed positionally: TypeError naming the class, like torch's
    ("positional_keyword_only", ["Rprop"],
     lambda cls: cls([_p()], 0.01, (0.5, 1.2), (1e-6, 50), True)),
    ("positional_keyword_only", ["LAMB"],
     lambda cls: cls([_p()], 1e-3, (0.9, 0.999), 1e-6, 0.01, True)),
    ("positional_keyword_only", ["Lion"], lambda cls: cls([_p()], 1e-4, (0.9, 0.99), 0.0, True)),
]

VALIDATION_CASES = [
    (name, optim, make)
    for name, optims, make in _COMMON + _SGD + _ADAM_ERRS + _NEW_SHARED + _NEW_OWN
    for optim in optims
]


@pytest.mark.parametrize("name,optim,make", VALIDATION_CASES,
                         ids=[f"{o}-{n}" for n, o, _ in VALIDATION_CASES])
def test_validation_error_like_torch(name, optim, make):
    assert_raises_like_torch(make, optim)


@pytest.mark.parametrize("optim", OPTIMS)
def test_tensor_lr_in_group_with_foreach_like_torch(optim):
    """A Tensor lr given per group (so the constructor check does not see it) with
    foreach=True: torch.optim.Adam(W) raises at step time, SGD accepts it.  Same for us."""

    def make(cls):
        p = torch.linspace(-1, 1, 3).requires_grad_()
        o = cls([{"params": [p], "lr": torch.tensor(0.01)}], foreach=True)
        for _ in range(3):
            p.grad = torch.linspace(0.5, -2, 3)
            o.step()
        return o, p

    kind, res = outcome(lambda: make(torch_cls(optim)))
    if kind == "raise":
        assert_raises_like_torch(make, optim)
    else:
        o_f, p_f = make(fused_cls(optim))
        assert_runs_match(o_f, res[0], [p_f], [res[1]])


@pytest.mark.parametrize("optim", OPTIMS)
def test_top_level_set_of_params_like_torch(optim):
    """torch converts a top-level set with list(); a set inside a group dict is a TypeError
    (covered above). Whatever torch does, we do."""
    kind, res = outcome(lambda: torch_cls(optim)({_p()}))
    if kind == "raise":
        assert_raises_like_torch(lambda cls: cls({_p()}), optim)
    else:
        o = fused_cls(optim)({_p()})
        assert len(o.param_groups[0]["params"]) == 1


@pytest.mark.parametrize("optim", OPTIMS)
def test_duplicate_params_warn_like_torch(optim):
    def make(cls):
        p = _p()
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always")
            cls([p, _p(), p])
        return [(w.category, str(w.message)) for w in rec if "duplicate" in str(w.message)]

    exp = make(torch_cls(optim))
    got = make(fused_cls(optim))
    assert len(exp) == 1
    assert got == exp


@pytest.mark.parametrize("optim", ["Adam", "AdamW"])
def test_adam_sparse_grad_raises_like_torch(optim):
    def make(cls):
        emb = torch.nn.Embedding(10, 3, sparse=True)
        o = cls(emb.parameters(), lr=0.01)
        emb(torch.tensor([1, 2])).sum().backward()
        o.step()

    assert_raises_like_torch(make, optim)


@pytest.mark.parametrize("optim", [o for o in OPTIMS if o not in ("SGD", "Adagrad")])
def test_sparse_grad_raises_like_torch_and_modifies_nothing(optim):
    """Every other algorithm refuses sparse grads with torch's RuntimeError ('<Name> does not
    support sparse gradients'; the oracles of LAMB and Lion say the same), before anything is
    modified, even when the sparse param is in a later group than fused params."""

    def build(cls):
        torch.manual_seed(4)
        lin = torch.nn.Linear(4, 3).double()
        emb = torch.nn.Embedding(6, 4, sparse=True).double()
        o = cls([{"params": lin.parameters()}, {"params": emb.parameters()}])
        return o, lin, emb

    def steps(o, lin, emb, n_ok):
        x = torch.randn(5, 4, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
        for _ in range(n_ok):  # dense steps: state exists
            o.zero_grad()
            lin(x).pow(2).sum().backward()
            o.step()
        o.zero_grad()
        (lin(emb(torch.tensor([0, 3]))).pow(2).sum()).backward()
        assert emb.weight.grad.is_sparse

    exp = capture_exception(lambda: (lambda o, l, e: (steps(o, l, e, 2), o.step()))(
        *build(torch_cls(optim))))
    o_f, lin, emb = build(fused_cls(optim))
    steps(o_f, lin, emb, 2)
    params = list(lin.parameters()) + list(emb.parameters())
    before = ([p.detach().clone() for p in params],
              {i: {k: v.clone() for k, v in o_f.state[p].items()} for i, p in enumerate(params)
               if p in o_f.state})
    with pytest.raises(type(exp)) as info:
        o_f.step()
    assert str(info.value) == str(exp)
    assert "sparse" in str(exp)
    for i, p in enumerate(params):
        assert torch.equal(p.detach(), before[0][i]), i
    assert {i for i, p in enumerate(params) if p in o_f.state and o_f.state[p]} == set(before[1])
    for i, st in before[1].items():
        for k, v in st.items():
            assert torch.equal(o_f.state[params[i]][k], v), (i, k)


# ----------------------------------------------------------------------------- bad grads


BAD_GRAD_KINDS = ["dtype_fp64", "dtype_bf16", "shape_numel", "shape_same_numel", "shape_0d"]
BAD_POSITIONS = [(0, 0), (1, 1)]  # (group, index): first param overall / a later one


def _make_bad_grad(p, kind):
    g = torch.Generator().manual_seed(77)
    if kind.startswith("dtype"):
        dt = torch.float64 if kind == "dtype_fp64" else torch.bfloat16
        p.grad_dtype = None  # allow assigning a grad of another dtype (torch >= 2.9)
        p.grad = torch.randn(p.shape, generator=g).to(dt)
        assert p.grad.dtype != p.dtype
        return
    good = torch.randn(p.shape, generator=g, dtype=p.dtype)
    p.grad = good
    if kind == "shape_numel":
        p.grad.set_(torch.randn(p.numel() + 3, generator=g, dtype=p.dtype))
    elif kind == "shape_same_numel":
        p.grad.set_(torch.randn(p.shape[::-1], generator=g, dtype=p.dtype)
                    if p.dim() > 1 else torch.randn(p.numel(), 1, generator=g, dtype=p.dtype))
    elif kind == "shape_0d":
        p.grad.set_(torch.randn((), generator=g, dtype=p.dtype))
    assert p.grad.shape != p.shape


def _snapshot(opt, params):
    return (
        [p.detach().clone() for p in params],
        {i: {k: v.clone() for k, v in opt.state[p].items()}
         for i, p in enumerate(params) if p in opt.state},
    )


@pytest.mark.parametrize("position", BAD_POSITIONS, ids=["g0p0", "g1p1"])
@pytest.mark.parametrize("kind", BAD_GRAD_KINDS)
@pytest.mark.parametrize("config", REPRESENTATIVE_CONFIGS, ids=config_ids(REPRESENTATIVE_CONFIGS))
def test_bad_grad_raises_before_modifying_anything(config, kind, position):
    dtype = torch.float32
    shapes = [(3, 4), (7,), (5, 2), (4, 3)]
    values = make_param_values(shapes, dtype, seed=40)
    grads = make_grad_values(shapes, dtype, num_steps=5, seed=4000)

    def build(cls_get, which):
        ps = as_params(values)
        kw = config.fused_kwargs(dtype) if which == "fused" else config.reference_kwargs(dtype)
        o = cls_get(config.optim)([{"params": ps[:2]}, {"params": ps[2:], "lr": 0.02}], **kw)
        return o, ps

    o_f, p_f = build(fused_cls, "fused")
    o_t, p_t = build(torch_cls, "torch")
    for gs in grads[:2]:  # two good steps: state exists
        for o, ps in ((o_f, p_f), (o_t, p_t)):
            set_grads(ps, gs)
            o.step()
    set_grads(p_f, grads[2])
    group, idx = position
    flat = group * 2 + idx
    _make_bad_grad(p_f[flat], kind)
    before_params, before_state = _snapshot(o_f, p_f)
    with pytest.raises(RuntimeError, match=rf"param_groups\[{group}\]\['params'\]\[{idx}\]"):
        o_f.step()
    after_params, after_state = _snapshot(o_f, p_f)
    for i, (a, b) in enumerate(zip(after_params, before_params)):
        assert torch.equal(a, b), f"param {i} modified by the failed step"
    assert after_state.keys() == before_state.keys()
    for i in before_state:
        assert after_state[i].keys() == before_state[i].keys()
        for k in before_state[i]:
            assert torch.equal(after_state[i][k], before_state[i][k]), (i, k)
    # every other param had a good grad and is untouched (checked above); now fix the grad and
    # continue: the run equals a torch run that never saw the failed step
    for gs in grads[2:]:
        set_grads(p_f, gs)
        set_grads(p_t, gs)
        o_f.step()
        o_t.step()
    assert_runs_match(o_f, o_t, p_f, p_t, config)


# ----------------------------------------------------------------------------- NaN / Inf


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("config", REPRESENTATIVE_CONFIGS, ids=config_ids(REPRESENTATIVE_CONFIGS))
def test_nan_inf_grads_propagate_like_torch(config, dtype, isa):
    shapes = [(17,), (33,), (5,)]
    values = make_param_values(shapes, dtype, seed=41)
    grads = make_grad_values(shapes, dtype, seed=4100)
    # step 2: NaN, +inf, -inf at various (vector-body and tail) positions of param 0 and 1;
    # step 6: a lone +inf in param 1 (previously finite entries); param 2 always finite.
    grads[2][0][[0, 9, 16]] = torch.tensor([float("nan"), float("inf"), -float("inf")],
                                           dtype=dtype)
    grads[2][1][[3, 32]] = torch.tensor([float("inf"), float("nan")], dtype=dtype)
    grads[6][1][20] = float("inf")
    # also a param that starts at +-inf
    values[1][5] = float("inf")

    def run(cls_get, which):
        ps = as_params(values)
        kw = config.fused_kwargs(dtype) if which == "fused" else config.reference_kwargs(dtype)
        o = cls_get(config.optim)(ps, **kw)
        for gs in grads:
            set_grads(ps, gs)
            o.step()
        return o, ps

    o_t, p_t = run(torch_cls, "torch")
    o_f, p_f = run(fused_cls, "fused")
    assert any(torch.isnan(p).any() or torch.isinf(p).any() for p in p_t)  # the test bites
    assert_runs_match(o_f, o_t, p_f, p_t, config, equal_nan=True)
    assert len(grads) == NUM_STEPS
