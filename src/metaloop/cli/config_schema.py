"""The schema of a run configuration (``metaloop.cli.config``): its sections, the fixed
keys of ``[train]``, ``[eval]`` and ``[data]`` with their defaults (whose types are the
keys' types), the allowed choices and the keys that may be zero, and ``ConfigError``.
"""

from __future__ import annotations

import copy
from typing import Any

from metaloop.data.families import OMNIGLOT_DATA_KEYS


class ConfigError(ValueError):
    """A configuration key, type or value is not allowed."""


TRAIN_DEFAULTS: dict[str, Any] = {
    "iterations": 70_000,
    "meta_batch_size": 25,
    "outer_lr": 1e-3,
    "optimizer": "adam",
    "weight_decay": 0.0,
    "scheduler": "none",
    "grad_clip": 0.0,
    "validate_every": 1000,
    "validation_tasks": 100,
    # validation on the protocol that is reported: shots per task (0: the task's own),
    # inner step counts ([]: the learner's default) and the metric that picks the best
    # checkpoint ("loss@10": mean query loss after 10 steps; "": the learner's metric at
    # the largest validation step count)
    "validation_shots": 0,
    # classes per validation task (0: the task's own; e.g. 5 when ProtoNet trains 30-way
    # on a benchmark whose validation split has 16 classes)
    "validation_ways": 0,
    "validation_steps": [],
    "select_on": "",
    # log alpha * lambda_max of the support loss (diagnostics.sharpness) on this many
    # validation-shaped tasks at every validation (0: off)
    "sharpness_tasks": 0,
    "patience": 0,
    "checkpoint_every": 1000,
    "log_every": 100,
    "nonfinite": "stop",
    # with nonfinite = "skip": stop when more than this fraction of the steps were skipped
    "max_skipped_fraction": 0.5,
    "tasks_per_chunk": 0,
    "threads": 0,
    # keep freed CPU memory for reuse (glibc; metaloop.runtime.retain_freed_memory)
    "retain_memory": True,
    "progress": True,
    "tensorboard": False,
    # a run directory or checkpoint whose matching weights start the model (warm start)
    "init_from": "",
}
EVAL_DEFAULTS: dict[str, Any] = {
    "episodes": 600,
    "steps": [],
    "shots": 0,
    "queries": 0,
    "ways": 0,
    "seed": 12345,
    "batch_size": 25,
    "protocol": "standard",
    # metric learners: average embeddings over translations by up to this many pixels
    "tta_shift": 0,
    # an episode is divergent when its query loss is non-finite or above this multiple of
    # its loss before adaptation (metaloop.evaluation.tails)
    "divergence_factor": 10.0,
    "reference_name": "",
    "reference": {},
}
#: Omniglot's ``[data]`` keys, in every configuration: the family declares them
DATA_DEFAULTS: dict[str, Any] = OMNIGLOT_DATA_KEYS
CHOICES: dict[tuple[str, str], tuple[str, ...]] = {
    ("train", "optimizer"): ("adam", "sgd", "adamw"),
    ("train", "scheduler"): ("none", "cosine", "step"),
    ("train", "nonfinite"): ("stop", "skip"),
    ("eval", "protocol"): ("standard", "within-alphabet"),
    ("data", "split"): ("vinyals", "lake", "small1", "small2"),
    ("data", "train_episodes"): ("any", "within-alphabet"),
}
NON_NEGATIVE = (
    {
        ("train", k)
        for k in (
            "weight_decay",
            "grad_clip",
            "patience",
            "tasks_per_chunk",
            "threads",
            "validation_shots",
            "validation_ways",
            "sharpness_tasks",
            "max_skipped_fraction",
        )
    }
    | {("eval", k) for k in ("shots", "queries", "ways", "tta_shift")}
    | {("data", "shift"), ("data", "val_alphabets")}
)
FIXED_SECTIONS = {"train": TRAIN_DEFAULTS, "eval": EVAL_DEFAULTS, "data": DATA_DEFAULTS}
TOP_LEVEL = {"seed": 0, "device": "cpu", "name": ""}
SECTIONS = ("task", "model", "algorithm", "data", "train", "eval")
#: the parts of a split whose classes episodes are drawn from
PARTS = ("train", "val", "test")


def defaults() -> dict[str, Any]:
    cfg: dict[str, Any] = copy.deepcopy(TOP_LEVEL)
    for section, values in FIXED_SECTIONS.items():
        cfg[section] = copy.deepcopy(values)
    cfg["task"] = {"family": "sinusoid"}
    cfg["model"] = {"name": "mlp"}
    cfg["algorithm"] = {"name": "maml"}
    return cfg


def data_keys(family: Any = None) -> dict[str, Any]:
    """The valid ``[data]`` keys with their defaults: Omniglot's (``DATA_DEFAULTS``, in
    every configuration) and those the task family ``family`` declares when registered."""
    from metaloop.tasks.base import TaskError
    from metaloop.tasks.registry import get_family

    try:
        declared = dict(get_family(family).data_keys) if isinstance(family, str) else {}
    except TaskError:  # an unknown family is reported when it is built
        declared = {}
    return {**declared, **DATA_DEFAULTS}
