"""ResNet-12: shapes and parameter count against the architecture's arithmetic, the
residual sum against a hand-built block, bad arguments, the second-order MAML
meta-gradient through it against finite differences (float64), and the config path."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from metaloop.algorithms import FOMAML, MAML, ProtoMAML, ProtoNet
from metaloop.cli.build import build_learner, build_model
from metaloop.cli.config import load_config
from metaloop.models import ResidualBlock, ResNet12
from metaloop.tasks import TaskBatch

torch.set_num_threads(1)


def block_params(c_in: int, c_out: int) -> int:
    convs = 9 * c_in * c_out + 2 * 9 * c_out * c_out + c_in * c_out  # no conv biases
    return convs + 4 * 2 * c_out  # four batch norms, scale and shift each


@pytest.mark.parametrize(("size", "side"), [(28, 1), (84, 5)])
def test_shapes_and_parameter_count(size, side) -> None:
    model = ResNet12(1, ways=5, widths=(4, 6, 8, 10), image_size=size)
    x = torch.rand(3, 1, size, size)
    assert model.embedding_dim == 10 and model.embed(x).shape == (3, 10)
    assert model(x).shape == (3, 5)
    maps = model.features[:4](x)  # before the global average
    assert maps.shape == (3, 10, side, side)
    expected = sum(block_params(a, b) for a, b in zip((1, 4, 6, 8), (4, 6, 8, 10))) + 10 * 5 + 5
    assert sum(p.numel() for p in model.parameters()) == expected
    assert sum(isinstance(m, nn.Conv2d) for m in model.modules()) == 4 * 4  # 12 + 4 shortcuts


def test_literature_widths_have_the_published_size() -> None:
    # MetaOptNet's ResNet-12 (64-160-320-640, no DropBlock): about 12.4 M parameters
    n = sum(p.numel() for p in ResNet12(3, ways=None, widths=(64, 160, 320, 640)).parameters())
    assert n == sum(block_params(a, b) for a, b in zip((3, 64, 160, 320), (64, 160, 320, 640)))
    assert 12.0e6 < n < 12.6e6


def test_block_adds_the_shortcut_to_the_body() -> None:
    torch.manual_seed(0)
    block = ResidualBlock(3, 5, "batch_episode").double()
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    body = block.body(x)
    shortcut = block.shortcut(x)
    expected = nn.functional.max_pool2d(nn.functional.leaky_relu(body + shortcut, 0.1), 2)
    torch.testing.assert_close(block(x), expected)
    # silencing the body's last norm leaves the shortcut path alone
    with torch.no_grad():
        block.body[-1].weight.zero_()
        block.body[-1].bias.zero_()
    alone = nn.functional.max_pool2d(nn.functional.leaky_relu(shortcut, 0.1), 2)
    torch.testing.assert_close(block(x), alone)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"widths": ()}, "widths must be a non-empty list"),
        ({"widths": (8, 0)}, "widths must be a non-empty list"),
        ({"image_size": 8}, "image_size=8 is too small for 4 pooling blocks"),
        ({"ways": 0}, "ways must be a positive integer or None"),
        ({"slope": -1}, "slope must be a number >= 0"),
        ({"norm": "batchy"}, "batchy"),
    ],
)
def test_bad_arguments_are_refused_by_name(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        ResNet12(**{"widths": (4, 4, 4, 4), "image_size": 28, **kwargs})


def image_batch(
    tasks: int = 2, ways: int = 3, size: int = 8, dtype: torch.dtype = torch.float64
) -> TaskBatch:
    g = torch.Generator().manual_seed(0)
    y = torch.arange(ways).repeat(tasks, 1)
    return TaskBatch(
        torch.rand(tasks, ways, 1, size, size, generator=g, dtype=dtype),
        y,
        torch.rand(tasks, ways, 1, size, size, generator=g, dtype=dtype),
        y.clone(),
    )


def test_second_order_maml_meta_gradient_matches_finite_differences(numeric_gradient) -> None:
    torch.manual_seed(0)
    model = ResNet12(1, ways=3, widths=(2, 3), image_size=8).double()
    learner = MAML(model, inner_lr=0.1, inner_steps=2, loss="cross_entropy")
    batch = image_batch()
    params = list(model.parameters())
    loss, _ = learner.meta_loss(batch)
    grads = torch.autograd.grad(loss, params)
    analytic = torch.cat([g.reshape(-1) for g in grads])
    numeric = numeric_gradient(lambda: learner.meta_loss(batch)[0], params)
    assert float((analytic - numeric).norm() / numeric.norm()) < 1e-5
    # discriminative: the first-order meta-gradient misses the truth by far more
    fo_loss, _ = FOMAML(model, inner_lr=0.1, inner_steps=2, loss="cross_entropy").meta_loss(batch)
    first_order = torch.cat([g.reshape(-1) for g in torch.autograd.grad(fo_loss, params)])
    assert float((first_order - numeric).norm() / numeric.norm()) > 1e-3


def test_metric_and_proto_maml_learners_run_on_it() -> None:
    batch = image_batch(size=28, dtype=torch.float32)
    protonet = ProtoNet(ResNet12(1, ways=None, widths=(4, 4, 8, 8), image_size=28))
    loss, _ = protonet.meta_loss(batch)
    loss.backward()
    proto_maml = ProtoMAML(
        ResNet12(1, ways=3, widths=(4, 4, 8, 8), image_size=28), loss="cross_entropy"
    )
    loss, _ = proto_maml.meta_loss(batch)
    assert torch.isfinite(loss)


def test_config_builds_it_with_widths_from_toml() -> None:
    cfg = load_config(
        "configs/omniglot-lake-protonet.toml",
        ['model.name="resnet12"', "model.widths=[8, 8, 16, 16]"],
    )
    model = build_model(cfg)
    assert isinstance(model, ResNet12) and model.widths == (8, 8, 16, 16)
    assert model.head is None and model.image_size == 28  # an embedding for ProtoNet
    build_learner(cfg, model)
    with torch.no_grad():
        assert model.eval()(torch.zeros(2, 1, 28, 28)).shape == (2, 16)
