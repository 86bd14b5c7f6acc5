"""Seed experiment: frozen pretrained features fail on a rotated boundary, MAML adapts."""

from __future__ import annotations

import torch

from metaloop.diagnostics.feature_reuse import feature_reuse_experiment

torch.set_num_threads(1)


def test_frozen_features_fail_where_maml_adapts():
    r = feature_reuse_experiment(seed=0, finetune_all_tasks=10)
    # pretraining on near-vertical boundaries collapses the one-unit feature onto x_1 ...
    assert r["feature_angle_degrees"] < 5.0
    assert r["frozen_features_vertical"] > 0.9
    # ... so a new head on frozen features is at chance on the horizontal boundary,
    assert abs(r["frozen_features_horizontal"] - 0.5) < 0.05
    # while MAML, starting at chance too, adapts the feature layer in its inner loop.
    assert r["maml_horizontal_0_steps"] < 0.6
    assert r["maml_horizontal"] >= 0.9
    assert r["maml_vertical"] >= 0.9
    assert r["finetune_all_horizontal"] >= 0.9
