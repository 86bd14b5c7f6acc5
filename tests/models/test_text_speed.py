"""Speed options with the text encoders: bfloat16 autocast and torch.compile.

Autocast runs the encoders' convolutions and linear layers in bfloat16 from integer token
ids (the embedding lookup stays float32); the meta-loss and meta-gradient stay close to
float32's.  Compilation (dynamo's eager backend here: the graph capture is what can break,
inductor's kernels are not under test) gives the eager numbers: Proto-MAML's compiled
meta-gradient (``compile=``) and the encoders as one graph (``fullgraph=True``).
"""

from __future__ import annotations

import warnings

import pytest
import torch

from metaloop.algorithms.protomaml import ProtoMAML
from metaloop.algorithms.protonet import ProtoNet
from metaloop.models.text import TextCNN, TextTransformer
from metaloop.tasks.base import TaskBatch

VOCAB, LENGTH, WAYS, SHOTS, QUERIES, TASKS = 30, 8, 3, 2, 2, 2
ENCODERS = ("cnn", "transformer")
SIZES = {
    "vocab": VOCAB,
    "length": LENGTH,
    "ways": WAYS,
    "shots": SHOTS,
    "queries": QUERIES,
    "tasks": TASKS,
}


def encoder(name: str, ways: int | None = None) -> torch.nn.Module:
    torch.manual_seed(0)
    if name == "cnn":
        return TextCNN(VOCAB, 16, channels=8, kernel_sizes=(2, 3), ways=ways)
    return TextTransformer(VOCAB, 16, layers=1, heads=2, max_length=LENGTH, ways=ways)


def learner(kind: str, name: str, **options) -> torch.nn.Module:
    if kind == "protonet":
        return ProtoNet(encoder(name), **options)
    return ProtoMAML(
        encoder(name, ways=WAYS), inner_lr=0.1, inner_steps=1, first_order=True,
        loss="cross_entropy", **options,
    )  # fmt: skip


def loss_and_gradient(model: torch.nn.Module, batch: TaskBatch) -> tuple[float, torch.Tensor]:
    loss, _ = model.meta_loss(batch)
    loss.backward()
    grads = [p.grad.flatten() for p in model.parameters() if p.grad is not None]
    return float(loss.detach()), torch.cat(grads)


@pytest.mark.parametrize("kind", ["protonet", "protomaml"])
@pytest.mark.parametrize("name", ENCODERS)
def test_bfloat16_autocast_is_close_to_float32(kind: str, name: str, token_episodes) -> None:
    batch = token_episodes(**SIZES)
    loss32, grad32 = loss_and_gradient(learner(kind, name), batch)
    mixed = learner(kind, name, autocast="bfloat16")
    dtypes = []
    body = mixed.encoder.features if kind == "protonet" else mixed.model.features
    layer = body.convs[0] if name == "cnn" else body.blocks[0].qkv
    layer.register_forward_hook(lambda m, i, out: dtypes.append(out.dtype))
    loss16, grad16 = loss_and_gradient(mixed, batch)
    assert dtypes and set(dtypes) == {torch.bfloat16}  # integer ids in, bfloat16 matmuls
    assert all(p.dtype == torch.float32 for p in mixed.parameters())
    assert loss16 != loss32  # rounding did happen ...
    assert abs(loss16 - loss32) <= 2e-2 * abs(loss32)  # ... and stays small
    cosine = torch.nn.functional.cosine_similarity(grad16, grad32, dim=0)
    assert cosine > 0.98
    assert (grad16.norm() / grad32.norm() - 1).abs() < 0.05


@pytest.mark.parametrize("name", ENCODERS)
def test_compiled_protomaml_equals_eager(name: str, token_episodes) -> None:
    batch = token_episodes(**SIZES)
    loss, grad = loss_and_gradient(learner("protomaml", name), batch)
    compiled = learner("protomaml", name, compile={"backend": "eager"})
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a failed compile warns and runs eagerly
        loss_c, grad_c = loss_and_gradient(compiled, batch)
    assert compiled.speed.compiled_keys(compiled)  # the compiled path did run
    assert compiled._static_ways is None  # the batch's ways are not kept after the step
    assert abs(loss_c - loss) <= 1e-6 * abs(loss)
    assert torch.allclose(grad_c, grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", ENCODERS)
def test_text_encoders_compile_as_one_graph(name: str, token_episodes) -> None:
    """``fullgraph=True`` turns any graph break into an error; ProtoNet over the compiled
    encoder then gives the eager loss and gradient."""
    batch = token_episodes(**SIZES, seed=1)
    loss, grad = loss_and_gradient(learner("protonet", name), batch)
    compiled = learner("protonet", name)
    compiled.encoder.compile(backend="eager", fullgraph=True)
    loss_c, grad_c = loss_and_gradient(compiled, batch)
    assert abs(loss_c - loss) <= 1e-6 * abs(loss)
    assert torch.allclose(grad_c, grad, rtol=1e-4, atol=1e-6)
