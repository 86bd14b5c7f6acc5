"""The ``vmap`` and loop engines give the same numbers (losses and meta-gradients) for every
gradient-based learner, and ``auto`` falls back to the loop where ``vmap`` cannot run."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

from metaloop.algorithms import FOMAML, MAML, JointTraining, MetaSGD, Reptile
from metaloop.functional import VectorizePolicy, map_tasks
from metaloop.models import MLP
from metaloop.tasks import RotatingBoundary, Sinusoid

torch.set_num_threads(1)
TOL = {"rtol": 1e-6, "atol": 1e-6}


def sine_batch(tasks: int = 6):
    return Sinusoid(shots=5, queries=7).sample(tasks, torch.Generator().manual_seed(0))


def twin_learners(cls, **kwargs):
    torch.manual_seed(0)
    model = MLP(1, 1, hidden=(40, 40))
    a = cls(model, vectorize="vmap", **kwargs)
    b = cls(copy.deepcopy(model), vectorize="loop", **kwargs)
    return a, b


def loss_and_grads(learner, batch):
    loss, metrics = learner.meta_loss(batch)
    grads = torch.autograd.grad(loss, [p for p in learner.parameters() if p.requires_grad])
    return loss.detach(), metrics, grads


@pytest.mark.parametrize(
    ("cls", "kwargs"),
    [
        (MAML, {"inner_steps": 2}),
        (MAML, {"inner_steps": 2, "inner_optimizer": "adam"}),
        (FOMAML, {"inner_steps": 2}),
        (Reptile, {"inner_steps": 3}),
        (Reptile, {"inner_steps": 3, "use_query": False}),
        (MetaSGD, {"inner_steps": 1}),
        (MAML, {"inner_steps": 1, "adapt": "layers.4"}),
    ],
)
def test_vmap_and_loop_agree_on_loss_and_meta_gradient(cls, kwargs):
    batch = sine_batch()
    a, b = twin_learners(cls, inner_lr=0.01, **kwargs)
    loss_a, metrics_a, grads_a = loss_and_grads(a, batch)
    loss_b, metrics_b, grads_b = loss_and_grads(b, batch)
    assert a.policy.uses_vmap and not b.policy.uses_vmap
    torch.testing.assert_close(loss_a, loss_b, **TOL)
    assert metrics_a.keys() == metrics_b.keys()
    for k in metrics_a:
        assert metrics_a[k] == pytest.approx(metrics_b[k], rel=1e-6, abs=1e-6)
    assert len(grads_a) == len(grads_b) > 0
    for ga, gb in zip(grads_a, grads_b):
        torch.testing.assert_close(ga, gb, **TOL)


@pytest.mark.parametrize("cls", [MAML, MetaSGD, JointTraining])
def test_vmap_and_loop_agree_on_evaluate_batch(cls):
    batch = sine_batch(8)
    a, b = twin_learners(cls, inner_lr=0.01, inner_steps=1)
    ra = a.evaluate_batch(batch, steps=(0, 1, 5))
    rb = b.evaluate_batch(batch, steps=(0, 1, 5))
    assert sorted(ra) == sorted(rb) == [0, 1, 5]
    for s in ra:
        assert ra[s]["loss"].shape == (8,)
        torch.testing.assert_close(ra[s]["loss"], rb[s]["loss"], **TOL)
    # more steps help on the support-fitted query (sanity of the per-step read-out)
    assert float(ra[5]["loss"].mean()) < float(ra[0]["loss"].mean())


def test_vmap_and_loop_agree_on_classification_accuracy():
    batch = RotatingBoundary(shots=10, queries=20).sample(5, torch.Generator().manual_seed(1))
    torch.manual_seed(0)
    model = MLP(2, 2, hidden=(16,))
    a = MAML(model, inner_lr=0.5, loss="cross_entropy", vectorize="vmap")
    b = MAML(copy.deepcopy(model), inner_lr=0.5, loss="cross_entropy", vectorize="loop")
    loss_a, m_a, g_a = loss_and_grads(a, batch)
    loss_b, m_b, g_b = loss_and_grads(b, batch)
    torch.testing.assert_close(loss_a, loss_b, **TOL)
    assert m_a["accuracy"] == pytest.approx(m_b["accuracy"], abs=1e-6)
    for x, y in zip(g_a, g_b):
        torch.testing.assert_close(x, y, **TOL)
    ra, rb = a.evaluate_batch(batch, steps=(0, 3)), b.evaluate_batch(batch, steps=(0, 3))
    for s in (0, 3):
        torch.testing.assert_close(ra[s]["accuracy"], rb[s]["accuracy"])


def test_chunked_batches_give_the_same_numbers():
    batch = sine_batch(7)
    a, _ = twin_learners(MAML, inner_lr=0.01, inner_steps=2)
    c = copy.deepcopy(a)
    c.chunk_size = 3
    loss_a, _, grads_a = loss_and_grads(a, batch)
    loss_c, _, grads_c = loss_and_grads(c, batch)
    torch.testing.assert_close(loss_a, loss_c, **TOL)
    for ga, gc in zip(grads_a, grads_c):
        torch.testing.assert_close(ga, gc, **TOL)
    torch.testing.assert_close(
        a.evaluate_batch(batch, steps=(2,))[2]["loss"],
        c.evaluate_batch(batch, steps=(2,))[2]["loss"],
        **TOL,
    )


def test_map_tasks_vmap_equals_loop_and_chunks():
    x = torch.randn(5, 4, 3)
    w = torch.randn(3)

    def fn(xi):
        return (xi @ w).sin().sum(), xi.mean(0)

    out_v = map_tasks(fn, x, policy=VectorizePolicy("vmap"))
    out_l = map_tasks(fn, x, policy=VectorizePolicy("loop"))
    out_c = map_tasks(fn, x, policy=VectorizePolicy("vmap"), chunk_size=2)
    for v, l, c in zip(out_v, out_l, out_c):
        assert v.shape[0] == 5
        torch.testing.assert_close(v, l, **TOL)
        torch.testing.assert_close(v, c, **TOL)


class BatchNormNet(nn.Module):
    """Batch norm in training mode updates its running statistics in place: not vmappable."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(1, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 1))

    def forward(self, x):
        return self.net(x)


def test_auto_falls_back_to_loop_with_a_warning_and_vmap_mode_raises():
    batch = sine_batch(3)
    torch.manual_seed(0)
    model = BatchNormNet()
    auto = MAML(copy.deepcopy(model), inner_lr=0.01, vectorize="auto")
    loop = MAML(copy.deepcopy(model), inner_lr=0.01, vectorize="loop")
    with pytest.warns(RuntimeWarning, match="falling back to a per-task loop"):
        loss_auto, _ = auto.meta_loss(batch)
    assert auto.policy.vmap_failed and not auto.policy.uses_vmap
    loss_loop, _ = loop.meta_loss(batch)
    torch.testing.assert_close(loss_auto, loss_loop, **TOL)
    strict = MAML(copy.deepcopy(model), inner_lr=0.01, vectorize="vmap")
    with pytest.raises(Exception):  # noqa: B017 - whatever vmap raises is passed through
        strict.meta_loss(batch)


def test_loop_engine_updates_running_statistics_and_differentiates_correctly(numeric_gradient):
    """With the loop engine a batch-norm model in training mode updates its running
    statistics inside the inner loop (buffers enter the gradient transform as inputs), and
    the second-order meta-gradient still matches central finite differences (float64; in
    training mode the output depends on batch statistics only, not on the buffers)."""
    torch.manual_seed(1)
    model = BatchNormNet().double()
    batch = Sinusoid(shots=5, queries=7, dtype=torch.float64).sample(
        2, torch.Generator().manual_seed(1)
    )
    learner = MAML(model, inner_lr=0.05, inner_steps=2, vectorize="loop")
    tracked = int(model.net[1].num_batches_tracked)
    mean_before = model.net[1].running_mean.clone()
    loss, _ = learner.meta_loss(batch)
    # per task: 2 support passes + 1 query pass
    assert int(model.net[1].num_batches_tracked) == tracked + 2 * 3
    assert not torch.equal(model.net[1].running_mean, mean_before)
    params = list(model.parameters())
    analytic = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)])
    numeric = numeric_gradient(lambda: learner.meta_loss(batch)[0], params)
    assert float((analytic - numeric).norm() / numeric.norm()) < 1e-5


def test_bad_vectorize_mode():
    with pytest.raises(ValueError, match="vectorize must be one of"):
        VectorizePolicy("threads")


def test_auto_runs_convolutional_models_as_a_loop_on_cpu_and_mlps_under_vmap():
    conv = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 4 * 4, 3))
    conv_auto = MAML(conv, inner_lr=0.1, loss="cross_entropy")
    mlp_auto = MAML(MLP(1, 1, hidden=(8,)), inner_lr=0.1)
    assert not conv_auto.policy.uses_vmap_on("cpu") and conv_auto.policy.uses_vmap_on("cuda")
    assert mlp_auto.policy.uses_vmap_on("cpu")
    # an explicit choice is kept on every device
    forced = MAML(copy.deepcopy(conv), inner_lr=0.1, loss="cross_entropy", vectorize="vmap")
    assert forced.policy.uses_vmap_on("cpu")
    # the loop really runs: a function vmap cannot batch (``.item()``) passes without warning
    policy = VectorizePolicy("auto", loop_on_cpu=True)

    def not_vmappable(x):
        return (x * float(x.sum().item()),)

    x = torch.randn(3, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        (out,) = map_tasks(not_vmappable, x, policy=policy)
    torch.testing.assert_close(out, x * x.sum(1, keepdim=True))
    assert policy.vmap_failed is None
