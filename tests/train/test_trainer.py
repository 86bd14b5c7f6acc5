"""The Trainer's ordinary behaviour: early stopping, best checkpoint, chunked meta-batches,
scheduler stepping, in-process resume (bit-identical), and the metrics log."""

from __future__ import annotations

import json

import pytest
import torch

from metaloop.algorithms import MAML
from metaloop.models import MLP
from metaloop.tasks import Sinusoid
from metaloop.train import Trainer, load_checkpoint, load_latest

torch.set_num_threads(1)

FAMILY = Sinusoid(shots=5, queries=5)


def make(
    seed: int = 0,
    lr: float = 1e-3,
    optimizer: str = "adam",
    vectorize: str = "auto",
    scheduler: bool = False,
    **trainer_kwargs,
):
    torch.manual_seed(seed)
    learner = MAML(MLP(1, 1, hidden=(16, 16)), inner_lr=0.01, inner_steps=1, vectorize=vectorize)
    opt_cls = torch.optim.Adam if optimizer == "adam" else torch.optim.SGD
    opt = opt_cls(learner.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5) if scheduler else None
    trainer_kwargs.setdefault("meta_batch_size", 4)
    trainer = Trainer(learner, opt, seed=seed, scheduler=sched, progress=False, **trainer_kwargs)
    return trainer


def params(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.learner.state_dict().items()}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def log(run_dir) -> list[dict]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for r in records:
        r.pop("seconds", None)  # wall-clock, the one field allowed to differ
    return records


def test_early_stopping_with_patience_keeps_the_best_checkpoint(tmp_path):
    # lr = 0: the validation loss never improves after the first validation
    trainer = make(lr=0.0)
    result = trainer.fit(
        FAMILY,
        100,
        validate_on=FAMILY,
        validate_every=2,
        validation_tasks=8,
        patience=2,
        run_dir=tmp_path,
        checkpoint_every=50,
        log_every=1,
    )
    assert result.stopped_early
    assert result.iteration == 6  # validations at 2 (best), 4 and 6 (two without improvement)
    assert result.best_iteration == 2
    best = load_checkpoint(tmp_path / "best.pt")
    assert best["iteration"] == 2 and best["metric"] == {"loss": result.best_metric}
    latest = load_latest(tmp_path)
    assert latest["iteration"] == 6 and latest["bad_validations"] == 2
    # resuming a run that already stopped early does not train further
    again = make(lr=0.0)
    result2 = again.fit(
        FAMILY,
        100,
        validate_on=FAMILY,
        validate_every=2,
        validation_tasks=8,
        patience=2,
        run_dir=tmp_path,
        checkpoint_every=50,
        log_every=1,
    )
    assert result2.stopped_early and result2.iteration == 6
    assert max(r["iteration"] for r in log(tmp_path)) == 6


def test_best_checkpoint_holds_the_best_validation(tmp_path):
    trainer = make(lr=3e-3)
    result = trainer.fit(
        FAMILY,
        12,
        validate_on=FAMILY,
        validate_every=3,
        validation_tasks=8,
        run_dir=tmp_path,
        checkpoint_every=4,
        log_every=3,
    )
    val = [r for r in log(tmp_path) if r["split"] == "val"]
    assert [r["iteration"] for r in val] == [3, 6, 9, 12]
    best_loss = min(r["loss"] for r in val)
    assert result.best_metric == best_loss
    best = load_checkpoint(tmp_path / "best.pt")
    assert best["iteration"] == result.best_iteration
    assert best["metric"]["loss"] == best_loss
    # the stored weights reproduce the logged validation loss
    probe = make(lr=3e-3)
    probe.learner.load_state_dict(best["learner"])
    batches = probe._validation_batches(FAMILY, 8)
    assert probe.evaluate_tasks(batches)["loss"] == pytest.approx(best_loss, rel=1e-6)


def test_tasks_per_chunk_gives_the_same_gradient_as_one_chunk():
    batch = FAMILY.sample(6, torch.Generator().manual_seed(3))
    grads = []
    for chunk in (None, 2, 4):
        trainer = make(lr=0.0, optimizer="sgd", tasks_per_chunk=chunk, meta_batch_size=6)
        metrics = trainer.step(batch)
        grads.append(([p.grad.clone() for p in trainer.learner.parameters()], metrics))
    (g_ref, m_ref), *others = grads
    for g, m in others:
        for a, b in zip(g_ref, g):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
        assert m["loss"] == pytest.approx(m_ref["loss"], rel=1e-6)


def test_scheduler_steps_once_per_iteration_and_resumes(tmp_path):
    trainer = make(lr=1e-2, scheduler=True)
    trainer.fit(FAMILY, 7, log_every=7, checkpoint_every=7)
    # StepLR(step_size=3, gamma=0.5) after 7 steps: lr * 0.5 ** 2
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(1e-2 * 0.25)
    assert trainer.scheduler.last_epoch == 7
    # stop at 4 (interrupted), resume to 7 with a fresh trainer: same lr, same weights
    first = make(lr=1e-2, scheduler=True)
    first.fit(FAMILY, 4, run_dir=tmp_path, log_every=7, checkpoint_every=2)
    resumed = make(lr=1e-2, scheduler=True)
    resumed.fit(FAMILY, 7, run_dir=tmp_path, log_every=7, checkpoint_every=2)
    assert resumed.scheduler.last_epoch == 7
    assert resumed.optimizer.param_groups[0]["lr"] == trainer.optimizer.param_groups[0]["lr"]
    assert same(params(resumed), params(trainer))


class Interrupt(Exception):
    pass


def interrupt_at(iteration: int):
    def callback(trainer, record):
        if record["iteration"] == iteration and record["split"] == "train":
            raise Interrupt

    return callback


def test_resume_in_process_is_bit_identical(tmp_path):
    kwargs = dict(
        validate_on=FAMILY, validate_every=4, validation_tasks=6, checkpoint_every=3, log_every=2
    )  # checkpoints fall inside logging windows
    reference = make()
    reference.fit(FAMILY, 14, run_dir=tmp_path / "ref", **kwargs)

    crashed = make()
    crashed.callbacks.append(interrupt_at(8))  # dies in iteration 8; last checkpoint is 6
    with pytest.raises(Interrupt):
        crashed.fit(FAMILY, 14, run_dir=tmp_path / "run", **kwargs)
    assert load_latest(tmp_path / "run")["iteration"] == 6
    resumed = make(seed=0)
    torch.manual_seed(1234)  # the global RNG is restored from the checkpoint
    result = resumed.fit(FAMILY, 14, run_dir=tmp_path / "run", **kwargs)
    assert result.iteration == 14
    assert same(params(resumed), params(reference))
    assert log(tmp_path / "run") == log(tmp_path / "ref")
    ref_state, run_state = load_latest(tmp_path / "ref"), load_latest(tmp_path / "run")
    assert torch.equal(ref_state["generator"], run_state["generator"])
    assert torch.equal(ref_state["torch_rng"], run_state["torch_rng"])


def test_resume_without_any_checkpoint_restarts_the_log(tmp_path):
    crashed = make()
    crashed.callbacks.append(interrupt_at(2))
    with pytest.raises(Interrupt):
        crashed.fit(FAMILY, 6, run_dir=tmp_path, checkpoint_every=5, log_every=1)
    assert load_latest(tmp_path) is None
    assert log(tmp_path)  # lines of the dead attempt are there ...
    fresh = make()
    fresh.fit(FAMILY, 6, run_dir=tmp_path, checkpoint_every=5, log_every=1)
    iterations = [r["iteration"] for r in log(tmp_path)]
    assert iterations == [1, 2, 3, 4, 5, 6]  # ... and are dropped, not duplicated


def test_train_records_average_the_steps_of_their_window(tmp_path):
    trainer = make()
    seen = []
    trainer.callbacks.append(lambda t, r: seen.append(r))
    trainer.fit(FAMILY, 6, run_dir=tmp_path, log_every=3, checkpoint_every=100)
    assert [r["iteration"] for r in seen] == [3, 6]
    assert set(seen[0]) >= {"iteration", "split", "loss", "query_loss", "grad_norm", "seconds"}


def test_bad_trainer_arguments_raise_value_errors():
    learner = MAML(MLP(1, 1, hidden=(4,)))
    opt = torch.optim.SGD(learner.parameters(), lr=0.1)
    for kwargs, fragment in [
        ({"meta_batch_size": 0}, "meta_batch_size must be a positive integer"),
        ({"nonfinite": "ignore"}, "nonfinite must be one of stop, skip"),
        ({"grad_clip": float("nan")}, "grad_clip must be > 0"),
        ({"grad_clip": -1.0}, "grad_clip must be > 0"),
        ({"tasks_per_chunk": 0}, "tasks_per_chunk must be a positive integer"),
        ({"seed": 2**70}, "seed must be an integer"),
    ]:
        with pytest.raises(ValueError, match=fragment):
            Trainer(learner, opt, **kwargs)
    trainer = Trainer(learner, opt, progress=False)
    for kwargs, fragment in [
        ({"iterations": 0}, "iterations must be a positive integer"),
        ({"iterations": 2, "log_every": -1}, "log_every must be a positive integer"),
        ({"iterations": 2, "patience": 0}, "patience must be a positive integer"),
    ]:
        with pytest.raises(ValueError, match=fragment):
            trainer.fit(FAMILY, **kwargs)
