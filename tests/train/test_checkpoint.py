"""Checkpoint files: atomic writes, checksums, and the latest -> previous fallback."""

from __future__ import annotations

import json
import os
import warnings

import pytest
import torch

from metaloop.algorithms import MAML
from metaloop.models import MLP
from metaloop.tasks import Sinusoid
from metaloop.train import CheckpointError, Trainer, load_checkpoint, load_latest, save_checkpoint
from metaloop.train.checkpoint import atomic_save, atomic_write_text, checksum

torch.set_num_threads(1)


def state(iteration: int, value: float = 1.0) -> dict:
    return {"iteration": iteration, "learner": {"w": torch.full((64,), value)}}


def garble_tensor_bytes(path, tensor: torch.Tensor) -> None:
    """Flip bytes inside a tensor's storage in the file (the zip structure stays valid)."""
    data = bytearray(path.read_bytes())
    pos = data.find(tensor.numpy().tobytes())
    assert pos >= 0
    for i in range(pos + 8, pos + 16):
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))


def test_atomic_save_leaves_no_temporary_files_and_survives_a_failed_write(tmp_path):
    target = tmp_path / "latest.pt"
    atomic_save(state(1), target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest.pt"]
    with pytest.raises(Exception):  # noqa: B017 - a lambda cannot be pickled
        atomic_save({"iteration": 2, "bad": lambda: 0}, target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest.pt"]
    assert load_checkpoint(target)["iteration"] == 1


def test_saved_checkpoints_carry_a_checksum_and_stay_plain_torch_files(tmp_path):
    atomic_save(state(3), tmp_path / "x.pt")
    raw = torch.load(tmp_path / "x.pt", weights_only=False)
    assert raw["checksum"] == checksum(state(3))
    assert "checksum" not in load_checkpoint(tmp_path / "x.pt")


def test_save_checkpoint_keeps_the_previous_one(tmp_path):
    save_checkpoint(state(1), tmp_path)
    save_checkpoint(state(2), tmp_path)
    assert load_checkpoint(tmp_path / "latest.pt")["iteration"] == 2
    assert load_checkpoint(tmp_path / "latest.prev.pt")["iteration"] == 1


@pytest.mark.parametrize("damage", ["truncate", "garble-zip", "garble-tensor", "empty"])
def test_corrupt_latest_falls_back_to_previous_with_a_warning(tmp_path, damage):
    save_checkpoint(state(1, 1.0), tmp_path)
    save_checkpoint(state(2, 2.0), tmp_path)
    latest = tmp_path / "latest.pt"
    data = latest.read_bytes()
    if damage == "truncate":
        latest.write_bytes(data[: len(data) // 2])
    elif damage == "garble-zip":
        latest.write_bytes(data[:-60] + bytes(60))
    elif damage == "garble-tensor":  # loads without error in torch: only the checksum sees it
        garble_tensor_bytes(latest, torch.full((64,), 2.0))
        assert torch.load(latest, weights_only=False)["iteration"] == 2
    else:
        latest.write_bytes(b"")
    with pytest.warns(
        RuntimeWarning,
        match=r"latest\.pt .*resuming from the previous checkpoint "
        r"latest\.prev\.pt \(iteration 1\)",
    ):
        loaded = load_latest(tmp_path)
    assert loaded["iteration"] == 1 and torch.equal(loaded["learner"]["w"], torch.ones(64))


def test_both_corrupt_is_an_error_and_nothing_is_deleted(tmp_path):
    save_checkpoint(state(1), tmp_path)
    save_checkpoint(state(2), tmp_path)
    for name in ("latest.pt", "latest.prev.pt"):
        (tmp_path / name).write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="no readable checkpoint in"):
        load_latest(tmp_path)
    assert (tmp_path / "latest.pt").exists() and (tmp_path / "latest.prev.pt").exists()


def test_killed_between_rename_and_write_reads_the_previous(tmp_path):
    save_checkpoint(state(1), tmp_path)
    os.replace(tmp_path / "latest.pt", tmp_path / "latest.prev.pt")  # the kill window
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_latest(tmp_path)["iteration"] == 1
    assert load_latest(tmp_path / "missing") is None


def test_atomic_write_text(tmp_path):
    atomic_write_text("a = 1\n", tmp_path / "config.toml")
    atomic_write_text("a = 2\n", tmp_path / "config.toml")
    assert (tmp_path / "config.toml").read_text() == "a = 2\n"
    assert [p.name for p in tmp_path.iterdir()] == ["config.toml"]


def make_trainer() -> Trainer:
    torch.manual_seed(0)
    learner = MAML(MLP(1, 1, hidden=(8,)))
    return Trainer(
        learner, torch.optim.Adam(learner.parameters(), 1e-3), meta_batch_size=3, progress=False
    )


def test_trainer_resumes_from_previous_when_latest_is_corrupt_and_matches_a_clean_run(tmp_path):
    family = Sinusoid(shots=4, queries=4)
    reference = make_trainer()
    reference.fit(family, 10, run_dir=tmp_path / "ref", checkpoint_every=3, log_every=2)

    crashed = make_trainer()

    def die(trainer, record):
        if record["iteration"] == 8:
            raise KeyboardInterrupt

    crashed.callbacks.append(die)
    with pytest.raises(KeyboardInterrupt):
        crashed.fit(family, 10, run_dir=tmp_path / "run", checkpoint_every=3, log_every=2)
    latest = tmp_path / "run" / "latest.pt"
    assert load_checkpoint(latest)["iteration"] == 6
    latest.write_bytes(latest.read_bytes()[:100])  # corrupt: resume must use iteration 3

    resumed = make_trainer()
    with pytest.warns(RuntimeWarning, match="iteration 3"):
        resumed.fit(family, 10, run_dir=tmp_path / "run", checkpoint_every=3, log_every=2)
    for k, v in reference.learner.state_dict().items():
        assert torch.equal(v, resumed.learner.state_dict()[k])

    def records(d):
        out = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if k != "seconds"} for r in out]

    assert records(tmp_path / "run") == records(tmp_path / "ref")


def test_warm_start_maps_an_encoder_onto_a_model_with_a_head(tmp_path):
    """A ProtoNet's ``encoder.*`` tensors start a Conv4 with a head (Proto-MAML's body)."""
    from metaloop.algorithms import ProtoNet
    from metaloop.models import Conv4
    from metaloop.train.checkpoint import warm_start

    torch.manual_seed(0)
    encoder = Conv4(in_channels=1, ways=None, hidden=4, image_size=28)
    save_checkpoint({"iteration": 5, "learner": ProtoNet(encoder).state_dict()}, tmp_path)
    model = Conv4(in_channels=1, ways=5, hidden=4, image_size=28)
    head_before = model.head.weight.detach().clone()
    names = warm_start(model, tmp_path)  # a run directory without best.pt: its latest.pt
    assert names == [k for k in encoder.state_dict()]
    for k, v in encoder.state_dict().items():
        assert torch.equal(model.state_dict()[k], v)
    assert torch.equal(model.head.weight, head_before)
    with pytest.raises(CheckpointError, match=r"features.0.conv.weight has shape \(4, 1, 3, 3\)"):
        warm_start(Conv4(in_channels=1, ways=5, hidden=6, image_size=28), tmp_path)
    with pytest.raises(CheckpointError, match="no tensor of"):
        warm_start(MLP(1, 1, hidden=(3,)), tmp_path / "latest.pt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="holds no checkpoint"):
        warm_start(model, tmp_path / "empty")
