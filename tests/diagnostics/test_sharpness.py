"""The sharpness diagnostic against exact top Hessian eigenvalues (torch.linalg.eigvalsh)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from metaloop.algorithms import MAML, MetaSGD
from metaloop.diagnostics.sharpness import (
    hessian_top_eigenvalue,
    sharpness,
    support_sharpness,
    top_eigenvalue,
)
from metaloop.models import MLP
from metaloop.tasks import TaskBatch

torch.set_num_threads(1)


def symmetric(eigenvalues: list[float], seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(len(eigenvalues), len(eigenvalues), generator=g).double())
    return q @ torch.diag(torch.tensor(eigenvalues).double()) @ q.T


@pytest.mark.parametrize(
    "eigenvalues",
    [
        [5.0, 3.0, 1.0, 0.5, 0.1],
        [4.0, -1.0, 0.2, 2.5, 0.0],
        [1.5, -9.0, 0.3, -2.0, 1.0],  # a negative eigenvalue dominates in magnitude
        [-3.0, -1.0, -0.5, -2.0, -0.1],  # negative definite: the top one is -0.1
    ],
)
def test_top_eigenvalue_of_a_symmetric_matrix_is_exact(eigenvalues):
    a = symmetric(eigenvalues, seed=len(eigenvalues))
    start = torch.randn(5, generator=torch.Generator().manual_seed(2)).double()
    value, residual = top_eigenvalue(lambda v: a @ v, start, iterations=400)
    exact = float(torch.linalg.eigvalsh(a).max())
    assert float(value) == pytest.approx(exact, abs=1e-8)
    assert float(residual) < 1e-4


def test_hessian_of_a_quadratic_loss_is_exact():
    a = symmetric([6.0, -2.0, 1.0, 0.5, -0.5], seed=3)
    b = torch.arange(5.0).double()

    def loss(theta: torch.Tensor) -> torch.Tensor:  # Hessian A everywhere
        return 0.5 * theta @ a @ theta + b @ theta

    theta = torch.randn(5, generator=torch.Generator().manual_seed(1)).double()
    start = torch.randn(5, generator=torch.Generator().manual_seed(2)).double()
    value, residual = hessian_top_eigenvalue(loss, theta, start, iterations=60)
    assert float(value) == pytest.approx(6.0, abs=1e-8)
    assert float(residual) < 1e-5


def regression_batch(tasks: int = 4, shots: int = 6, dim: int = 3) -> TaskBatch:
    g = torch.Generator().manual_seed(0)
    sx = torch.randn(tasks, shots, dim, generator=g).double() * torch.tensor([3.0, 1.0, 0.3])
    sy = torch.randn(tasks, shots, 1, generator=g).double()
    return TaskBatch(sx, sy, sx[:, :2], sy[:, :2])


def test_linear_learner_matches_the_closed_form_hessian():
    """MSE of a linear model w . x + b on n support points: H = (2/n) [x 1]' [x 1]."""
    batch = regression_batch()
    learner = MAML(nn.Linear(3, 1).double(), inner_lr=0.05, inner_steps=1)
    scaled, plain, residual = support_sharpness(learner, batch, iterations=100)
    for i in range(len(batch)):
        design = torch.cat([batch.support_x[i], torch.ones(6, 1).double()], dim=1)
        exact = float(torch.linalg.eigvalsh(2 / 6 * design.T @ design).max())
        assert float(plain[i]) == pytest.approx(exact, rel=1e-8)
        assert float(scaled[i]) == pytest.approx(0.05 * exact, rel=1e-8)
    assert float(residual.max()) < 1e-5


def test_mlp_learner_matches_the_dense_hessian_and_the_report():
    batch = regression_batch(tasks=3)
    torch.manual_seed(0)
    model = MLP(3, 1, hidden=(6,)).double()
    learner = MAML(model, inner_lr=0.3, inner_steps=1)
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    flat0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    exact = []
    for i in range(len(batch)):

        def loss(flat, i=i):
            pieces = torch.split(flat, [s.numel() for s in shapes])
            params = {n: p.reshape(s) for n, p, s in zip(names, pieces, shapes)}
            out = torch.func.functional_call(model, params, (batch.support_x[i],))
            return ((out - batch.support_y[i]) ** 2).mean()

        hessian = torch.autograd.functional.hessian(loss, flat0)
        exact.append(0.3 * float(torch.linalg.eigvalsh(hessian).max()))
    report = sharpness(learner, batch, iterations=100)
    assert report.values == pytest.approx(exact, rel=1e-6)
    assert report.fraction_above == pytest.approx(sum(v > 2 for v in exact) / 3)
    assert report.quantiles["100%"] == pytest.approx(max(exact), rel=1e-6)
    assert report.tasks == 3 and "of tasks above 2" in str(report)
    assert learner.training  # mode restored


def test_per_parameter_rates_scale_the_hessian_symmetrically():
    """Meta-SGD's step matrix I - D H has the eigenvalues of D^(1/2) H D^(1/2)."""
    batch = regression_batch(tasks=2)
    torch.manual_seed(0)
    learner = MetaSGD(nn.Linear(3, 1).double(), inner_lr=0.05)
    with torch.no_grad():
        for i, rate in enumerate(learner.lrs.parameters()):
            rate.mul_(torch.linspace(0.5, 2.0, rate.numel()).double().view_as(rate) + i)
    params = dict(learner.model.named_parameters())
    state = learner.inner_optimizer.init(params)
    ones = {k: torch.ones_like(v) for k, v in params.items()}
    updates, _ = learner.inner_optimizer.update(ones, state, params)
    d = -torch.cat([updates["weight"].reshape(-1), updates["bias"].reshape(-1)]).detach()
    assert len(set(d.tolist())) == 4  # four different rates
    scaled, plain, _ = support_sharpness(learner, batch, iterations=100)
    assert plain is None
    for i in range(2):
        design = torch.cat([batch.support_x[i], torch.ones(6, 1).double()], dim=1)
        h = 2 / 6 * design.T @ design
        exact = float(torch.linalg.eigvals(torch.diag(d) @ h).real.max())
        assert float(scaled[i]) == pytest.approx(exact, rel=1e-7)


def test_an_inner_optimizer_that_is_not_linear_is_refused():
    batch = regression_batch(tasks=1)
    adam = MAML(nn.Linear(3, 1).double(), inner_lr=0.05, inner_optimizer="adam")
    with pytest.raises(ValueError, match="linear in the gradient"):
        support_sharpness(adam, batch)
    scaled, plain, _ = support_sharpness(adam, batch, iterations=50, inner_lr=0.05)
    assert float(scaled[0]) == pytest.approx(0.05 * float(plain[0]))


def test_bad_arguments_are_refused():
    batch = regression_batch(tasks=1)
    learner = MAML(nn.Linear(3, 1).double(), inner_lr=0.05)
    with pytest.raises(ValueError, match="iterations must be a positive integer"):
        support_sharpness(learner, batch, iterations=0)
    with pytest.raises(ValueError, match="positive inner learning rates"):
        support_sharpness(learner, batch, inner_lr=-0.1)
    with pytest.raises(ValueError, match="limit must be a positive number"):
        sharpness(learner, batch, limit=0)
    with pytest.raises(TypeError, match="gradient-based learners"):
        support_sharpness(nn.Linear(1, 1), batch)


def test_trainer_logs_sharpness_at_validation_without_changing_training(tmp_path):
    from metaloop.diagnostics.sharpness import SharpnessLog
    from metaloop.tasks import Sinusoid
    from metaloop.train import Trainer

    family = Sinusoid(shots=5, queries=5)
    probe = family.sample(8, torch.Generator().manual_seed(5))

    def train(log: bool):
        torch.manual_seed(0)
        learner = MAML(MLP(1, 1, hidden=(8,)), inner_lr=0.05)
        trainer = Trainer(learner, torch.optim.Adam(learner.parameters(), 1e-2), 4, progress=False)
        if log:
            trainer.callbacks.append(SharpnessLog(probe, iterations=30))
        result = trainer.fit(family, 6, validate_on=family, validate_every=3, validation_tasks=4)
        return learner, [r for r in result.history if r["split"] == "val"]

    plain, plain_val = train(False)
    logged, val = train(True)
    assert all(torch.equal(a, b) for a, b in zip(plain.parameters(), logged.parameters()))
    assert [r["loss"] for r in val] == [r["loss"] for r in plain_val]
    report = sharpness(logged, probe, iterations=30)
    assert val[-1]["sharpness_median"] == pytest.approx(report.quantiles["50%"])
    assert val[-1]["sharpness_above_2"] == report.fraction_above
    assert "sharpness_median" not in plain_val[-1]


def test_cli_diagnose_sharpness_on_the_eval_episodes(tmp_path, capsys):
    import json
    from pathlib import Path

    from metaloop.cli.main import main
    from metaloop.cli.runs import load_run
    from metaloop.evaluation.evaluate import evaluation_batches
    from metaloop.tasks import Sinusoid

    config = Path(__file__).resolve().parents[2] / "configs" / "sinusoid-maml.toml"
    run = str(tmp_path / "run")
    small = ["train.iterations=2", "train.validate_every=2", "train.validation_tasks=4"]
    train = ["train", str(config), "--run-dir", run, "--no-progress"]
    assert main(train + [a for s in [*small, "model.hidden=[8]"] for a in ("--set", s)]) == 0
    capsys.readouterr()
    diagnose = ["diagnose", run, "--tasks", "4", "--batches", "2", "--max-steps", "1"]
    sharp = ["--sharpness", "--sharpness-tasks", "30", "--power-iterations", "40"]
    assert main([*diagnose, *sharp, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)["sharpness"]
    assert report["tasks"] == 30 and report["shots"] == 5 and report["seed"] == 12345
    _, learner, _ = load_run(run)
    episodes = list(evaluation_batches(learner, Sinusoid(shots=5, queries=10), 30, 12345, 25))
    expected = sharpness(learner, episodes, iterations=40)
    assert report["values"] == pytest.approx(expected.values, rel=1e-5)
    assert main([*diagnose, *sharp]) == 0
    assert "of tasks above 2, the gradient-descent stability limit" in capsys.readouterr().out
