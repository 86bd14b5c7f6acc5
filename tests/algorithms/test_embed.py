"""``MetaLearner.embed``: the task-independent embedding pair verification scores.

Each learner's ``embed`` is checked against its network called directly (a deep copy with
the substituted parameters loaded into it, for ``params``), and learners without an
embedding against their one-line error."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn

from metaloop.algorithms.base import NoEmbeddingError
from metaloop.algorithms.cnp import ConditionalNeuralProcess
from metaloop.algorithms.finetune import FineTuneBaseline
from metaloop.algorithms.maml import MAML
from metaloop.algorithms.matching import MatchingNet
from metaloop.algorithms.protomaml import ProtoMAML
from metaloop.algorithms.protonet import ProtoNet
from metaloop.algorithms.relation import RelationNet, relation_embedding
from metaloop.algorithms.siamese import SiameseNet
from metaloop.models.conv import Conv4
from metaloop.models.mlp import MLP


def perturbed(module: nn.Module, seed: int) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        n: p.detach() + 0.1 * torch.randn(p.shape, generator=g)
        for n, p in module.named_parameters()
    }


def loaded_copy(module: nn.Module, params: dict[str, Tensor]) -> nn.Module:
    clone = copy.deepcopy(module)
    with torch.no_grad():
        for name, p in clone.named_parameters():
            if name in params:
                p.copy_(params[name])
    return clone


def images(n: int = 6, size: int = 28) -> Tensor:
    return torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize(
    "make",
    [
        lambda enc: ProtoNet(enc),
        lambda enc: MatchingNet(enc),
        lambda enc: SiameseNet(enc),
        lambda enc: FineTuneBaseline(enc),
    ],
    ids=["protonet", "matching", "siamese", "finetune"],
)
def test_metric_learners_embed_with_their_encoder(make) -> None:
    torch.manual_seed(0)
    encoder = Conv4(1, None, hidden=8)
    learner = make(encoder)
    x = images()
    with torch.no_grad():
        assert torch.equal(learner.embed(x), encoder(x))
        params = perturbed(encoder, 2)
        expected = loaded_copy(encoder, params)(x)
        assert torch.allclose(learner.embed(x, params), expected, atol=1e-6)
        assert not torch.allclose(expected, encoder(x), atol=1e-3)  # the params mattered
    with pytest.raises(ValueError, match="has no parameter 'nope'"):
        learner.embed(x, {"nope": torch.zeros(1)})


def test_relation_net_embeds_feature_maps() -> None:
    torch.manual_seed(0)
    encoder = relation_embedding(in_channels=1, hidden=8)
    learner = RelationNet(encoder, input_shape=(1, 28, 28), hidden=8)
    x = images()
    with torch.no_grad():
        z = learner.embed(x)
        assert z.dim() == 4 and torch.equal(z, encoder(x))


def test_test_time_shift_averages_the_embedding_over_translations() -> None:
    torch.manual_seed(0)
    learner = ProtoNet(Conv4(1, None, hidden=8, norm="none"))
    x = images(3)
    learner.test_time_shift = 1
    with torch.no_grad():
        # translate() fills the border with 0, roll wraps: equal on a zero-bordered image
        x_bordered = torch.nn.functional.pad(x[:, :, 2:-2, 2:-2], (2, 2, 2, 2))
        views = [
            learner.encoder(torch.roll(x_bordered, (dy, dx), (2, 3)))
            for dx in (-1, 0, 1)
            for dy in (-1, 0, 1)
        ]
        expected = torch.stack(views).mean(0)
        assert torch.allclose(learner.embed(x_bordered), expected, atol=1e-5)


@pytest.mark.parametrize("cls", [MAML, ProtoMAML])
def test_gradient_learners_embed_the_features_before_the_head(cls) -> None:
    torch.manual_seed(0)
    model = Conv4(1, 5, hidden=8)
    learner = cls(model, inner_lr=0.1, loss="cross_entropy")
    x = images()
    with torch.no_grad():
        assert torch.equal(learner.embed(x), model.features(x))
        params = perturbed(model, 3)  # head.* entries included: they must be ignored
        expected = loaded_copy(model, params).features(x)
        assert torch.allclose(learner.embed(x, params), expected, atol=1e-6)


def test_learners_without_an_embedding_name_themselves() -> None:
    maml = MAML(MLP(4, 3, hidden=(8,)), loss="cross_entropy")
    with pytest.raises(NoEmbeddingError, match="MAML's model MLP has no `features` module"):
        maml.embed(torch.zeros(2, 4))
    cnp = ConditionalNeuralProcess(nn.Identity(), x_dim=1, y_dim=1, representation=4, hidden=(4,))
    message = r"^ConditionalNeuralProcess has no task-independent embedding"
    with pytest.raises(NoEmbeddingError, match=message) as err:
        cnp.embed(torch.zeros(2, 1))
    assert "\n" not in str(err.value)
    assert isinstance(err.value, ValueError)  # the CLI reports it in one line, status 2
