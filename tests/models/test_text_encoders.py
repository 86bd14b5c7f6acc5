"""Text encoders: padding invariance, shapes, bad input, and meta-gradients of MAML and
ProtoNet through each encoder against float64 central differences on a tiny vocabulary."""

from __future__ import annotations

import pytest
import torch

from metaloop.algorithms.maml import MAML
from metaloop.algorithms.protonet import ProtoNet
from metaloop.models.text import EmbeddingBag, LayerNorm, TextCNN, TextTransformer
from metaloop.tasks.base import TaskBatch

VOCAB = 7


def encoders(ways: int | None = None, vocab: int = VOCAB) -> dict[str, torch.nn.Module]:
    """Tiny float64 encoders (a few hundred parameters at most)."""
    torch.manual_seed(0)
    return {
        "bag": EmbeddingBag(vocab, 4, ways=ways),
        "cnn": TextCNN(vocab, 3, channels=2, kernel_sizes=(2, 3), ways=ways),
        "transformer-mean": TextTransformer(
            vocab, 4, layers=1, heads=2, ff_dim=4, max_length=8, ways=ways
        ),
        "transformer-cls": TextTransformer(
            vocab, 4, layers=2, heads=2, ff_dim=4, max_length=8, pooling="cls", ways=ways
        ),
    }


def token_batch(rows: int, length: int, vocab: int = VOCAB, seed: int = 0) -> torch.Tensor:
    """Token ids ``[rows, length]``: id 2 ([CLS]) first, real ids 1..vocab-1, then random
    amounts of right padding (at least one real token after [CLS])."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(1, vocab, (rows, length), generator=g)
    x[:, 0] = 2
    lengths = torch.randint(2, length + 1, (rows,), generator=g)
    x[torch.arange(length) >= lengths.unsqueeze(1)] = 0
    return x


@pytest.mark.parametrize("name", ["bag", "cnn", "transformer-mean", "transformer-cls"])
def test_padding_invariance(name: str) -> None:
    big = 50
    model = encoders(vocab=big)[name].double().eval()
    x = token_batch(9, 6, vocab=big, seed=1)
    z = model(x)
    padded = torch.cat([x, torch.zeros(9, 2, dtype=torch.long)], dim=1)
    assert torch.allclose(model(padded), z, atol=1e-12, rtol=0)
    # a query's output does not depend on the rest of its batch (other rows set its width)
    alone = model(x[3:4, : int((x[3] != 0).sum())])
    assert torch.allclose(alone, z[3:4], atol=1e-12, rtol=0)
    # the check can fail: a real token in place of padding changes the output
    changed = padded.clone()
    changed[:, -1] = 5
    assert not torch.allclose(model(changed), z, atol=1e-6)


@pytest.mark.parametrize("name", ["bag", "cnn", "transformer-mean", "transformer-cls"])
def test_embedding_dim_and_head(name: str) -> None:
    x = token_batch(5, 6)
    embed = encoders()[name]
    assert embed(x).shape == (5, embed.embedding_dim)
    classifier = encoders(ways=3)[name]
    assert classifier(x).shape == (5, 3)
    assert classifier.embed(x).shape == (5, classifier.embedding_dim)


def test_bad_input_and_settings() -> None:
    model = EmbeddingBag(VOCAB, 4)
    with pytest.raises(ValueError, match=r"token ids \[N, L\]"):
        model(torch.zeros(2, 3, 4, dtype=torch.long))
    # float ids are cast (a shape dry run with zeros is all padding: zero embeddings)
    assert torch.equal(model(torch.zeros(2, 5)), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="divisible by heads"):
        TextTransformer(VOCAB, 6, heads=4)
    with pytest.raises(ValueError, match="pooling"):
        TextTransformer(VOCAB, 4, heads=2, pooling="max")
    with pytest.raises(ValueError, match="vocab_size"):
        TextCNN(1, 4)
    long_model = TextTransformer(VOCAB, 4, heads=2, max_length=4)
    with pytest.raises(ValueError, match="max_length = 4"):
        long_model(token_batch(2, 6))


def text_task_batch(tasks: int = 1, ways: int = 2, shots: int = 2, queries: int = 2):
    x = token_batch(tasks * ways * (shots + queries), 5, seed=3)
    x = x.reshape(tasks, ways, shots + queries, 5)
    labels = torch.arange(ways)
    return TaskBatch(
        x[:, :, :shots].reshape(tasks, ways * shots, 5),
        labels.repeat_interleave(shots).expand(tasks, -1).contiguous(),
        x[:, :, shots:].reshape(tasks, ways * queries, 5),
        labels.repeat_interleave(queries).expand(tasks, -1).contiguous(),
        ways,
    )


def flat_grad(loss: torch.Tensor, params: list[torch.Tensor]) -> torch.Tensor:
    grads = torch.autograd.grad(loss, params)
    return torch.cat([g.reshape(-1) for g in grads])


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def checked_params(model: torch.nn.Module) -> list[torch.Tensor]:
    """The token table, one inner weight and the head (when there is one): every kind of
    layer the gradient passes through, at a fraction of the finite-difference cost."""
    body = model.features
    inner = {
        "BagBody": [],
        "CNNBody": [body.convs[1].weight] if hasattr(body, "convs") else [],
        "TransformerBody": [body.blocks[0].ff1.weight, body.blocks[0].norm1.weight]
        if hasattr(body, "blocks")
        else [],
    }[type(body).__name__]
    head = [model.head.weight] if model.head is not None else []
    return [body.embed.table.weight, *inner, *head]


@pytest.mark.parametrize("name", ["bag", "cnn", "transformer-mean"])
def test_maml_meta_gradient_through_text_encoder(name: str, numeric_gradient) -> None:
    model = encoders(ways=2)[name].double()
    learner = MAML(model, inner_lr=0.5, inner_steps=1, loss="cross_entropy", vectorize="loop")
    batch = text_task_batch()
    params = checked_params(model)
    analytic = flat_grad(learner.meta_loss(batch)[0], params)
    numeric = numeric_gradient(lambda: learner.meta_loss(batch)[0], params)
    assert rel_err(analytic, numeric) < 1e-6
    # discriminative: the first-order gradient differs
    fo = MAML(model, inner_lr=0.5, inner_steps=1, first_order=True, loss="cross_entropy")
    assert rel_err(flat_grad(fo.meta_loss(batch)[0], params), numeric) > 1e-4


@pytest.mark.parametrize("name", ["bag", "cnn", "transformer-cls"])
def test_protonet_meta_gradient_through_text_encoder(name: str, numeric_gradient) -> None:
    model = encoders()[name].double()
    learner = ProtoNet(model)
    batch = text_task_batch()
    params = checked_params(model)
    analytic = flat_grad(learner.meta_loss(batch)[0], params)
    numeric = numeric_gradient(lambda: learner.meta_loss(batch)[0], params)
    assert rel_err(analytic, numeric) < 1e-6


def test_layer_norm_matches_torch() -> None:
    h = torch.randn(3, 5, 8, dtype=torch.float64)
    ours = LayerNorm(8).double()
    with torch.no_grad():
        ours.weight.uniform_(0.5, 1.5)
        ours.bias.uniform_(-1, 1)
    expected = torch.nn.functional.layer_norm(h, (8,), ours.weight, ours.bias, 1e-5)
    assert torch.allclose(ours(h), expected, atol=1e-12)


def test_maml_vmap_and_loop_agree_on_the_transformer() -> None:
    """Regression: with ``nn.LayerNorm`` the vmap path's second-order meta-gradient was off
    by about 1% (relative) from the loop's and from finite differences."""
    model = encoders(ways=2)["transformer-cls"].double()
    batch = text_task_batch(tasks=3)
    params = list(model.parameters())
    results = []
    for mode in ("vmap", "loop"):
        learner = MAML(model, inner_lr=0.5, inner_steps=2, vectorize=mode, loss="cross_entropy")
        loss = learner.meta_loss(batch)[0]
        results.append((loss, flat_grad(loss, params)))
    assert torch.allclose(results[0][0], results[1][0], atol=1e-12)
    assert torch.allclose(results[0][1], results[1][1], atol=1e-10)


@pytest.mark.parametrize("learner", ["matching", "relation", "finetune", "anil", "protomaml"])
def test_every_learner_kind_takes_a_text_encoder(learner: str) -> None:
    """No learner code changed: embedding learners take ``ways=None``, classifier learners
    a head; the meta-loss is finite and has a gradient for every encoder parameter."""
    from metaloop.algorithms.registry import resolve

    cls = resolve(learner)
    embedding = cls.model_role == "embedding"
    torch.manual_seed(0)
    model = TextCNN(VOCAB, 4, channels=3, kernel_sizes=(2, 3), ways=None if embedding else 2)
    kwargs = {
        "relation": {"input_shape": (5,)},  # a shape dry run on all-padding ids
        "finetune": {"num_classes": 4, "steps": 5},
        "anil": {"loss": "cross_entropy"},
        "protomaml": {"loss": "cross_entropy"},
    }.get(learner, {})
    meta = cls(model, **kwargs)
    batch = text_task_batch(tasks=2)
    batch.info["classes"] = torch.tensor([[0, 1], [2, 3]])
    loss, _ = meta.meta_loss(batch)
    assert torch.isfinite(loss)
    loss.backward()
    assert model.features.embed.table.weight.grad is not None
    scores = meta.evaluate_batch(batch)
    assert all(bool(torch.isfinite(m["loss"]).all()) for m in scores.values())
