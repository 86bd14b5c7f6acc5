"""Saved predictions: collected once, combined later, the same numbers as the wrappers."""

from __future__ import annotations

import pytest
import torch
from _eval_helpers import Blobs, maml, protonet

from metaloop.evaluation import BalancedAssignment, Ensemble, evaluate
from metaloop.evaluation.predictions import (
    Predictions,
    collect_predictions,
    combine_predictions,
    load_predictions,
    save_predictions,
)

torch.set_num_threads(1)


def _collect(learner, seed=5, episodes=30, steps=(0, 2)):
    return collect_predictions(learner, Blobs(), episodes=episodes, steps=steps, seed=seed)


def _assert_same(result_a, result_b, steps):
    for s in steps:
        for key in ("accuracy", "loss"):
            a, b = result_a[s][key], result_b[s][key]
            assert a.mean == pytest.approx(b.mean, rel=1e-5, abs=1e-6), (s, key)
            assert a.ci95 == pytest.approx(b.ci95, rel=1e-4, abs=1e-6), (s, key)


def test_single_model_predictions_give_the_evaluation_figures():
    learner = protonet(0)
    own = evaluate(learner, Blobs(), episodes=30, steps=(0,), seed=5)
    _assert_same(_collect(learner, steps=(0,)).metrics(), own, (0,))


def test_combined_predictions_equal_the_ensemble_and_its_balanced_version():
    members = [protonet(0), maml(1), maml(2)]
    saved = [_collect(m, steps=(2,)) for m in members]
    combined = combine_predictions(saved)
    ensemble = Ensemble(members)
    _assert_same(
        combined.metrics(), evaluate(ensemble, Blobs(), episodes=30, steps=(2,), seed=5), (2,)
    )
    balanced = evaluate(
        BalancedAssignment(ensemble, temperature=0.5), Blobs(), episodes=30, steps=(2,), seed=5
    )
    _assert_same(combined.metrics(balanced=True, temperature=0.5), balanced, (2,))


def test_each_member_contributes_its_largest_step_count_by_default():
    proto, grad = _collect(protonet(0), steps=(0,)), _collect(maml(1), steps=(0, 2))
    combined = combine_predictions([proto, grad])
    assert list(combined.log_probs) == [2] and combined.info["steps"] == [0, 2]
    by_hand = torch.log_softmax(
        (proto.log_probs[0].log_softmax(-1) + grad.log_probs[2].log_softmax(-1)) / 2, -1
    )
    torch.testing.assert_close(combined.log_probs[2], by_hand)
    with pytest.raises(ValueError, match=r"hold step counts \[0\], not 2"):
        combine_predictions([proto, grad], steps=2)


def test_save_and_load_round_trip_and_never_overwrite(tmp_path):
    saved = _collect(maml(1))
    path = save_predictions(
        Predictions(saved.log_probs, saved.query_y, saved.seed, {"runs": ["a"]}),
        tmp_path / "sub" / "p.pt",
    )
    back = load_predictions(path)
    assert back.seed == saved.seed and back.info == {"runs": ["a"]}
    for s in saved.log_probs:
        torch.testing.assert_close(back.log_probs[s], saved.log_probs[s], rtol=0, atol=0)
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="never overwritten"):
        save_predictions(saved, path)
    assert path.read_bytes() == before


def test_bad_files_and_mismatched_episodes_are_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="no predictions file"):
        load_predictions(tmp_path / "missing.pt")
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    with pytest.raises(ValueError, match="not a predictions file"):
        load_predictions(other)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(ValueError, match="not a predictions file"):
        load_predictions(text)
    a, b = _collect(protonet(0), seed=5), _collect(protonet(0), seed=6)
    with pytest.raises(ValueError, match="not made on the same episodes"):
        combine_predictions([a, b])
    with pytest.raises(ValueError, match="at least one"):
        combine_predictions([])


def test_unbalanced_query_sets_are_not_balanced():
    saved = _collect(protonet(0))
    skewed = saved.query_y.clone()
    skewed[:, 0] = (skewed[:, 0] + 1) % 3
    with pytest.raises(ValueError, match="not balanced"):
        Predictions(saved.log_probs, skewed, saved.seed).metrics(balanced=True)
