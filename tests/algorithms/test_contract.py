"""The contract every registered algorithm satisfies, checked over the registry.

For every name ``metaloop.algorithms.registry.available()`` lists (built-ins, learners
added by other modules, installed entry points), plus an out-of-tree learner named by
import path: built from a minimal config through the CLI's builders, the meta-loss is a
finite scalar whose backward gives finite gradients, ``evaluate_batch`` returns one
``[T]`` tensor per metric and step count, a state dict loads into a fresh learner and
reproduces its evaluation, a run directory trained by ``metaloop train`` is evaluated by
``metaloop eval``, and (where the learner has a ``vectorize`` switch) vmap equals the loop.
A new algorithm that does not satisfy the protocol fails here; one whose minimal config is
not the default for its ``model_role`` adds a line to ``MINIMAL``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from metaloop.algorithms.base import NoEmbeddingError, constructor_accepts
from metaloop.algorithms.registry import available, resolve
from metaloop.cli.build import build_family, build_learner, build_model, validate
from metaloop.cli.config import ConfigError, dump_toml, load_config

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
OUT_OF_TREE = "contract_plugin.outoftree:ShiftedMean"


@pytest.fixture(autouse=True)
def plugin_on_path(monkeypatch) -> None:
    """The test package of out-of-tree learners and families is importable (as installed
    plugins are); importing it registers the ``contract_images`` family."""
    monkeypatch.syspath_prepend(str(FIXTURES))
    import contract_plugin.images  # noqa: F401


TRAIN = ["train.iterations=1", "train.meta_batch_size=2", "train.validate_every=1"]
TRAIN += ["train.validation_tasks=2", "train.checkpoint_every=1", "train.log_every=1"]
TRAIN += ["train.progress=false", "eval.episodes=2", "eval.batch_size=2"]
SINUSOID = ['task.family="sinusoid"', "task.shots=4", "task.queries=3"]
REGRESSION = [*SINUSOID, 'model.name="mlp"', "model.hidden=[8]"]
SEQUENCE = [*SINUSOID, 'model.name="identity"', "algorithm.min_support=1"]
IMAGES = ['task.family="contract_images"', "task.ways=3", "task.shots=2", "task.queries=2"]
CONV = [*IMAGES, 'model.name="conv4"', "model.hidden=4"]

#: the default minimal config per ``model_role``, and the learners that need another
DEFAULTS = {"classifier": REGRESSION, "embedding": CONV}
MINIMAL: dict[str, list[str]] = {
    "cnp": [
        *SINUSOID,
        'model.name="identity"',
        "algorithm.representation=8",
        "algorithm.hidden=[8]",
    ],
    "mann_lstm": [*SEQUENCE, "algorithm.hidden=8", "algorithm.layers=1"],
    "snail": [
        *SEQUENCE,
        "algorithm.max_support=4",
        "algorithm.filters=4",
        "algorithm.key_size=4",
        "algorithm.value_size=4",
    ],
    "incontext": [*SEQUENCE, "algorithm.width=8", "algorithm.depth=1", "algorithm.heads=2"],
    "anil": CONV,  # adapts the parameters named "head" (Conv4's)
    "protomaml": CONV,
    "finetune": [*CONV, "algorithm.steps=2"],
    "relation": [
        *IMAGES,
        'model.name="relation_embedding"',
        "model.hidden=4",
        "algorithm.input_shape=[1, 16, 16]",
        "algorithm.hidden=4",
        "algorithm.fc_hidden=4",
    ],
    # CAVIA's model_spec sizes the MLP for the input and the context (1 + 2 features)
    "cavia": [*REGRESSION, "algorithm.num_context=2"],
    OUT_OF_TREE: REGRESSION,
}
NAMES = [*available(), OUT_OF_TREE]


def minimal_config(name: str, *extra: str) -> dict:
    overrides = MINIMAL.get(name, DEFAULTS[resolve(name).model_role])
    # the class key first: naming another class resets its section's keys
    return load_config(None, [*TRAIN, f'algorithm.name="{name}"', *overrides, *extra])


def build(name: str, seed: int = 0, *extra: str):
    """``(cfg, learner, batch)``: the learner built as ``metaloop train`` builds it."""
    cfg = minimal_config(name, *extra)
    validate(cfg)
    family = build_family(cfg, "train")
    torch.manual_seed(seed)
    learner = build_learner(cfg, build_model(cfg), family=family)
    batch = family.sample(2, torch.Generator().manual_seed(1))
    return cfg, learner, batch


def finite(value) -> bool:
    return bool(torch.isfinite(torch.as_tensor(value, dtype=torch.float64)).all())


@pytest.mark.parametrize("name", NAMES)
def test_meta_loss_is_a_finite_scalar_with_finite_gradients(name: str) -> None:
    _, learner, batch = build(name)
    learner.train()
    loss, metrics = learner.meta_loss(batch)
    assert loss.dim() == 0 and finite(loss)
    assert all(isinstance(v, float) and math.isfinite(v) for v in metrics.values()), metrics
    loss.backward()
    grads = [p.grad for p in learner.parameters() if p.requires_grad and p.grad is not None]
    assert grads, f"{name}: meta_loss reaches no parameter"
    assert all(finite(g) for g in grads)
    assert any(bool(g.abs().sum() > 0) for g in grads)


@pytest.mark.parametrize("name", NAMES)
def test_evaluate_batch_reports_one_value_per_task(name: str) -> None:
    _, learner, batch = build(name)
    learner.eval()
    steps = tuple(learner.default_eval_steps)
    out = learner.evaluate_batch(batch)
    assert set(out) == set(steps)
    for s in steps:
        assert "loss" in out[s] and ("accuracy" in out[s]) == learner.classification
        for metric, value in out[s].items():
            assert value.shape == (len(batch),) and finite(value), (s, metric, value)
    learner.check_batch(batch)  # the model fits the family it was built for
    if learner.classification:  # a predictive distribution over the ways, per query
        log_p = learner.query_log_probs(batch, steps[:1])[steps[0]]
        assert log_p.shape == (*batch.query_y.shape, batch.ways)
        torch.testing.assert_close(log_p.exp().sum(-1), torch.ones(batch.query_y.shape))


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip_reproduces_the_evaluation(name: str) -> None:
    _, trained, batch = build(name, seed=0)
    _, fresh, _ = build(name, seed=1)
    state = trained.state_dict()
    assert set(fresh.state_dict()) == set(state)
    fresh.load_state_dict(state)
    trained.eval(), fresh.eval()
    results = []
    for learner in (trained, fresh):
        torch.manual_seed(2)
        results.append(learner.evaluate_batch(batch))
    for s, metrics in results[0].items():
        for metric, value in metrics.items():
            torch.testing.assert_close(results[1][s][metric], value)


@pytest.mark.parametrize("name", NAMES)
def test_vmap_equals_loop(name: str) -> None:
    if not constructor_accepts(resolve(name), "vectorize"):
        pytest.skip(f"{name} has no vectorize switch")
    results = []
    for mode in ("vmap", "loop"):
        try:
            _, learner, batch = build(name, 0, f'algorithm.vectorize="{mode}"')
        except ConfigError as err:  # the learner says why its model cannot be vmapped
            pytest.skip(str(err))
        loss, _ = learner.meta_loss(batch)
        loss.backward()
        grads = [p.grad.clone() for p in learner.parameters() if p.grad is not None]
        results.append((loss.detach(), grads))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-5, atol=1e-6)
    for a, b in zip(results[0][1], results[1][1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_trained_run_directory_is_evaluated_by_metaloop_eval(name: str, tmp_path, capsys) -> None:
    """``metaloop train`` writes the run directory (config naming the learner,
    checkpoint); ``metaloop eval`` rebuilds the learner from it, by name or import path."""
    from metaloop.cli.main import main

    config = tmp_path / "config.toml"
    config.write_text(dump_toml(minimal_config(name)))
    run_dir = tmp_path / "run"
    assert main(["train", str(config), "--run-dir", str(run_dir)]) == 0, capsys.readouterr().err
    capsys.readouterr()
    code = main(["eval", str(run_dir), "--episodes", "2", "--json", "--no-progress"])
    out, err = capsys.readouterr()
    assert code == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert result["algorithm"] == name
    assert result["steps"] and all(finite(v) for v in _numbers(result["steps"]))


def _numbers(tree) -> list[float]:
    if isinstance(tree, dict):
        return [x for v in tree.values() for x in _numbers(v)]
    if isinstance(tree, list):
        return [x for v in tree for x in _numbers(v)]
    return [tree] if isinstance(tree, (int, float)) and not isinstance(tree, bool) else []


def test_embedding_learners_never_get_a_class_head() -> None:
    """A learner of role ``embedding`` is built around a Conv4 without ``ways`` outputs
    (not the silent 5-way head a learner left out of a hand-kept list used to get)."""
    for name in NAMES:
        if resolve(name).model_role != "embedding":
            continue
        model = build_model(load_config(None, [f'algorithm.name="{name}"', *CONV]))
        assert getattr(model, "head", None) is None and model.embedding_dim == 4 * 1 * 1, name


@pytest.mark.parametrize("name", NAMES)
def test_embed_gives_one_row_per_input_or_names_the_learner(name: str) -> None:
    """``embed`` is the protocol's embedding: one finite row per input, the same rows
    however often it is called; a learner without one raises ``NoEmbeddingError``
    naming itself (what ``metaloop verify`` reports), never another error."""
    _, learner, batch = build(name)
    learner.eval()
    x = batch.support_x[0]
    try:
        z = learner.embed(x)
    except NoEmbeddingError as err:
        assert type(learner).__name__ in str(err) and "\n" not in str(err)
        return
    assert z.shape[0] == x.shape[0] and z.dim() >= 2 and finite(z), (name, z.shape)
    torch.testing.assert_close(learner.embed(x), z)
