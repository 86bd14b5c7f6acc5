"""Meta-SGD against independent truths: finite differences for the gradient with respect to
the learned rates, the closed-form one-step rate gradient, and equality with MAML when the
rates are frozen at ``inner_lr``."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from metaloop.algorithms import MAML, MetaSGD
from metaloop.models import MLP
from metaloop.tasks import Sinusoid

torch.set_num_threads(1)


def flat(tensors) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def setup(seed: int = 0, tasks: int = 2):
    torch.manual_seed(seed)
    model = MLP(1, 1, hidden=(4, 4), activation="tanh").double()
    batch = Sinusoid(shots=5, queries=5, dtype=torch.float64).sample(
        tasks, torch.Generator().manual_seed(seed)
    )
    return model, batch


@pytest.mark.parametrize(
    ("granularity", "steps"), [("element", 1), ("element", 2), ("tensor", 2), ("global", 2)]
)
def test_meta_gradient_wrt_rates_and_init_matches_finite_differences(
    granularity, steps, numeric_gradient
):
    model, batch = setup()
    learner = MetaSGD(model, inner_lr=0.05, inner_steps=steps, granularity=granularity)
    with torch.no_grad():  # rates away from their common initial value
        for p in learner.parameters():
            if p not in set(model.parameters()):
                p.mul_(torch.empty_like(p).uniform_(0.5, 1.5))
    rates = [p for n, p in learner.named_parameters() if not n.startswith("model.")]
    assert rates and all(r.dtype == torch.float64 for r in rates)
    params = list(model.parameters()) + rates
    loss, _ = learner.meta_loss(batch)
    analytic = flat(torch.autograd.grad(loss, params))
    numeric = numeric_gradient(lambda: learner.meta_loss(batch)[0], params)
    assert rel_err(analytic, numeric) < 1e-5
    n_rates = sum(r.numel() for r in rates)
    assert rel_err(analytic[-n_rates:], numeric[-n_rates:]) < 1e-5
    assert float(numeric[-n_rates:].abs().max()) > 1e-4  # rates do receive gradient


def test_one_step_rate_gradient_closed_form():
    """For one step ``theta' = theta - alpha o g_s`` with ``g_s = grad L_s(theta)`` (which does
    not depend on ``alpha``), ``d L_q(theta') / d alpha = -g_s o grad L_q(theta')``, averaged
    over tasks; computed here per task with plain autograd."""
    model, batch = setup(1, tasks=3)
    learner = MetaSGD(model, inner_lr=0.1, inner_steps=1)
    loss, _ = learner.meta_loss(batch)
    names = [n for n, _ in model.named_parameters()]
    rates = [learner.lrs[n.replace(".", "__")] for n in names]
    got = torch.autograd.grad(loss, rates)

    theta = [p.detach() for p in model.parameters()]
    expected = [torch.zeros_like(t) for t in theta]
    for task in batch:
        t0 = [t.clone().requires_grad_() for t in theta]
        support = nn.functional.mse_loss(
            torch.func.functional_call(model, dict(zip(names, t0)), (task.support_x,)),
            task.support_y,
        )
        g_s = torch.autograd.grad(support, t0)
        adapted = [(t - 0.1 * g).detach().requires_grad_() for t, g in zip(theta, g_s)]
        query = nn.functional.mse_loss(
            torch.func.functional_call(model, dict(zip(names, adapted)), (task.query_x,)),
            task.query_y,
        )
        g_q = torch.autograd.grad(query, adapted)
        for e, gs, gq in zip(expected, g_s, g_q):
            e -= gs * gq / len(batch)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("steps", [1, 3])
def test_frozen_rates_equal_maml(steps):
    """With ``alpha`` fixed at ``inner_lr`` (not trained) Meta-SGD is MAML: same loss and
    same gradient with respect to ``theta``."""
    model, batch = setup(2, tasks=4)
    meta_sgd = MetaSGD(model, inner_lr=0.03, inner_steps=steps)
    for p in meta_sgd.lrs.parameters():
        p.requires_grad_(False)
    maml = MAML(model, inner_lr=0.03, inner_steps=steps)
    loss_a, _ = meta_sgd.meta_loss(batch)
    loss_b, _ = maml.meta_loss(batch)
    torch.testing.assert_close(loss_a, loss_b, rtol=1e-13, atol=0)
    ga = torch.autograd.grad(loss_a, list(model.parameters()))
    gb = torch.autograd.grad(loss_b, list(model.parameters()))
    for a, b in zip(ga, gb):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_rates_follow_adapt_and_granularity():
    torch.manual_seed(0)
    model = MLP(2, 3, hidden=(5,))
    head = MetaSGD(model, inner_lr=0.2, adapt="layers.2")
    assert sorted(head.lrs.keys()) == ["layers__2__bias", "layers__2__weight"]
    assert head.lrs["layers__2__weight"].shape == (3, 5)
    assert torch.all(head.lrs["layers__2__weight"] == 0.2)
    tensor = MetaSGD(model, inner_lr=0.2, granularity="tensor")
    assert all(p.shape == () for p in tensor.lrs.parameters())
    assert len(list(tensor.lrs.parameters())) == 4
    glob = MetaSGD(model, inner_lr=0.2, granularity="global")
    rate = glob.lrs["global"]
    assert rate.shape == () and float(rate.detach()) == pytest.approx(0.2)
    with pytest.raises(ValueError, match="granularity"):
        MetaSGD(model, granularity="layer")


def hand_written_meta_loss(model, rates, batch, steps):
    """Mean query MSE after ``steps`` steps of ``theta <- theta - alpha o g`` written out with
    ``torch.autograd`` (create_graph), independent of the library's inner loop."""
    names = [n for n, _ in model.named_parameters()]
    losses = []
    for task in batch:
        theta = dict(model.named_parameters())
        for _ in range(steps):
            support = nn.functional.mse_loss(
                torch.func.functional_call(model, theta, (task.support_x,)), task.support_y
            )
            grads = torch.autograd.grad(support, list(theta.values()), create_graph=True)
            theta = {n: theta[n] - rates[n] * g for n, g in zip(names, grads)}
        query = torch.func.functional_call(model, theta, (task.query_x,))
        losses.append(nn.functional.mse_loss(query, task.query_y))
    return torch.stack(losses).mean()


@pytest.mark.parametrize("granularity", ["element", "global"])
def test_meta_loss_and_gradient_equal_a_hand_written_inner_loop(granularity):
    """The refactor onto composable inner optimizers keeps Meta-SGD's numbers: loss and
    meta-gradient (initialisation and rates) equal a loop written out by hand."""
    model, batch = setup(2, tasks=3)
    learner = MetaSGD(model, inner_lr=0.05, inner_steps=2, granularity=granularity)
    with torch.no_grad():
        for p in learner.lrs.values():
            p.mul_(torch.empty_like(p).uniform_(0.5, 1.5))
    names = [n for n, _ in model.named_parameters()]
    rates = (
        dict.fromkeys(names, learner.lrs["global"])
        if granularity == "global"
        else {n: learner.lrs[n.replace(".", "__")] for n in names}
    )
    params = list(learner.parameters())
    ours, _ = learner.meta_loss(batch)
    theirs = hand_written_meta_loss(model, rates, batch, 2)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(
        flat(torch.autograd.grad(ours, params)),
        flat(torch.autograd.grad(theirs, params)),
        rtol=1e-10,
        atol=1e-12,
    )


def test_an_optimizer_object_and_copies_of_learned_rates():
    """A learner takes an inner optimizer object as well as a name; a copy of a Meta-SGD
    learner adapts with its own rates, not the original's."""
    import copy

    from metaloop.functional.optim import add_decayed_weights, chain, scale_by_learning_rate

    model, batch = setup(4)
    by_name = MAML(model, inner_lr=0.05, inner_steps=2).meta_loss(batch)[0]
    plain = chain(scale_by_learning_rate(0.05))
    by_object = MAML(model, inner_optimizer=plain, inner_steps=2).meta_loss(batch)[0]
    torch.testing.assert_close(by_object, by_name, rtol=1e-14, atol=0)
    decayed = chain(add_decayed_weights(0.5, "init"), scale_by_learning_rate(0.05))
    assert MAML(model, inner_optimizer=decayed, inner_steps=2).meta_loss(batch)[0] != by_name
    learner = MetaSGD(model, inner_lr=0.05, inner_steps=2)
    twin = copy.deepcopy(learner)
    with torch.no_grad():
        for p in twin.lrs.values():
            p.mul_(2.0)
    assert float(twin.meta_loss(batch)[0]) != float(learner.meta_loss(batch)[0])
    torch.testing.assert_close(learner.meta_loss(batch)[0], by_name, rtol=1e-14, atol=0)
    with pytest.raises(ValueError, match="inner_optimizer_kwargs apply to a named"):
        MAML(model, inner_optimizer=plain, inner_optimizer_kwargs={"beta": 0.5})


def test_a_global_rate_saved_as_global_lr_by_earlier_versions_loads():
    torch.manual_seed(0)
    learner = MetaSGD(MLP(1, 1, hidden=(4,)), inner_lr=0.01, granularity="global")
    state = learner.state_dict()
    state["global_lr"] = state.pop("lrs.global").detach().clone().fill_(0.25)
    learner.load_state_dict(state)
    assert float(learner.lrs["global"]) == 0.25
