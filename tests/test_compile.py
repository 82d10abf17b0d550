"""opt.step() inside torch.compile: runs, gives the eager result, and does not recompile when
a scheduler changes the lr (NOTE: [Steps under torch.compile] in fusedoptim/optimizer.py)."""

import copy

import pytest
import torch
import torch._dynamo

import fusedoptim

ALGORITHMS = [
    (fusedoptim.Adam, dict(lr=1e-2, weight_decay=0.1, amsgrad=True)),
    (fusedoptim.SGD, dict(lr=1e-1, momentum=0.9, nesterov=True)),
    (fusedoptim.RMSprop, dict(lr=1e-2, centered=True, momentum=0.5)),
    (fusedoptim.LAMB, dict(lr=1e-2, max_grad_norm=1.0)),
    (fusedoptim.Lion, dict(lr=1e-3, weight_decay=0.1)),
]


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(7, 13), torch.nn.Tanh(), torch.nn.Linear(13, 1))


def _train(optimizer_class, kwargs, compile_backend, steps=6):
    model = _model()
    opt = optimizer_class(model.parameters(), **kwargs)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.7)
    inputs = torch.randn(32, 7, generator=torch.Generator().manual_seed(1))
    targets = torch.randn(32, 1, generator=torch.Generator().manual_seed(2))

    def train_step():
        loss = torch.nn.functional.mse_loss(model(inputs), targets)
        loss.backward()
        opt.step()
        opt.zero_grad()
        return loss

    if compile_backend is not None:
        train_step = torch.compile(train_step, backend=compile_backend)
    losses = []
    for _ in range(steps):
        losses.append(train_step().detach())
        scheduler.step()
    return model, opt, torch.stack(losses)


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("optimizer_class, kwargs", ALGORITHMS,
                         ids=[cls.__name__ for cls, _ in ALGORITHMS])
def test_compiled_step_matches_eager_and_never_recompiles(optimizer_class, kwargs):
    eager_model, eager_opt, eager_losses = _train(optimizer_class, kwargs, None)
    # aot_eager traces like inductor but keeps eager numerics, so the comparison is exact.
    with torch._dynamo.config.patch(error_on_recompile=True):
        model, opt, losses = _train(optimizer_class, kwargs, "aot_eager")
    assert opt.last_step_paths == {"fused": 4, "reference": 0}
    assert torch.equal(losses, eager_losses)
    for p, q in zip(model.parameters(), eager_model.parameters()):
        assert torch.equal(p, q)
    assert opt.param_groups[0]["lr"] == pytest.approx(kwargs["lr"] * 0.7**6)
    state, eager_state = opt.state_dict()["state"], eager_opt.state_dict()["state"]
    assert state.keys() == eager_state.keys()
    for index, entry in state.items():
        assert entry.keys() == eager_state[index].keys()
        for key, value in entry.items():
            assert torch.equal(value, eager_state[index][key]), (index, key)


def test_inductor_training_step_matches_eager():
    """The default backend generates its own kernels for the model, which may round
    differently: close, not bit-equal."""
    eager_model, _, eager_losses = _train(fusedoptim.AdamW, dict(lr=1e-2), None)
    with torch._dynamo.config.patch(error_on_recompile=True):
        model, opt, losses = _train(fusedoptim.AdamW, dict(lr=1e-2), "inductor")
    torch.testing.assert_close(losses, eager_losses, rtol=1e-5, atol=1e-6)
    for p, q in zip(model.parameters(), eager_model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_compiled_lbfgs_step_with_closure():
    def run(compiled):
        model = _model()
        opt = fusedoptim.LBFGS(model.parameters(), lr=0.5, max_iter=5, line_search_fn="strong_wolfe")
        inputs = torch.randn(16, 7, generator=torch.Generator().manual_seed(3))

        def closure():
            opt.zero_grad()
            loss = model(inputs).pow(2).mean()
            loss.backward()
            return loss

        step = torch.compile(lambda: opt.step(closure), backend="aot_eager") if compiled else (
            lambda: opt.step(closure))
        losses = torch.stack([step().detach() for _ in range(3)])
        return model, losses

    eager_model, eager_losses = run(False)
    model, losses = run(True)
    assert torch.equal(losses, eager_losses)
    for p, q in zip(model.parameters(), eager_model.parameters()):
        assert torch.equal(p, q)
