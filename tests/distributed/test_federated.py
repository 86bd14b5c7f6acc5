"""Federated meta-learning with two gloo processes against a one-process simulation."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.distributed as dist

from metaloop.algorithms import MAML, Reptile
from metaloop.distributed import federated
from metaloop.models import MLP
from metaloop.tasks import Sinusoid

ROUNDS, STEPS, LR, BATCH = 2, 2, 0.05, 3


def _family(rank: int) -> Sinusoid:
    return Sinusoid(shots=4, queries=4, phase=(rank * 1.5, rank * 1.5 + 1.0), dtype=torch.float64)


def _learner(rank: int = 0, algorithm: str = "maml"):
    torch.manual_seed(0 if rank == 0 else 99)  # rank 1 starts elsewhere: broadcast must fix it
    model = MLP(1, 1, hidden=(6,), activation="tanh").double()
    if algorithm == "reptile":
        return Reptile(model, inner_lr=0.02, inner_steps=2, vectorize="loop")
    return MAML(model, inner_lr=0.02, inner_steps=1, vectorize="loop")


def _setup_maml(rank):
    return _learner(rank), _family(rank), None


def _setup_reptile(rank):
    return _learner(rank, "reptile"), _family(rank), None


def _simulate(algorithm: str) -> dict[str, torch.Tensor]:
    """The same rounds in one process: each client's local SGD from the shared theta, then
    the plain average of the clients' parameters."""
    shared = _learner(0, algorithm)
    gens = [torch.Generator().manual_seed(1000 * c) for c in range(2)]
    for _ in range(ROUNDS):
        ends = []
        for c in range(2):
            local = copy.deepcopy(shared)
            federated.local_steps(local, _family(c), STEPS, LR, BATCH, gens[c])
            ends.append(dict(local.named_parameters()))
        with torch.no_grad():
            for name, p in shared.named_parameters():
                p.copy_((ends[0][name] + ends[1][name]) / 2)
    return {n: p.detach().reshape(-1) for n, p in shared.named_parameters()}


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")
def test_two_clients_match_the_one_process_simulation():
    options = {
        "rounds": ROUNDS,
        "local_steps_per_round": STEPS,
        "lr": LR,
        "meta_batch_size": BATCH,
        "episodes": 8,
        "keep_params": True,
    }
    runs = federated.federated_experiments([(_setup_maml, options), (_setup_reptile, options)], 2)
    for algorithm, reports in zip(("maml", "reptile"), runs):
        expected = _simulate(algorithm)
        for report in reports:
            assert len(report.rounds) == ROUNDS
            for name, values in report.final_params.items():
                got = torch.tensor(values, dtype=torch.float64)
                torch.testing.assert_close(got, expected[name], rtol=1e-10, atol=1e-12)
            n_bytes = sum(p.numel() * 8 for p in _learner().parameters())
            assert report.rounds[0].bytes_sent == report.rounds[0].bytes_received == n_bytes
            assert report.eval_loss > 0 and report.rounds[0].compute_seconds > 0
        # the clients see different tasks, so their evaluation losses differ
        assert reports[0].eval_loss != reports[1].eval_loss


def test_local_steps_are_plain_sgd_on_the_meta_loss():
    learner = _learner()
    start = {n: p.detach().clone() for n, p in learner.named_parameters()}
    batch_gen = torch.Generator().manual_seed(3)
    batch = _family(0).sample(BATCH, torch.Generator().manual_seed(3))
    loss, _ = learner.meta_loss(batch)
    grads = torch.autograd.grad(loss, list(learner.parameters()))
    federated.local_steps(learner, _family(0), 1, LR, BATCH, batch_gen)
    for (name, p), g in zip(learner.named_parameters(), grads):
        torch.testing.assert_close(p.detach(), start[name] - LR * g)
