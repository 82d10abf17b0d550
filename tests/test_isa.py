"""CPU instruction-set dispatch: introspection API, the FUSEDOPTIM_CPU_CAPABILITY env var, and
bit-identical fp32/fp64 results across every ISA this machine can run (the kernels are written
without FMA contraction so that scalar, AVX2 and AVX-512 agree exactly)."""

import os
import platform
import subprocess
import sys

import pytest
import torch

import fusedoptim
from helpers import (
    as_params,
    assert_fused_path,
    cpu_capability,
    fused_cls,
    make_grad_values,
    make_param_values,
    run_steps,
)
from optim_configs import ALL_CONFIGS, REPRESENTATIVE_CONFIGS, config_ids

ALL_ISAS = ["scalar", "avx2", "avx512"]
IS_X86_64 = platform.machine().lower() in ("x86_64", "amd64")


def test_available_capabilities_are_ordered_known_names():
    avail = fusedoptim.available_cpu_capabilities()
    assert isinstance(avail, list) and avail, avail
    assert avail[0] == "scalar"
    assert all(a in ALL_ISAS for a in avail)
    assert avail == sorted(avail, key=ALL_ISAS.index)  # lowest first
    assert set(avail) <= set(fusedoptim.compiled_cpu_capabilities())
    assert fusedoptim.cpu_capability() in avail


@pytest.mark.skipif(not IS_X86_64, reason="ISA list is x86-64 specific")
def test_compiled_capabilities_include_avx512_on_x86_64():
    compiled = fusedoptim.compiled_cpu_capabilities()
    assert compiled == ["scalar", "avx2", "avx512"]


def _cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


@pytest.mark.skipif(not IS_X86_64 or _cpu_flags() is None, reason="needs /proc/cpuinfo on x86-64")
def test_available_capabilities_follow_cpu_flags():
    flags = _cpu_flags()
    avail = fusedoptim.available_cpu_capabilities()
    assert ("avx2" in avail) == ({"avx2"} <= flags)
    if "avx512" in avail:
        assert "avx512f" in flags
    else:
        assert not {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags


def test_set_cpu_capability_returns_previous_and_validates():
    avail = fusedoptim.available_cpu_capabilities()
    start = fusedoptim.cpu_capability()
    prev = fusedoptim.set_cpu_capability("scalar")
    assert prev == start and fusedoptim.cpu_capability() == "scalar"
    for name in avail:
        prev2 = fusedoptim.set_cpu_capability(name)
        assert fusedoptim.cpu_capability() == name
        assert prev2 in avail
    for bad in ["sse", "AVX2", "", "avx1024"] + [i for i in ALL_ISAS if i not in avail]:
        before = fusedoptim.cpu_capability()
        with pytest.raises(ValueError):
            fusedoptim.set_cpu_capability(bad)
        assert fusedoptim.cpu_capability() == before  # unchanged by the failed call
    fusedoptim.set_cpu_capability(start)


def _subprocess_capability(value):
    env = dict(os.environ)
    env["FUSEDOPTIM_CPU_CAPABILITY"] = value
    code = (
        "import fusedoptim, json; print(json.dumps([fusedoptim.cpu_capability(), "
        "fusedoptim.available_cpu_capabilities()]))"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120, cwd=os.path.dirname(os.path.abspath(__file__)))
    assert out.returncode == 0, out.stderr
    import json

    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", ALL_ISAS)
def test_env_var_caps_capability_in_subprocess(name):
    """FUSEDOPTIM_CPU_CAPABILITY=<name> at import: the ISA used is <name>, or the best this
    machine has if that is lower (scalar -> always 'scalar')."""
    cap, avail = _subprocess_capability(name)
    if name == "scalar":
        assert cap == "scalar"
    best_here = fusedoptim.available_cpu_capabilities()[-1]
    expected = min(name, best_here, key=ALL_ISAS.index)
    assert cap == expected


def _run_under(isa, config, dtype, shapes, seed):
    values = make_param_values(shapes, dtype, seed=seed)
    grads = make_grad_values(shapes, dtype, seed=seed * 10)
    with cpu_capability(isa):
        params = as_params(values)
        opt = fused_cls(config.optim)(params, **config.fused_kwargs(dtype))
        run_steps(opt, params, grads)
        assert fusedoptim.cpu_capability() == isa
    return opt, params


BITWISE_SHAPES = [(n,) for n in [1, 7, 8, 9, 15, 16, 17, 31, 33, 64, 65, 257]] + [(3, 5, 7)]
# LAMB's per-tensor norms are reductions: SIMD lanes sum in a different order than the scalar
# path, so LAMB is compared across ISAs within rounding (test_lamb_isas_agree_within_rounding).
BITWISE_CONFIGS = [c for c in ALL_CONFIGS if c.expects_fused_path and c.optim != "LAMB"]
LAMB_ISA_CONFIGS = [c for c in ALL_CONFIGS if c.expects_fused_path and c.optim == "LAMB"]


@pytest.mark.skipif(len(fusedoptim.available_cpu_capabilities()) < 2,
                    reason="only one ISA available on this machine")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("config", BITWISE_CONFIGS, ids=config_ids(BITWISE_CONFIGS))
def test_all_isas_bit_identical(config, dtype):
    avail = fusedoptim.available_cpu_capabilities()
    runs = {isa: _run_under(isa, config, dtype, BITWISE_SHAPES, seed=50) for isa in avail}
    o0, p0 = runs["scalar"]
    assert_fused_path(o0)
    for isa, (o, ps) in runs.items():
        assert_fused_path(o)
        for i, (a, b) in enumerate(zip(ps, p0)):
            assert torch.equal(a, b), (
                f"{isa} vs scalar: param {i} (numel {a.numel()}) differs, max abs diff "
                f"{(a.detach() - b.detach()).abs().max().item():.3g}"
            )
            sa, sb = o.state.get(a, {}), o0.state.get(b, {})
            assert sa.keys() == sb.keys()
            for k in sb:
                assert torch.equal(sa[k], sb[k]), (
                    f"{isa} vs scalar: state[{k!r}] of param {i} (numel {a.numel()}) differs, "
                    f"max abs diff {(sa[k].double() - sb[k].double()).abs().max().item():.3g}"
                )


@pytest.mark.skipif(len(fusedoptim.available_cpu_capabilities()) < 2,
                    reason="only one ISA available on this machine")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("config", LAMB_ISA_CONFIGS, ids=config_ids(LAMB_ISA_CONFIGS))
def test_lamb_isas_agree_within_rounding(config, dtype):
    """LAMB on every ISA: the same result as the scalar path up to the rounding of its norm
    reductions (fp64: 1e-12 relative, fp32: 1e-5), and bit-identical to itself run again."""
    avail = fusedoptim.available_cpu_capabilities()
    runs = {isa: _run_under(isa, config, dtype, BITWISE_SHAPES, seed=52) for isa in avail}
    again = _run_under(avail[-1], config, dtype, BITWISE_SHAPES, seed=52)
    tol = dict(rtol=1e-12, atol=1e-14) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-6)
    o0, p0 = runs["scalar"]
    for isa, (o, ps) in runs.items():
        assert_fused_path(o)
        for i, (a, b) in enumerate(zip(ps, p0)):
            torch.testing.assert_close(a, b, **tol, msg=lambda m: f"{isa} param {i}: {m}")
            for k in o0.state[b]:
                torch.testing.assert_close(o.state[a][k], o0.state[b][k], **tol)
    for a, b in zip(again[1], runs[avail[-1]][1]):
        assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_lamb_bits_do_not_depend_on_thread_count(dtype, isa):
    """NOTE: [Deterministic reductions]: the norms are summed over fixed segments, so 1 or 2
    threads give the same bits (large params: several segments, split across threads)."""
    shapes = [(70000,), (33,), (40000,), ()]
    config = ALL_CONFIGS[[c.id for c in ALL_CONFIGS].index("LAMB-lr=0.01,max_grad_norm=1.0")]
    prev = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            results.append(_run_under(isa, config, dtype, shapes, seed=53))
    finally:
        torch.set_num_threads(prev)
    (o1, p1), (o2, p2) = results
    for a, b in zip(p1, p2):
        assert torch.equal(a, b)
        for k in o1.state[a]:
            assert torch.equal(o1.state[a][k], o2.state[b][k]), k


@pytest.mark.skipif(len(fusedoptim.available_cpu_capabilities()) < 2,
                    reason="only one ISA available on this machine")
@pytest.mark.parametrize("config", [c for c in REPRESENTATIVE_CONFIGS if c.optim != "LAMB"],
                         ids=config_ids([c for c in REPRESENTATIVE_CONFIGS if c.optim != "LAMB"]))
def test_switching_isa_mid_training_is_seamless(config):
    """Changing the ISA between steps of one optimizer gives the same result as staying on
    scalar (follows from bit-identity; checks that no per-ISA state is cached)."""
    dtype = torch.float64
    shapes = [(17,), (33,), (3, 5)]
    values = make_param_values(shapes, dtype, seed=51)
    grads = make_grad_values(shapes, dtype, seed=510)
    avail = fusedoptim.available_cpu_capabilities()
    ps_ref = as_params(values)
    o_ref = fused_cls(config.optim)(ps_ref, **config.fused_kwargs(dtype))
    with cpu_capability("scalar"):
        run_steps(o_ref, ps_ref, grads)
    ps = as_params(values)
    o = fused_cls(config.optim)(ps, **config.fused_kwargs(dtype))
    for step, gs in enumerate(grads):
        with cpu_capability(avail[step % len(avail)]):
            run_steps(o, ps, [gs])
    for a, b in zip(ps, ps_ref):
        assert torch.equal(a, b)
