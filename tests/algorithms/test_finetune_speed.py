"""Fine-tune baseline speed options with the text encoders: bfloat16 autocast, compile.

Autocast runs the encoder's convolutions / linear layers (pretraining and evaluation) in
bfloat16 from integer token ids (the per-episode head is fitted in float32); the pretraining
loss and gradient and the evaluated query loss stay close to float32's.  ``compile`` (dynamo's eager
backend: the graph capture is what can break, not inductor's kernels) gives the eager
numbers exactly.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

from metaloop.algorithms.finetune import FineTuneBaseline
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


def learner(name: str, **options) -> FineTuneBaseline:
    torch.manual_seed(0)
    if name == "cnn":
        encoder = TextCNN(VOCAB, 16, channels=8, kernel_sizes=(2, 3))
    else:
        encoder = TextTransformer(VOCAB, 16, layers=1, heads=2, max_length=LENGTH)
    return FineTuneBaseline(encoder, steps=10, lr=0.1, num_classes=WAYS, **options)


def loss_and_gradient(model: FineTuneBaseline, batch: TaskBatch) -> tuple[float, torch.Tensor]:
    loss, _ = model.meta_loss(batch)
    loss.backward()
    return float(loss.detach()), torch.cat([p.grad.flatten() for p in model.parameters()])


def matmul_dtypes(model: FineTuneBaseline, name: str) -> list[torch.dtype]:
    """Output dtypes of the encoder's first matmul layer, recorded on every forward."""
    body = model.encoder.features
    layer = body.convs[0] if name == "cnn" else body.blocks[0].qkv
    dtypes: list[torch.dtype] = []
    layer.register_forward_hook(lambda m, i, out: dtypes.append(out.dtype))
    return dtypes


@pytest.mark.parametrize("name", ENCODERS)
def test_bfloat16_pretraining_loss_is_close_to_float32(name: str, token_episodes) -> None:
    batch = token_episodes(**SIZES)
    loss32, grad32 = loss_and_gradient(learner(name), batch)
    mixed = learner(name, autocast="bfloat16")
    dtypes = matmul_dtypes(mixed, name)
    loss16, grad16 = loss_and_gradient(mixed, batch)
    assert dtypes and set(dtypes) == {torch.bfloat16}  # integer ids in, bfloat16 matmuls
    assert all(p.dtype == torch.float32 for p in mixed.parameters())
    assert loss16 != loss32  # rounding did happen ...
    assert abs(loss16 - loss32) <= 2e-2 * abs(loss32)  # ... and stays small
    assert F.cosine_similarity(grad16, grad32, dim=0) > 0.98


@pytest.mark.parametrize("name", ENCODERS)
@pytest.mark.parametrize("finetune", ["head", "all"])
def test_bfloat16_evaluation_is_close_to_float32(name: str, finetune: str, token_episodes) -> None:
    """With ``finetune="all"`` at a stable backbone rate (at ``backbone_lr = 0.1`` Adam's
    trajectory on the transformer is chaotic: any rounding changes where it ends)."""
    batch = token_episodes(**SIZES, seed=2)
    options = {"finetune": finetune, "backbone_lr": 1e-3}
    plain = learner(name, **options).evaluate_batch(batch, steps=(0, 10))
    mixed_learner = learner(name, autocast="bfloat16", **options)
    dtypes = matmul_dtypes(mixed_learner, name)
    mixed = mixed_learner.evaluate_batch(batch, steps=(0, 10))
    assert dtypes and set(dtypes) == {torch.bfloat16}
    assert mixed[10]["loss"].dtype == torch.float32
    # the head moved (loss at 10 steps differs from 0 steps) and bf16 follows float32
    assert not torch.allclose(plain[10]["loss"], plain[0]["loss"], rtol=1e-2)
    assert not torch.equal(mixed[10]["loss"], plain[10]["loss"])
    torch.testing.assert_close(mixed[10]["loss"], plain[10]["loss"], rtol=3e-2, atol=1e-3)


@pytest.mark.parametrize("name", ENCODERS)
def test_compiled_encoder_equals_plain(name: str, token_episodes) -> None:
    batch = token_episodes(**SIZES, seed=1)
    plain = learner(name)
    loss, grad = loss_and_gradient(plain, batch)
    compiled = learner(name, compile={"backend": "eager", "fullgraph": True})
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a failed compile warns, runs eagerly
        loss_c, grad_c = loss_and_gradient(compiled, batch)
        metrics_c = compiled.evaluate_batch(batch, steps=(10,))
        logits_c = compiled.adapt(batch[0], steps=10)(batch[0].query_x)
    assert compiled.speed.compiled_keys(compiled) == ["encoder"]  # the compiled path ran
    assert abs(loss_c - loss) <= 1e-6 * abs(loss)
    torch.testing.assert_close(grad_c, grad, rtol=1e-4, atol=1e-6)
    metrics = plain.evaluate_batch(batch, steps=(10,))
    torch.testing.assert_close(metrics_c[10]["loss"], metrics[10]["loss"])
    torch.testing.assert_close(logits_c, plain.adapt(batch[0], steps=10)(batch[0].query_x))


def test_bad_speed_options_name_what_is_allowed() -> None:
    with pytest.raises(ValueError, match="autocast must be None, a dtype or one of bfloat16"):
        learner("cnn", autocast="int8")
    with pytest.raises(ValueError, match="compile must be a bool or a dict"):
        learner("cnn", compile="yes")
