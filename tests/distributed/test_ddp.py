"""Two gloo processes on the CPU train exactly like one process on the whole meta-batch."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import metaloop as ml
from metaloop.distributed import DistributedTrainer, shard, shutdown


def _make(seed=0):
    torch.manual_seed(seed)
    model = ml.models.MLP(1, 1, hidden=(8, 8)).double()
    learner = ml.MAML(model, inner_lr=0.01, inner_steps=2, vectorize="loop")
    return learner, torch.optim.Adam(learner.parameters(), 1e-2)


def _worker(rank, world_size, init_file, out_file, iterations):
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size
    )
    learner, opt = _make()
    trainer = DistributedTrainer(learner, opt, meta_batch_size=6, progress=False)
    trainer.fit(ml.tasks.Sinusoid(shots=5, queries=5, dtype=torch.float64), iterations)
    if rank == 0:
        torch.save({k: v.detach() for k, v in learner.state_dict().items()}, out_file)
    shutdown()


def test_shard_is_strided_and_complete():
    batch = ml.tasks.Sinusoid().sample(7, torch.Generator().manual_seed(0))
    parts = [shard(batch, r, 3) for r in range(3)]
    assert [len(p) for p in parts] == [3, 2, 2]
    assert torch.equal(parts[1].support_x[0], batch.support_x[1])
    with pytest.raises(ValueError, match="meta_batch_size"):
        shard(batch, 0, 8)


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")
def test_two_processes_match_one(tmp_path):
    iterations = 4
    mp.spawn(
        _worker,
        args=(2, str(tmp_path / "init"), str(tmp_path / "ddp.pt"), iterations),
        nprocs=2,
        join=True,
    )
    ddp_state = torch.load(tmp_path / "ddp.pt")
    learner, opt = _make()
    ml.Trainer(learner, opt, meta_batch_size=6, progress=False).fit(
        ml.tasks.Sinusoid(shots=5, queries=5, dtype=torch.float64), iterations
    )
    for k, v in learner.state_dict().items():
        torch.testing.assert_close(ddp_state[k], v, rtol=1e-10, atol=1e-12)
    assert not os.path.exists(tmp_path / "metrics.jsonl")
