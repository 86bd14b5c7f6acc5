"""Normalization policies: functional_call for all, vmap where documented, semantics."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call, grad, vmap

from metaloop.functional.speed import uses_batch_statistics
from metaloop.models import (
    NORM_POLICIES,
    VMAP_POLICIES,
    Conv4,
    PerStepBatchNorm2d,
    make_norm,
    set_norm_step,
)

torch.set_num_threads(1)


def tiny(policy: str) -> Conv4:
    torch.manual_seed(0)
    return Conv4(1, ways=3, hidden=4, image_size=16, norm=policy, groups=2, steps=3)


def call(model, params, buffers, x):
    return functional_call(model, (params, buffers), (x,))


@pytest.mark.parametrize("policy", NORM_POLICIES)
def test_functional_call_and_gradient(policy) -> None:
    model = tiny(policy)
    params, buffers = dict(model.named_parameters()), dict(model.named_buffers())
    x, y = torch.rand(6, 1, 16, 16), torch.tensor([0, 0, 1, 1, 2, 2])
    out = call(model, params, buffers, x)
    assert out.shape == (6, 3) and torch.isfinite(out).all()
    assert torch.allclose(out, model(x), atol=1e-6) or policy == "batch_running"

    def loss(p, b):
        return torch.nn.functional.cross_entropy(call(model, p, b, x), y)

    # buffers enter the transform as inputs, as in the engine's inner loop: then even
    # batch_running's in-place running-statistics update is allowed
    grads = grad(loss)(params, buffers)
    assert all(torch.isfinite(g).all() for g in grads.values())
    assert grads["features.0.conv.weight"].abs().sum() > 0


@pytest.mark.parametrize("policy", NORM_POLICIES)
def test_vmap_over_tasks(policy) -> None:
    model = tiny(policy)
    params, buffers = dict(model.named_parameters()), dict(model.named_buffers())
    tasks = torch.rand(4, 5, 1, 16, 16)

    def per_task(x):
        return call(model, params, buffers, x)

    if policy in VMAP_POLICIES:
        batched = vmap(per_task)(tasks)
        looped = torch.stack([per_task(t) for t in tasks])
        assert torch.allclose(batched, looped, atol=1e-5)
    else:
        # in-place running-statistics updates cannot be vectorized: the engine loops
        with pytest.raises(RuntimeError, match="running_mean"):
            vmap(per_task)(tasks)
        model.eval()  # reading running statistics is fine
        assert vmap(per_task)(tasks).shape == (4, 5, 3)
    assert VMAP_POLICIES == set(NORM_POLICIES) - {"batch_running"}


def test_transductive_batch_statistics() -> None:
    """batch_episode normalises with the batch: an image's output depends on its batch
    (also in eval mode); per-image policies do not."""
    x = torch.rand(4, 1, 16, 16)
    other = torch.cat([x[:1], torch.rand(3, 1, 16, 16)])
    for policy in ("batch_episode", "layer", "instance", "group", "none"):
        model = tiny(policy).eval()
        same = torch.allclose(model(x)[0], model(other)[0], atol=1e-6)
        assert same == (policy != "batch_episode"), policy


def test_batch_running_updates_and_uses_running_statistics() -> None:
    norm = make_norm("batch_running", 2)
    x = torch.randn(8, 2, 3, 3) * 3 + 5
    norm.train()
    norm(x)
    assert torch.allclose(norm.running_mean, 0.1 * x.mean(dim=(0, 2, 3)), atol=1e-5)
    norm.eval()
    single = norm(x[:1])
    expected = (x[:1] - norm.running_mean[None, :, None, None]) / torch.sqrt(
        norm.running_var[None, :, None, None] + norm.eps
    )
    assert torch.allclose(single, expected, atol=1e-5)
    assert not list(make_norm("batch_episode", 2).buffers())  # no running statistics


def test_per_step_affine() -> None:
    norm = PerStepBatchNorm2d(2, steps=3)
    assert norm.weight.shape == (3, 2) and norm.bias.shape == (3, 2)
    with torch.no_grad():
        norm.bias.copy_(torch.tensor([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]]))
    x = torch.randn(5, 2, 3, 3)
    model = torch.nn.Sequential(norm)
    outs = []
    for step in (0, 1, 2, 7):
        set_norm_step(model, step)
        outs.append(model(x).mean().item())
    assert outs[0] == pytest.approx(0.0, abs=1e-5)
    assert outs[1] == pytest.approx(1.0, abs=1e-5) and outs[2] == pytest.approx(2.0, abs=1e-5)
    assert outs[3] == pytest.approx(2.0, abs=1e-5)  # beyond the last step: last row
    conv = tiny("batch_per_step")
    set_norm_step(conv, 2)
    assert all(m.step == 2 for m in conv.modules() if isinstance(m, PerStepBatchNorm2d))
    with pytest.raises(ValueError, match="steps >= 1"):
        PerStepBatchNorm2d(2, steps=0)


def test_norm_errors() -> None:
    with pytest.raises(ValueError, match=r"groups=3 for 8 channels; choose one of \[1, 2, 4, 8\]"):
        make_norm("group", 8, groups=3)
    with pytest.raises(ValueError, match="choose one of batch_episode, batch_running"):
        make_norm("batchnorm", 8)
    layer = make_norm("layer", 4)
    instance = make_norm("instance", 4)
    assert isinstance(layer, torch.nn.GroupNorm) and layer.num_groups == 1
    assert isinstance(instance, torch.nn.GroupNorm) and instance.num_groups == 4


@pytest.mark.parametrize("policy", NORM_POLICIES)
def test_uses_batch_statistics(policy) -> None:
    model = tiny(policy)
    batch_dependent = policy in ("batch_episode", "batch_per_step")
    assert uses_batch_statistics(model) == (batch_dependent or policy == "batch_running")
    model.eval()
    assert uses_batch_statistics(model) == batch_dependent
    # independent of the flag, check what it claims: one image's output alone vs in a batch
    x = torch.randn(6, 1, 16, 16)
    with torch.no_grad():
        same = torch.allclose(model(x)[:1], model(x[:1]), atol=1e-5)
    assert same != batch_dependent
