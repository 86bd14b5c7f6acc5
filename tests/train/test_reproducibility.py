"""Same config and seed, same machine and thread count: bit-identical weights and logs, for
both task-batching engines (each compared with itself).  ``loop`` and ``vmap`` agree with
each other only up to float rounding (different kernels and summation orders)."""

from __future__ import annotations

import json

import pytest
import torch

from metaloop.algorithms import MAML, Reptile
from metaloop.models import MLP
from metaloop.tasks import Sinusoid
from metaloop.train import Trainer

torch.set_num_threads(1)


def run(tmp_path, name: str, vectorize: str, algorithm=MAML, seed: int = 7):
    torch.manual_seed(seed)
    learner = algorithm(
        MLP(1, 1, hidden=(16, 16)), inner_lr=0.01, inner_steps=2, vectorize=vectorize
    )
    trainer = Trainer(
        learner,
        torch.optim.Adam(learner.parameters(), 1e-3),
        meta_batch_size=5,
        seed=seed,
        progress=False,
    )
    family = Sinusoid(shots=5, queries=5)
    trainer.fit(
        family,
        12,
        validate_on=family,
        validate_every=4,
        validation_tasks=5,
        run_dir=tmp_path / name,
        checkpoint_every=6,
        log_every=3,
    )
    lines = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
    log = [{k: v for k, v in json.loads(x).items() if k != "seconds"} for x in lines]
    return learner.state_dict(), log


@pytest.mark.parametrize("vectorize", ["loop", "vmap"])
@pytest.mark.parametrize("algorithm", [MAML, Reptile])
def test_same_seed_same_bits(tmp_path, vectorize, algorithm):
    w1, log1 = run(tmp_path, "a", vectorize, algorithm)
    w2, log2 = run(tmp_path, "b", vectorize, algorithm)
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
    assert log1 == log2


def test_loop_and_vmap_agree_up_to_rounding(tmp_path):
    w_loop, log_loop = run(tmp_path, "loop", "loop")
    w_vmap, log_vmap = run(tmp_path, "vmap", "vmap")
    for k in w_loop:
        torch.testing.assert_close(w_loop[k], w_vmap[k], rtol=1e-4, atol=1e-5)
    for a, b in zip(log_loop, log_vmap):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)


def test_a_different_seed_gives_different_results(tmp_path):
    w1, _ = run(tmp_path, "a", "loop", seed=1)
    w2, _ = run(tmp_path, "b", "loop", seed=2)
    assert not all(torch.equal(w1[k], w2[k]) for k in w1)
