"""LSLR (MAML++'s per-layer per-step learned inner rates) against independent truths: an
inner loop written out by hand with ``torch.autograd``, float64 central differences for the
meta-gradient with respect to the rates and the initialisation, MAML when every rate equals
``inner_lr``, and the last step's rates reused past the trained steps."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call

from metaloop.algorithms import LSLR, MAML
from metaloop.algorithms.registry import resolve
from metaloop.models import MLP
from metaloop.tasks import Sinusoid

torch.set_num_threads(1)


def setup(seed: int = 0, tasks: int = 2, steps: int = 2, **kwargs):
    torch.manual_seed(seed)
    model = MLP(1, 1, hidden=(4, 4), activation="tanh").double()
    batch = Sinusoid(shots=5, queries=5, dtype=torch.float64).sample(
        tasks, torch.Generator().manual_seed(seed)
    )
    learner = LSLR(model, inner_lr=0.05, inner_steps=steps, **kwargs)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # distinct rates per tensor and per step
        for rate in learner.lrs.values():
            rate.mul_(torch.empty(rate.shape, dtype=rate.dtype).uniform_(0.5, 2.0, generator=g))
    return learner, batch


def hand_written(learner: LSLR, batch, steps: int, create_graph: bool = True):
    """Mean query MSE after ``steps`` steps of ``theta_l <- theta_l - a[l, min(k, K-1)] g_l``,
    with the rates read from the learner's parameters by name."""
    model = learner.model
    names = [n for n, _ in model.named_parameters()]
    rates = {n: getattr(learner.lrs, n.replace(".", "__")) for n in names}
    trained = learner.inner_steps
    losses = []
    for task in batch:
        theta = dict(model.named_parameters())
        for k in range(steps):
            support = nn.functional.mse_loss(
                functional_call(model, theta, (task.support_x,)), task.support_y
            )
            grads = torch.autograd.grad(support, list(theta.values()), create_graph=create_graph)
            row = min(k, trained - 1)
            theta = {n: theta[n] - rates[n][row] * g for n, g in zip(names, grads)}
        prediction = functional_call(model, theta, (task.query_x,))
        losses.append(nn.functional.mse_loss(prediction, task.query_y))
    return torch.stack(losses).mean()


def flat_grad(loss, params):
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)])


@pytest.mark.parametrize("vectorize", ["vmap", "loop"])
def test_meta_loss_and_gradient_equal_a_hand_written_inner_loop(vectorize):
    learner, batch = setup(steps=3, vectorize=vectorize)
    params = list(learner.parameters())
    ours, _ = learner.meta_loss(batch)
    theirs = hand_written(learner, batch, 3)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(
        flat_grad(ours, params), flat_grad(theirs, params), rtol=1e-10, atol=1e-12
    )


@pytest.mark.parametrize("steps", [1, 2])
def test_meta_gradient_wrt_rates_and_init_matches_central_differences(steps, numeric_gradient):
    learner, batch = setup(seed=3, steps=steps)
    rates = list(learner.lrs.values())
    assert [tuple(r.shape) for r in rates] == [(steps,)] * 6  # 3 layers x (weight, bias)
    params = list(learner.model.parameters()) + rates
    analytic = flat_grad(learner.meta_loss(batch)[0], params)
    numeric = numeric_gradient(lambda: learner.meta_loss(batch)[0], params)
    assert float((analytic - numeric).norm() / numeric.norm()) < 1e-6
    rate_part = numeric[-6 * steps :]
    assert float(rate_part.abs().min()) > 1e-6  # every rate of every step gets a gradient
    torch.testing.assert_close(analytic[-6 * steps :], rate_part, rtol=1e-5, atol=1e-9)


def test_untrained_rates_make_it_maml():
    torch.manual_seed(0)
    model = MLP(1, 1, hidden=(8,)).double()
    batch = Sinusoid(dtype=torch.float64).sample(3, torch.Generator().manual_seed(0))
    lslr = LSLR(model, inner_lr=0.02, inner_steps=2)
    maml = MAML(model, inner_lr=0.02, inner_steps=2)
    a, b = lslr.meta_loss(batch)[0], maml.meta_loss(batch)[0]
    torch.testing.assert_close(a, b, rtol=1e-14, atol=0)
    params = list(model.parameters())
    torch.testing.assert_close(flat_grad(a, params), flat_grad(b, params), rtol=1e-12, atol=0)


def test_evaluation_past_the_trained_steps_reuses_the_last_rates():
    """Trained for 2 steps, evaluated at 0, 2 and 5: steps 2..4 use the rates of step 1."""
    learner, batch = setup(seed=5, steps=2)
    got = learner.evaluate_batch(batch, steps=(0, 2, 5))
    for steps in (0, 2, 5):
        expected = torch.stack([hand_written(learner, [task], steps, False) for task in batch])
        torch.testing.assert_close(got[steps]["loss"], expected.detach(), rtol=1e-10, atol=1e-12)
    # adapt follows the same rule
    task = batch[0]
    predict = learner.adapt((task.support_x, task.support_y), steps=5)
    loss = nn.functional.mse_loss(predict(task.query_x), task.query_y)
    torch.testing.assert_close(loss, got[5]["loss"][0], rtol=1e-10, atol=1e-12)


def test_checkpoint_and_state_dict_round_trip():
    learner, batch = setup(seed=7, steps=2)
    params = list(learner.parameters())
    reference = flat_grad(learner.meta_loss(batch)[0], params)
    remat, _ = setup(seed=7, steps=2, checkpoint=True)
    torch.testing.assert_close(
        flat_grad(remat.meta_loss(batch)[0], list(remat.parameters())), reference
    )
    state = learner.state_dict()
    assert "lrs.layers__0__weight" in state and state["lrs.layers__0__weight"].shape == (2,)
    fresh = LSLR(MLP(1, 1, hidden=(4, 4), activation="tanh").double(), inner_steps=2)
    fresh.load_state_dict(state)
    torch.testing.assert_close(fresh.meta_loss(batch)[0], learner.meta_loss(batch)[0])


def test_registered_and_bad_input_is_named():
    assert resolve("lslr") is LSLR
    with pytest.raises(ValueError, match="named inner_optimizer"):
        from metaloop.functional.optim import sgd

        LSLR(MLP(1, 1, hidden=(4,)), inner_optimizer=sgd(0.1))
    with pytest.raises(ValueError, match="inner_steps must be >= 1"):
        LSLR(MLP(1, 1, hidden=(4,)), inner_steps=0)
