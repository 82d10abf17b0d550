import warnings

import pytest
import torch

import fusedoptim

AVAILABLE_ISAS = list(fusedoptim.available_cpu_capabilities())


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "isa: test is parametrized over fusedoptim.available_cpu_capabilities()"
    )
    config.addinivalue_line("markers", "slow: a long or memory-hungry test (it still runs by default)")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "isa" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.isa)


@pytest.fixture(autouse=True)
def _restore_global_state():
    """Every test leaves the ISA, default dtype, grad mode and RNG as it found them."""
    isa = fusedoptim.cpu_capability()
    dtype = torch.get_default_dtype()
    grad_enabled = torch.is_grad_enabled()
    rng = torch.get_rng_state()
    yield
    if fusedoptim.cpu_capability() != isa:
        fusedoptim.set_cpu_capability(isa)
    torch.set_default_dtype(dtype)
    torch.set_grad_enabled(grad_enabled)
    torch.set_rng_state(rng)


@pytest.fixture(params=AVAILABLE_ISAS)
def isa(request):
    """Run the test with fusedoptim forced to each ISA this machine+build can run."""
    name = request.param
    prev = fusedoptim.set_cpu_capability(name)
    assert fusedoptim.cpu_capability() == name
    yield name
    fusedoptim.set_cpu_capability(prev)


@pytest.fixture
def no_reference_path_warning():
    """Fail if a ReferencePathWarning is emitted (dense CPU params must never fall back)."""
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        yield rec
    bad = [w for w in rec if issubclass(w.category, fusedoptim.ReferencePathWarning)]
    assert not bad, [str(w.message) for w in bad]
