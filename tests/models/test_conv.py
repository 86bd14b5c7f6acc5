"""Conv4 backbone: shapes for 28/84 pixels, pooled and strided, head and embedding."""

from __future__ import annotations

import pytest
import torch

from metaloop.models import MLP, Conv4
from metaloop.tasks import TaskBatch

torch.set_num_threads(1)


@pytest.mark.parametrize(
    ("size", "strided", "global_pool", "embedding"),
    [
        (28, False, None, 8 * 1 * 1),  # 28 -> 14 -> 7 -> 3 -> 1
        (84, False, None, 8 * 5 * 5),  # 84 -> 42 -> 21 -> 10 -> 5
        (28, True, None, 8),  # MAML Omniglot: strided, spatial mean
        (28, True, False, 8 * 2 * 2),  # 28 -> 14 -> 7 -> 4 -> 2
        (84, False, True, 8),
    ],
)
def test_output_shapes(size, strided, global_pool, embedding) -> None:
    model = Conv4(1, ways=5, hidden=8, image_size=size, strided=strided, global_pool=global_pool)
    assert model.embedding_dim == embedding
    x = torch.rand(6, 1, size, size)
    assert model.embed(x).shape == (6, embedding)
    assert model(x).shape == (6, 5)
    pooled = sum(isinstance(m, torch.nn.MaxPool2d) for m in model.modules())
    assert pooled == (0 if strided else 4)


def test_literature_sizes() -> None:
    assert Conv4(1, 5, hidden=64, image_size=28).embedding_dim == 64  # ProtoNet Omniglot
    assert Conv4(3, 5, hidden=64, image_size=84).embedding_dim == 1600  # ProtoNet mini
    assert Conv4(3, 5, hidden=32, image_size=84).embedding_dim == 800  # MAML mini
    n_params = sum(p.numel() for p in Conv4(1, 5).parameters())
    assert n_params == (9 * 64 + 64 + 2 * 64) + 3 * (9 * 64 * 64 + 64 + 2 * 64) + (64 * 5 + 5)


@pytest.mark.parametrize(
    ("strided", "pool_blocks", "side", "pools"),
    [
        (False, 3, 3, 3),  # 28 -> 14 -> 7 -> 3 -> 3 (the last block keeps its map)
        (False, 2, 7, 2),
        (False, 0, 28, 0),
        (True, 3, 4, 0),  # strided: 28 -> 14 -> 7 -> 4 -> 4, stride 1 in the last block
    ],
)
def test_pool_blocks_keep_the_spatial_size_of_the_later_blocks(
    strided, pool_blocks, side, pools
) -> None:
    model = Conv4(
        1, ways=None, hidden=4, strided=strided, global_pool=False, pool_blocks=pool_blocks
    )
    assert model.embedding_dim == 4 * side * side
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 4 * side * side)
    assert sum(isinstance(m, torch.nn.MaxPool2d) for m in model.modules()) == pools
    strides = [m.stride[0] for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert strides == ([2] * pool_blocks + [1] * (4 - pool_blocks) if strided else [1] * 4)
    # the same parameters as the fully pooled model: a checkpoint of one loads into the other
    assert model.state_dict().keys() == Conv4(1, ways=None, hidden=4).state_dict().keys()
    # with pooling the embedding is the pooled map: the first 3 blocks agree
    full = Conv4(1, ways=None, hidden=4, global_pool=False)
    if not strided and pool_blocks == 3:
        full.load_state_dict(model.state_dict())
        x = torch.rand(3, 1, 28, 28)
        kept = model(x).reshape(3, 4, 3, 3)
        assert torch.allclose(full(x), kept[..., :2, :2].amax((-1, -2)))


def test_embedding_without_head_and_named_submodules() -> None:
    embed = Conv4(3, ways=None, hidden=8, image_size=84)
    assert embed.head is None and embed.out_features == 200
    assert embed(torch.rand(2, 3, 84, 84)).shape == (2, 200)
    model = Conv4(1, ways=5, hidden=8)
    names = [n for n, _ in model.named_parameters()]
    assert {n.split(".")[0] for n in names} == {"features", "head"}
    assert [n for n in names if n.startswith("head")] == ["head.weight", "head.bias"]


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match=r"image_size=12 is too small .*image_size >= 16"):
        Conv4(image_size=12)
    assert Conv4(image_size=5, strided=True, hidden=4)(torch.rand(2, 1, 5, 5)).shape == (2, 5)
    with pytest.raises(ValueError, match="ways must be a positive integer or None"):
        Conv4(ways=0)
    with pytest.raises(ValueError, match="hidden must be a positive integer"):
        Conv4(hidden=0)
    with pytest.raises(ValueError, match="unknown normalization policy 'batch'"):
        Conv4(norm="batch")
    for bad in (5, -1, True, 2.0):
        with pytest.raises(ValueError, match=r"pool_blocks must be an integer from 0 to blocks=4"):
            Conv4(pool_blocks=bad)


def test_sgd_steps_fit_an_episode() -> None:
    torch.manual_seed(0)
    model = Conv4(1, ways=3, hidden=8)
    x = torch.rand(1, 6, 1, 28, 28)
    y = torch.tensor([[0, 0, 1, 1, 2, 2]])
    batch = TaskBatch(x, y, x, y, ways=3)
    params = list(model.parameters())
    losses = []
    for _ in range(5):
        loss = torch.nn.functional.cross_entropy(model(batch.support_x[0]), batch.support_y[0])
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            for p, g in zip(params, grads):
                p -= 0.5 * g
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_mlp_still_exported() -> None:
    assert MLP(1, 1, hidden=(4,))(torch.zeros(2, 1)).shape == (2, 1)


def test_models_import_nothing_else_from_metaloop() -> None:
    import ast
    from pathlib import Path

    import metaloop.models

    for path in Path(metaloop.models.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("metaloop"):
                # the leaf metaloop.validate imports nothing from metaloop
                allowed = ("metaloop.models", "metaloop.validate")
                assert node.module.startswith(allowed), (path.name, node.module)


def test_convs_per_block_stacks_same_resolution_layers_before_the_pooling():
    torch.manual_seed(0)
    deep = Conv4(1, ways=None, hidden=4, convs_per_block=2)
    shallow = Conv4(1, ways=None, hidden=4)
    convs = [m for m in deep.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 8 and all(c.stride == (1, 1) for c in convs)
    x = torch.randn(3, 1, 28, 28)
    assert deep(x).shape == shallow(x).shape == (3, 4)
    # block 0 by hand: conv -> norm -> relu -> conv -> norm -> relu -> pool
    block = deep.features[0]
    hand = torch.relu(block.norm(block.conv(x)))
    hand = torch.relu(block.more[1](block.more[0](hand)))
    torch.testing.assert_close(block(x), torch.nn.functional.max_pool2d(hand, 2))
    # one conv per block keeps the old parameter names (old checkpoints load)
    assert not any(".more." in name for name in shallow.state_dict())
    with pytest.raises(ValueError, match="convs_per_block must be a positive integer"):
        Conv4(convs_per_block=0)
