"""Turn a validated configuration into objects: task family, model, learner, trainer.

Registries map config names to classes.  Everything is built (and so every bad value is
reported) before training starts.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from metaloop.cli.config import (
    DATA_DEFAULTS,
    PARTS,
    ConfigError,
    constructor_kwargs,
    validate_fixed,
)
from metaloop.tasks import (
    BernoulliBandit,
    GaussianMean,
    LinearRegression,
    Quadratic,
    RotatingBoundary,
    Sinusoid,
)

SYNTHETIC_FAMILIES: dict[str, Callable[..., Any]] = {
    "sinusoid": Sinusoid,
    "linear": LinearRegression,
    "quadratic": Quadratic,
    "gaussian_mean": GaussianMean,
    "rotating_boundary": RotatingBoundary,
    "bandit": BernoulliBandit,
}
IMAGE_FAMILIES = ("omniglot",)

# name -> "module:Class", imported lazily so optional algorithms never break the CLI
ALGORITHMS: dict[str, str] = {
    "maml": "metaloop.algorithms.maml:MAML",
    "fomaml": "metaloop.algorithms.maml:FOMAML",
    "adml": "metaloop.algorithms.adml:ADML",
    "reptile": "metaloop.algorithms.reptile:Reptile",
    "metasgd": "metaloop.algorithms.metasgd:MetaSGD",
    "learned_optimizer": "metaloop.algorithms.learned_optimizer:LearnedOptimizer",
    "joint": "metaloop.algorithms.pretrain:JointTraining",
    "anil": "metaloop.algorithms.anil:ANIL",
    "protomaml": "metaloop.algorithms.protomaml:ProtoMAML",
    "cavia": "metaloop.algorithms.cavia:CAVIA",
    "imaml": "metaloop.algorithms.imaml:IMAML",
    "protonet": "metaloop.algorithms.protonet:ProtoNet",
    "matching": "metaloop.algorithms.matching:MatchingNet",
    "relation": "metaloop.algorithms.relation:RelationNet",
    "siamese": "metaloop.algorithms.siamese:SiameseNet",
    "finetune": "metaloop.algorithms.finetune:FineTuneBaseline",
    "cnp": "metaloop.algorithms.cnp:ConditionalNeuralProcess",
}
MODELS: dict[str, str] = {
    "mlp": "metaloop.models.mlp:MLP",
    "conv4": "metaloop.models.conv:Conv4",
    "resnet12": "metaloop.models.resnet:ResNet12",
    # the Relation Network paper's embedding (feature maps, not vectors)
    "relation_embedding": "metaloop.algorithms.relation:relation_embedding",
    # raw vector inputs for learners that take an encoder (the CNP on synthetic families)
    "identity": "torch.nn:Identity",
}
# learners whose model is an embedding (no classification head)
EMBEDDING_LEARNERS = {"protonet", "matching", "siamese", "relation", "finetune", "cnp"}


def _load(spec: str, kind: str, name: str, registry: dict[str, str]) -> Any:
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
        return getattr(module, attr)
    except (ImportError, AttributeError) as err:
        raise ConfigError(
            f"{kind} {name!r} is registered but not available in this installation ({err}); "
            f"available: {', '.join(available(registry))}"
        ) from err


def available(registry: dict[str, str]) -> list[str]:
    names = []
    for name, spec in registry.items():
        module_name, _, attr = spec.partition(":")
        try:
            if hasattr(importlib.import_module(module_name), attr):
                names.append(name)
        except ImportError:
            continue
    return names


def _lookup(registry: dict[str, str], kind: str, name: Any) -> Any:
    if name not in registry:
        raise ConfigError(
            f"unknown {kind} {name!r}; choose one of {', '.join(available(registry))}"
        )
    return _load(registry[name], kind, name, registry)


def validate(cfg: dict[str, Any]) -> None:
    """Validate the whole configuration by building every piece once (cheaply)."""
    validate_fixed(cfg)
    build_family(cfg, "train", check_only=True)
    model = build_model(cfg)
    build_learner(cfg, model)


def _task_options(cfg: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    task = dict(cfg["task"])
    family = task.pop("family", "sinusoid")
    return family, task


def build_family(
    cfg: dict[str, Any],
    part: str = "train",
    check_only: bool = False,
    evaluation: bool = False,
    **override: Any,
) -> Any:
    """The task family for ``part`` (``train``, ``val`` or ``test``) with optional overrides
    of ``ways``/``shots``/``queries`` (evaluation uses other episode sizes).

    ``evaluation=True`` builds plain evaluation episodes of ``part``: for the training part
    that means no augmentation and, on Lake's splits, the upright characters only (their
    rotated copies are training-time classes) and any classes per episode, so that
    ``eval --part train`` measures how well the meta-training classes themselves are
    learned (the generalisation gap is the difference with ``--part test``)."""
    family, options = _task_options(cfg)
    options.update({k: v for k, v in override.items() if v})
    if family in SYNTHETIC_FAMILIES:
        cls = SYNTHETIC_FAMILIES[family]
        kwargs = constructor_kwargs("task", cls, options)
        try:
            return cls(**kwargs)
        except ValueError as err:
            raise ConfigError(f"[task] {err}") from err
    if family in IMAGE_FAMILIES:
        return _image_family(cfg, family, options, part, check_only, evaluation=evaluation)
    raise ConfigError(
        f"unknown task family {family!r}; choose one of "
        f"{', '.join([*SYNTHETIC_FAMILIES, *IMAGE_FAMILIES])}"
    )


def has_validation(cfg: dict[str, Any]) -> bool:
    """Whether the run has a meta-validation set: not for Lake's splits with
    ``data.val_alphabets = 0`` (every background alphabet trains)."""
    family, _ = _task_options(cfg)
    d = cfg["data"]
    return not (family in IMAGE_FAMILIES and d["split"] != "vinyals" and d["val_alphabets"] == 0)


def _train_transform(d: dict[str, Any]) -> Any:
    """The training-image augmentation of ``[data]``: ``affine`` then ``shift``."""
    from metaloop import data

    parts = ([data.RandomAffine()] if d["affine"] else []) + (
        [data.RandomShift(d["shift"])] if d["shift"] else []
    )
    return data.Compose(*parts) if len(parts) > 1 else (parts[0] if parts else None)


def _image_family(
    cfg,
    family: str,
    options: dict[str, Any],
    part: str,
    check_only: bool,
    within_alphabet: bool = False,
    evaluation: bool = False,
) -> Any:
    from metaloop import data

    allowed = {"ways", "shots", "queries"}
    unknown = set(options) - allowed
    if unknown:
        raise ConfigError(
            f"[task] unknown key(s) {sorted(unknown)} for omniglot; valid keys are "
            f"family, {', '.join(sorted(allowed))}"
        )
    for k in allowed:
        value = options.get(k)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"[task] omniglot needs {k} as a positive integer, got {value!r}")
    d = cfg["data"]
    split = d["split"]
    if part not in PARTS:
        raise ConfigError(f"unknown part {part!r}; choose one of {', '.join(PARTS)}")
    training = part == "train" and not evaluation  # augmentation, rotations, episode choice
    # Vinyals: rotations are new classes in every part (the protocol's convention); Lake and
    # small: rotations only enlarge training, evaluation sees Lake's upright characters.
    rotations: Any = False
    if d["rotations"]:
        rotations = None if split == "vinyals" else (["train"] if training else False)
    if split == "vinyals" and d["val_alphabets"] != DATA_DEFAULTS["val_alphabets"]:
        raise ConfigError(
            "data.val_alphabets applies to Lake's splits (lake, small1, small2); the vinyals "
            "split holds out validation characters, not alphabets"
        )
    if part == "val" and not has_validation(cfg):
        raise ConfigError(
            "data.val_alphabets = 0 leaves no meta-validation alphabets; the trainer runs "
            "without validation"
        )
    try:
        return data.omniglot_family(
            root=d["root"] or None,
            split=split,
            part=part,
            ways=options["ways"],
            shots=options["shots"],
            queries=options["queries"],
            image_size=d["image_size"],
            rotations=rotations,
            # training episodes only: augmentation and the choice of classes
            within_alphabet=within_alphabet
            or (training and d["train_episodes"] == "within-alphabet"),
            transform=_train_transform(d) if training else None,
            cache_dir=d["cache_dir"] or None,
            download=d["download"],
            **({} if split == "vinyals" else {"val_alphabets": d["val_alphabets"]}),
        )
    except (ValueError, FileNotFoundError, OSError) as err:
        raise ConfigError(f"[data]/[task] {err}") from err


def check_background_only(cfg: dict[str, Any], what: str) -> None:
    """Refuse Lake's protocols (tested on the 20 evaluation alphabets) for an Omniglot run
    trained on the Vinyals split, whose classes are drawn from all 50 alphabets: the score
    would reward recognising characters seen in training, not one-shot learning."""
    family, _ = _task_options(cfg)
    if family in IMAGE_FAMILIES and cfg["data"]["split"] == "vinyals":
        raise ConfigError(
            f"{what} tests on the 20 evaluation alphabets, but this run was trained on the "
            "'vinyals' split, whose training and validation characters include about three "
            "quarters of the evaluation alphabets' characters (496 of 659 with the default "
            'seed); train on background alphabets only: data.split = "lake", "small1" or '
            '"small2"'
        )


def build_within_alphabet(
    cfg: dict[str, Any],
    ways: int | None = None,
    shots: int | None = None,
    queries: int | None = None,
    part: str = "test",
) -> Any:
    """Lake's within-alphabet episodes (default 20-way 1-shot, 1 query per class) of the
    test alphabets, or of ``part``'s alphabets (plain evaluation episodes, see
    ``build_family``)."""
    family, options = _task_options(cfg)
    if family not in IMAGE_FAMILIES:
        raise ConfigError(f"the within-alphabet protocol needs an image family, not {family!r}")
    check_background_only(cfg, "the within-alphabet protocol")
    options = {"ways": ways or 20, "shots": shots or 1, "queries": queries or 1}
    return _image_family(cfg, family, options, part, False, within_alphabet=True, evaluation=True)


def _model_defaults(cfg: dict[str, Any], name: str) -> dict[str, Any]:
    family, options = _task_options(cfg)
    embedding = cfg["algorithm"].get("name") in EMBEDDING_LEARNERS
    if name == "mlp":
        if family in ("sinusoid",):
            return {"in_features": 1, "out_features": 1}
        if family == "linear":
            return {"in_features": options.get("dim", 5), "out_features": 1}
        if family == "quadratic":
            return {"in_features": 1, "out_features": 1, "hidden": (), "bias": False}
        if family == "gaussian_mean":
            return {
                "in_features": 1,
                "out_features": options.get("dim", 1),
                "hidden": (),
                "bias": False,
            }
        if family == "rotating_boundary":
            return {"in_features": 2, "out_features": 2}
        if family == "bandit":
            return {"in_features": options.get("arms", 5), "out_features": 1}
    if name in ("conv4", "resnet12"):
        return {
            "in_channels": 1,
            "ways": None if embedding else options.get("ways", 5),
            "image_size": cfg["data"]["image_size"],
        }
    return {}


def build_model(cfg: dict[str, Any]) -> nn.Module:
    model_cfg = dict(cfg["model"])
    name = model_cfg.pop("name", "mlp")
    cls = _lookup(MODELS, "model", name)
    kwargs = {**_model_defaults(cfg, name), **constructor_kwargs("model", cls, model_cfg)}
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"[model] {name}: {err}") from err


def build_learner(cfg: dict[str, Any], model: nn.Module) -> Any:
    algo_cfg = dict(cfg["algorithm"])
    name = algo_cfg.pop("name", "maml")
    cls = _lookup(ALGORITHMS, "algorithm", name)
    kwargs = constructor_kwargs("algorithm", cls, algo_cfg, skip=("model", "encoder"))
    family, _ = _task_options(cfg)
    from metaloop.algorithms.gradient import GradientMetaLearner

    classification = family in ("omniglot", "rotating_boundary")
    takes_task_loss = isinstance(cls, type) and issubclass(cls, GradientMetaLearner)
    if "loss" not in kwargs and (takes_task_loss or name == "cnp"):
        kwargs["loss"] = "cross_entropy" if classification else "mse"
    if name == "cnp":
        # sizes from the encoder (images) or from the family's inputs and targets
        sizes = _model_defaults(cfg, "mlp")
        if "x_dim" not in kwargs:
            kwargs["x_dim"] = getattr(model, "embedding_dim", None) or sizes.get("in_features")
        if "y_dim" not in kwargs:
            ways = _task_options(cfg)[1].get("ways", 5) if family == "omniglot" else None
            kwargs["y_dim"] = ways or sizes.get("out_features")
    if name == "finetune" and "num_classes" not in kwargs:
        kwargs["num_classes"] = getattr(build_family(cfg, "train"), "num_classes", None)
    if name == "protonet" and kwargs.get("global_loss_weight") and "global_classes" not in kwargs:
        # the auxiliary head spans the training classes, at evaluation too (checkpoint shape)
        kwargs["global_classes"] = getattr(build_family(cfg, "train"), "num_classes", None)
    try:
        return cls(model, **kwargs)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"[algorithm] {name}: {err}") from err


def build_optimizer(cfg: dict[str, Any], learner: nn.Module) -> tuple[torch.optim.Optimizer, Any]:
    t = cfg["train"]
    params = [p for p in learner.parameters() if p.requires_grad]
    if t["optimizer"] == "adam":
        opt = torch.optim.Adam(params, lr=t["outer_lr"], weight_decay=t["weight_decay"])
    elif t["optimizer"] == "adamw":
        opt = torch.optim.AdamW(params, lr=t["outer_lr"], weight_decay=t["weight_decay"])
    else:
        opt = torch.optim.SGD(params, lr=t["outer_lr"], weight_decay=t["weight_decay"])
    scheduler = None
    if t["scheduler"] == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=t["iterations"])
    elif t["scheduler"] == "step":
        scheduler = torch.optim.lr_scheduler.StepLR(
            opt, step_size=max(1, t["iterations"] // 4), gamma=0.5
        )
    return opt, scheduler
