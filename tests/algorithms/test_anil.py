"""ANIL: MAML adapting only the head, checked against MAML with the same ``adapt`` and
against central finite differences (float64)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from metaloop.algorithms import ANIL, MAML
from metaloop.functional.params import split_module
from metaloop.models import MLP
from metaloop.tasks import RotatingBoundary, Sinusoid

torch.set_num_threads(1)


class BodyHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(1, 6), nn.Tanh(), nn.Linear(6, 4), nn.Tanh())
        self.head = nn.Linear(4, 1)

    def forward(self, x):
        return self.head(self.body(x))


def sine_batch(seed=0, tasks=2):
    return Sinusoid(shots=5, queries=5, dtype=torch.float64).sample(
        tasks, torch.Generator().manual_seed(seed)
    )


def test_default_head_prefix_and_inner_loop_touches_only_the_head():
    torch.manual_seed(0)
    model = BodyHead().double()
    learner = ANIL(model, inner_lr=0.1, inner_steps=3)
    assert learner.adapt_names == ["head.weight", "head.bias"]
    params, buffers = split_module(model)
    task = sine_batch()[0]
    adapted = learner.adapt_params(params, buffers, task.support_x, task.support_y, 3)
    for name, p in params.items():
        if name.startswith("head"):
            assert not torch.equal(adapted[name], p)
        else:
            assert adapted[name] is p


def test_anil_is_maml_with_adapt_head():
    torch.manual_seed(1)
    model = MLP(1, 1, hidden=(8, 8)).double()
    batch = sine_batch(1, tasks=3)
    a = ANIL(model, head="layers.4", inner_lr=0.05, inner_steps=2)
    b = MAML(model, adapt="layers.4", inner_lr=0.05, inner_steps=2)
    la, _ = a.meta_loss(batch)
    lb, _ = b.meta_loss(batch)
    torch.testing.assert_close(la, lb, rtol=0, atol=0)
    for ga, gb in zip(
        torch.autograd.grad(la, list(model.parameters())),
        torch.autograd.grad(lb, list(model.parameters())),
    ):
        torch.testing.assert_close(ga, gb, rtol=0, atol=0)


def test_anil_meta_gradient_matches_finite_differences_including_the_body(numeric_gradient):
    torch.manual_seed(2)
    model = BodyHead().double()
    batch = sine_batch(2)
    learner = ANIL(model, inner_lr=0.1, inner_steps=2)
    params = list(model.parameters())
    loss, _ = learner.meta_loss(batch)
    analytic = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)])
    numeric = numeric_gradient(lambda: learner.meta_loss(batch)[0], params)
    assert float((analytic - numeric).norm() / numeric.norm()) < 1e-5
    # the body's second-order term is real: first-order ANIL misses it
    fo_loss, _ = ANIL(model, inner_lr=0.1, inner_steps=2, first_order=True).meta_loss(batch)
    fo = torch.cat([g.reshape(-1) for g in torch.autograd.grad(fo_loss, params)])
    assert float((fo - numeric).norm() / numeric.norm()) > 1e-3


def test_anil_trains_on_classification():
    torch.manual_seed(3)
    family = RotatingBoundary(shots=10, queries=20, angle_std=60.0)
    model = MLP(2, 2, hidden=(16,))
    learner = ANIL(model, head="layers.2", inner_lr=1.0, inner_steps=2, loss="cross_entropy")
    outer = torch.optim.Adam(learner.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(3)
    for _ in range(60):
        loss, _ = learner.meta_loss(family.sample(8, gen))
        outer.zero_grad()
        loss.backward()
        outer.step()
    test = family.sample(50, torch.Generator().manual_seed(99))
    result = learner.evaluate_batch(test, steps=(2,))
    assert float(result[2]["accuracy"].mean()) > 0.8


def test_clear_errors():
    model = MLP(1, 1, hidden=(4,))
    with pytest.raises(ValueError, match=r"ANIL found no head parameter.*try head='layers\.2'"):
        ANIL(model)
    with pytest.raises(ValueError, match=r"MAML, not ANIL"):
        ANIL(model, head="layers")
    with pytest.raises(TypeError, match=r"head=\.\.\., not adapt"):
        ANIL(model, adapt="layers.2")
    with pytest.raises(ValueError, match="inner_lr"):
        ANIL(model, head="layers.2", inner_lr=-1.0)
    assert "head='layers.2'" in repr(ANIL(model, head="layers.2"))
