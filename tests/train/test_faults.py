"""Injected faults in the Trainer: non-finite losses, gradients and parameters; malformed
episodes; models whose output does not fit the task.  Each must stop before damage with a
message that names the problem, and never replace a good checkpoint with a broken one."""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch
from torch import nn

from metaloop.algorithms import MAML, MetaLearner
from metaloop.algorithms.base import OutputShapeError
from metaloop.models import MLP
from metaloop.tasks import RotatingBoundary, Sinusoid, TaskBatch, TaskError, validate_batch
from metaloop.train import NonFiniteError, Trainer, load_checkpoint, load_latest

torch.set_num_threads(1)


class Poisoned:
    """Sinusoid tasks; at chosen (1-based) sample calls, chosen tasks get amplitude 1e30.

    Their targets stay finite (float32 holds 1e30) but the squared error overflows, so the
    meta-loss is infinite: a numerical fault of the data, not a malformed batch.
    """

    def __init__(self, poison: dict[int, list[int]], calls: int = 0):
        self.base = Sinusoid(shots=5, queries=5)
        self.shots, self.queries = 5, 5
        self.poison, self.calls = poison, calls

    def sample(self, n: int, generator=None) -> TaskBatch:
        self.calls += 1
        b = self.base.sample(n, generator)
        scale = torch.ones(n, 1, 1)
        for t in self.poison.get(self.calls, []):
            scale[t] = 1e30
        amplitude = b.info["amplitude"] * scale
        return TaskBatch(
            b.support_x,
            b.support_y * scale,
            b.query_x,
            b.query_y * scale,
            info={"amplitude": amplitude, "phase": b.info["phase"]},
        )


def maml_trainer(nonfinite: str = "stop", seed: int = 0, optimizer=None) -> Trainer:
    torch.manual_seed(seed)
    learner = MAML(MLP(1, 1, hidden=(8,)), inner_lr=0.01)
    params = learner.parameters()
    opt = optimizer(params) if optimizer else torch.optim.Adam(params, 1e-3)
    return Trainer(learner, opt, meta_batch_size=4, seed=seed, nonfinite=nonfinite, progress=False)


def finite(state: dict) -> bool:
    return all(torch.isfinite(v).all() for v in state["learner"].values() if v.is_floating_point())


# -- non-finite meta-loss ------------------------------------------------------------------
def test_nonfinite_loss_stops_naming_iteration_and_tasks_and_keeps_good_checkpoints(tmp_path):
    trainer = maml_trainer()
    family = Poisoned({13: [1, 3]})
    with pytest.raises(NonFiniteError) as info:
        trainer.fit(family, 20, run_dir=tmp_path, checkpoint_every=5, log_every=1)
    err = info.value
    assert err.iteration == 13 and err.tasks == [1, 3]
    message = str(err)
    assert "non-finite meta-loss (" in message and ") at iteration 13: " in message
    assert "task(s) [1, 3] of the 4 in the meta-batch" in message
    assert "(task 1: amplitude=" in message and "e+30, phase=" in message  # from batch.info
    assert "nonfinite='skip'" in message
    # the last good state (after iteration 12, before the failing batch was drawn) is saved
    latest, previous = load_latest(tmp_path), load_checkpoint(tmp_path / "latest.prev.pt")
    assert latest["iteration"] == 12 and previous["iteration"] == 10
    assert finite(latest) and finite(previous)
    records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert max(r["iteration"] for r in records) == 12
    assert all(math.isfinite(r["loss"]) for r in records)

    # resuming replays exactly the failing batch: same iteration, same tasks
    again = maml_trainer()
    with pytest.raises(NonFiniteError) as info2:
        again.fit(Poisoned({13: [1, 3]}, calls=12), 20, run_dir=tmp_path, checkpoint_every=5)
    assert info2.value.iteration == 13 and info2.value.tasks == [1, 3]


def test_nonfinite_loss_is_skipped_under_skip_policy(tmp_path):
    trainer = maml_trainer(nonfinite="skip")
    family = Poisoned({3: [0], 5: [2]})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = trainer.fit(family, 8, run_dir=tmp_path, checkpoint_every=4, log_every=4)
    assert result.iteration == 8 and result.skipped_steps == 2
    skipped = [str(w.message) for w in caught if "step was skipped" in str(w.message)]
    assert len(skipped) == 2 and "at iteration 3" in skipped[0] and "task(s) [0]" in skipped[0]
    records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped"] for r in records] == [0.25, 0.25]  # fraction of the window's steps
    assert all(math.isfinite(r["loss"]) for r in records)
    assert finite(load_latest(tmp_path)) and load_latest(tmp_path)["skipped_steps"] == 2


def strict_json_lines(path) -> list[dict]:
    """The records of a metrics log, parsed as strict JSON (``NaN``/``Infinity`` refused)."""

    def refuse(name):
        raise AssertionError(f"{path} holds {name}: not valid JSON")

    return [json.loads(x, parse_constant=refuse) for x in path.read_text().splitlines()]


def test_a_run_that_skips_every_step_stops_with_an_error(tmp_path):
    """inner_lr = 1e30: every meta-loss is non-finite; under 'skip' the run used to exit as
    a success having trained nothing, with NaN (invalid JSON) in metrics.jsonl."""
    torch.manual_seed(0)
    learner = MAML(MLP(1, 1, hidden=(8,)), inner_lr=1e30)
    opt = torch.optim.Adam(learner.parameters(), 1e-3)
    trainer = Trainer(
        learner,
        opt,
        meta_batch_size=3,
        nonfinite="skip",
        progress=False,
        max_skipped_fraction=1.0,
    )
    family = Sinusoid(shots=5, queries=5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with pytest.raises(NonFiniteError) as info:
            trainer.fit(
                family,
                30,
                validate_on=family,
                validate_every=5,
                validation_tasks=3,
                run_dir=tmp_path,
                checkpoint_every=5,
                log_every=5,
            )
    message = str(info.value)
    assert "5 of the 5 meta-steps so far were skipped" in message and "every one" in message
    assert "\n" not in message
    records = strict_json_lines(tmp_path / "metrics.jsonl")
    val = [r for r in records if r["split"] == "val"]
    assert val and val[0]["loss"] is None and val[0]["best"] is None  # NaN written as null
    assert [r["skipped"] for r in records if r["split"] == "train"] == [1.0]


@pytest.mark.parametrize("limit,stops", [(0.2, True), (0.3, False)])
def test_max_skipped_fraction_stops_a_run_that_skips_too_much(tmp_path, limit, stops):
    trainer = maml_trainer(nonfinite="skip")
    trainer.max_skipped_fraction = limit
    family = Poisoned({2: [0], 7: [1]})  # 1 of 4 steps, then 2 of 8: a fraction of 0.25
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        if stops:
            with pytest.raises(NonFiniteError, match=r"1 of the 4 meta-steps .*more than "):
                trainer.fit(family, 8, run_dir=tmp_path, checkpoint_every=4, log_every=4)
        else:
            result = trainer.fit(family, 8, run_dir=tmp_path, checkpoint_every=4, log_every=4)
            assert result.skipped_steps == 2 and result.iteration == 8


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), True, "0.5"])
def test_max_skipped_fraction_is_checked(bad):
    learner = MAML(MLP(1, 1, hidden=(8,)), inner_lr=0.01)
    with pytest.raises(ValueError, match=r"max_skipped_fraction must be a number in 0\.\.1"):
        Trainer(learner, torch.optim.Adam(learner.parameters()), max_skipped_fraction=bad)


def test_diagnosis_does_not_change_a_skipped_run():
    """Re-running tasks one by one to name them must not disturb RNG or weights."""
    a = maml_trainer(nonfinite="skip")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a.fit(Poisoned({2: [1]}), 5)
    b = maml_trainer(nonfinite="skip")
    b._bad_tasks = lambda batch, what: None  # no diagnosis at all
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        b.fit(Poisoned({2: [1]}), 5)
    for (ka, va), (kb, vb) in zip(a.learner.state_dict().items(), b.learner.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)


# -- non-finite meta-gradient ----------------------------------------------------------------
class SqrtLearner(MetaLearner):
    """Loss sqrt(|w| * mean|x_support|): finite everywhere, but its gradient is NaN for a task
    whose support inputs are all zero."""

    def __init__(self):
        super().__init__("mse")
        self.w = nn.Parameter(torch.tensor([0.5]))

    def adapt(self, support, steps=None):
        return lambda x: x * self.w

    def meta_loss(self, batch):
        per_task = (self.w.abs() * batch.support_x.abs().mean(dim=(1, 2))).sqrt()
        loss = per_task.mean()
        return loss, {"loss": float(loss.detach())}


class ZeroInputs:
    shots, queries = 3, 3

    def __init__(self, at: int, task: int):
        self.at, self.task, self.calls = at, task, 0

    def sample(self, n, generator=None):
        self.calls += 1
        x = 1 + torch.rand(n, 6, 1, generator=generator)
        if self.calls == self.at:
            x[self.task, :3] = 0.0
        return TaskBatch(x[:, :3], x[:, :3] * 2, x[:, 3:], x[:, 3:] * 2)


def test_nonfinite_gradient_stops_naming_the_task(tmp_path):
    learner = SqrtLearner()
    trainer = Trainer(
        learner, torch.optim.SGD(learner.parameters(), 0.01), meta_batch_size=5, progress=False
    )
    with pytest.raises(NonFiniteError) as info:
        trainer.fit(ZeroInputs(at=4, task=2), 10, run_dir=tmp_path, checkpoint_every=2)
    assert "non-finite meta-gradient (nan) at iteration 4" in str(info.value)
    assert info.value.tasks == [2]
    assert load_latest(tmp_path)["iteration"] == 3
    assert torch.isfinite(learner.w).all()


# -- parameters that overflow in the update ----------------------------------------------------
class OverflowAt(torch.optim.SGD):
    """SGD whose ``at``-th step overflows every parameter to infinity."""

    def __init__(self, params, at: int):
        super().__init__(params, lr=1e-3)
        self.at, self.calls = at, 0

    def step(self, closure=None):
        super().step(closure)
        self.calls += 1
        if self.calls == self.at:
            with torch.no_grad():
                for group in self.param_groups:
                    for p in group["params"]:
                        p.fill_(float("inf"))


@pytest.mark.parametrize("at, last_good", [(6, 3), (7, 6)])
def test_overflowed_parameters_never_replace_a_good_checkpoint(tmp_path, at, last_good):
    trainer = maml_trainer(optimizer=lambda p: OverflowAt(p, at))
    with pytest.raises(NonFiniteError) as info:
        trainer.fit(Sinusoid(shots=5, queries=5), 12, run_dir=tmp_path, checkpoint_every=3)
    # at == 6: caught by the check before checkpoint 6; at == 7: by iteration 8's loss
    assert (
        "non-finite parameters or optimizer state after iteration 6" in str(info.value)
        if at == 6
        else "at iteration 8: the learner's parameters are not finite" in str(info.value)
    )
    latest = load_latest(tmp_path)
    assert latest["iteration"] == last_good and finite(latest)
    if last_good > 3:
        assert finite(load_checkpoint(tmp_path / "latest.prev.pt"))


def test_nonfinite_validation_is_never_the_best(tmp_path):
    trainer = maml_trainer()
    with torch.no_grad():
        for p in trainer.learner.parameters():
            p.fill_(float("nan"))
    trainer.validate_tasks = True
    val = trainer._validation_batches(Sinusoid(shots=5, queries=5), 4)
    assert math.isnan(trainer.evaluate_tasks(val)["loss"])
    # a NaN validation at the first check must not write best.pt (fit stops at the loss)
    with pytest.raises(NonFiniteError):
        trainer.fit(
            Sinusoid(shots=5, queries=5),
            3,
            validate_on=Sinusoid(shots=5, queries=5),
            validate_every=1,
            validation_tasks=4,
            run_dir=tmp_path,
        )
    assert not (tmp_path / "best.pt").exists()
    assert not (tmp_path / "latest.pt").exists()  # the initial state is not finite either


# -- malformed episodes ------------------------------------------------------------------------
def batch(sx=None, sy=None, qx=None, qy=None, ways=None) -> TaskBatch:
    g = torch.Generator().manual_seed(0)
    return TaskBatch(
        torch.randn(2, 4, 3, generator=g) if sx is None else sx,
        torch.randint(0, 2, (2, 4), generator=g) if sy is None else sy,
        torch.randn(2, 6, 3, generator=g) if qx is None else qx,
        torch.randint(0, 2, (2, 6), generator=g) if qy is None else qy,
        ways,
    )


BAD_EPISODES = [
    (
        dict(sy=torch.tensor([[0, 1, 2, 1], [0, 1, 0, 1]]), ways=2),
        "labels must lie in 0..1 for a 2-way task, found range 0..2",
    ),
    (dict(qy=-torch.ones(2, 6, dtype=torch.long), ways=2), "labels must lie in 0..1"),
    (
        dict(qx=torch.randn(2, 6, 4), ways=2),
        "support and query features differ in shape: (3,) vs (4,)",
    ),
    (
        dict(sx=torch.randn(2, 0, 3), sy=torch.zeros(2, 0, dtype=torch.long), ways=2),
        "support set is empty",
    ),
    (
        dict(qx=torch.randn(2, 0, 3), qy=torch.zeros(2, 0, dtype=torch.long), ways=2),
        "query set is empty",
    ),
    (dict(sx=torch.full((2, 4, 3), float("nan")), ways=2), "support_x contains NaN or Inf"),
    (dict(qx=torch.full((2, 6, 3), float("inf")), ways=2), "query_x contains NaN or Inf"),
    (dict(sy=torch.rand(2, 4), qy=torch.rand(2, 6), ways=2), "must hold integer class labels"),
    (dict(sx=torch.randn(3, 4, 3)), "must share the task dimension"),
    (dict(sy=torch.zeros(2, 5, dtype=torch.long)), "disagree in example count"),
    (
        dict(sy=torch.rand(2, 4, 1), qy=torch.rand(2, 6, 2)),
        "support and query targets differ in shape: (1,) vs (2,)",
    ),
]


@pytest.mark.parametrize("fields, fragment", BAD_EPISODES)
def test_validate_batch_names_the_problem(fields, fragment):
    with pytest.raises(TaskError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        validate_batch(batch(**fields))


class Fixed:
    shots, queries = 4, 6

    def __init__(self, b):
        self.b = b

    def sample(self, n, generator=None):
        return self.b


@pytest.mark.parametrize("fields, fragment", BAD_EPISODES[:8])
def test_trainer_validates_every_batch_before_any_step(tmp_path, fields, fragment):
    torch.manual_seed(0)
    learner = MAML(MLP(3, 2, hidden=(4,)), loss="cross_entropy")
    before = {k: v.clone() for k, v in learner.state_dict().items()}
    trainer = Trainer(
        learner, torch.optim.Adam(learner.parameters()), meta_batch_size=2, progress=False
    )
    with pytest.raises(TaskError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        trainer.fit(Fixed(batch(**fields)), 3, run_dir=tmp_path)
    assert trainer.iteration == 0 and not (tmp_path / "latest.pt").exists()
    assert all(torch.equal(v, learner.state_dict()[k]) for k, v in before.items())


def test_regression_batch_for_a_classifier_is_refused():
    learner = MAML(MLP(1, 1, hidden=(4,)), loss="cross_entropy")
    trainer = Trainer(learner, torch.optim.Adam(learner.parameters()), progress=False)
    with pytest.raises(TaskError, match="support_y must hold integer class labels"):
        trainer.fit(Sinusoid(shots=2, queries=2), 2)


# -- model output vs task ------------------------------------------------------------------------
@pytest.mark.parametrize(
    "family, model, loss, fragment",
    [
        (
            RotatingBoundary(shots=3, queries=3),
            MLP(2, 3, hidden=(4,)),
            "cross_entropy",
            "the model outputs 3 class scores but the task is 2-way: the model's output size must "
            "equal ways (2)",
        ),
        (
            RotatingBoundary(shots=3, queries=3),
            MLP(2, 1, hidden=(4,)),
            "cross_entropy",
            "outputs 1 class scores but the task is 2-way",
        ),
        (
            Sinusoid(shots=3, queries=3),
            MLP(1, 2, hidden=(4,)),
            "mse",
            "the model's predictions have shape (3, 2) but the targets have shape (3, 1)",
        ),
        (
            Sinusoid(shots=3, queries=3),
            MLP(2, 1, hidden=(4,)),
            "mse",
            "the model cannot process this task (support_x (3, 1), query_x (3, 1)): mat1 and mat2",
        ),
    ],
)
def test_model_output_must_fit_the_task(tmp_path, family, model, loss, fragment):
    learner = MAML(model, loss=loss)
    trainer = Trainer(
        learner, torch.optim.Adam(learner.parameters()), meta_batch_size=2, progress=False
    )
    with pytest.raises(OutputShapeError) as info:
        trainer.fit(family, 3, run_dir=tmp_path)
    assert fragment in str(info.value)
    assert isinstance(info.value, ValueError)
    assert trainer.iteration == 0 and not (tmp_path / "latest.pt").exists()


def test_output_check_does_not_touch_the_rng():
    learner = MAML(nn.Sequential(nn.Linear(1, 8), nn.Dropout(0.5), nn.Linear(8, 1)))
    b = Sinusoid(shots=3, queries=3).sample(2, torch.Generator().manual_seed(0))
    torch.manual_seed(5)
    state = torch.get_rng_state()
    learner.check_batch(b)
    assert torch.equal(torch.get_rng_state(), state)
    assert learner.training


def test_a_learner_with_the_right_output_passes(tmp_path):
    learner = MAML(MLP(2, 2, hidden=(4,)), loss="cross_entropy")
    trainer = Trainer(
        learner, torch.optim.Adam(learner.parameters()), meta_batch_size=2, progress=False
    )
    assert trainer.fit(RotatingBoundary(shots=3, queries=3), 2).iteration == 2
