"""Turn a validated configuration into objects: task family, model, learner, trainer.

Algorithms come from the open registry (``metaloop.algorithms.registry``: a registered
name, an installed entry point or ``"package.module:Class"``) and task families from
``metaloop.tasks.registry``; what a learner needs from the family and the model it
declares itself (``model_role``, ``config_defaults``), and the family says what it is
(``TaskSpec``).  Nothing here names an algorithm or a family.  ``validate`` checks a whole
configuration without loading any data.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from metaloop.cli.config import PARTS, ConfigError, constructor_kwargs, validate_fixed
from metaloop.tasks.registry import (
    FamilyContext,
    FamilyEntry,
    TaskSpec,
    get_family,
    spec_of,
)

MODELS: dict[str, str] = {
    "mlp": "metaloop.models.mlp:MLP",
    "conv4": "metaloop.models.conv:Conv4",
    "resnet12": "metaloop.models.resnet:ResNet12",
    # the Relation Network paper's embedding (feature maps, not vectors)
    "relation_embedding": "metaloop.algorithms.relation:relation_embedding",
    # raw vector inputs for learners that take an encoder (the CNP on synthetic families)
    "identity": "torch.nn:Identity",
    # text encoders over token ids (sized by the text family's model_hints)
    "text_bag": "metaloop.models.text:EmbeddingBag",
    "text_cnn": "metaloop.models.text:TextCNN",
    "text_transformer": "metaloop.models.text:TextTransformer",
}


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


def algorithm_class(name: Any) -> type:
    """The learner class of ``[algorithm] name``: a registered name, an entry point of the
    group ``metaloop.algorithms`` or ``"package.module:Class"``."""
    from metaloop.algorithms.registry import RegistryError, resolve

    try:
        return resolve(name)
    except RegistryError as err:
        raise ConfigError(str(err)) from err


def validate(cfg: dict[str, Any]) -> None:
    """Validate the whole configuration by building every piece once, loading no data:
    the family gives its ``TaskSpec`` (``spec`` of its registration), and the learner is
    built on it (with a stand-in class count where ``needs_training_classes`` and the
    count is only known once the data is loaded)."""
    validate_fixed(cfg)
    spec = family_spec(cfg)
    model = build_model(cfg, spec)
    cls = algorithm_class(cfg["algorithm"].get("name", "maml"))
    if spec.num_classes is None and cls.needs_training_classes(_algorithm_options(cfg, cls)):
        spec = dataclasses.replace(spec, num_classes=2)
    build_learner(cfg, model, spec=spec)


def _task_options(cfg: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    task = dict(cfg["task"])
    family = task.pop("family", "sinusoid")
    return family, task


def _family(cfg: dict[str, Any]) -> tuple[FamilyEntry, dict[str, Any]]:
    from metaloop.tasks.base import TaskError

    name, options = _task_options(cfg)
    try:
        return get_family(name), options
    except TaskError as err:
        raise ConfigError(str(err)) from err


def _context(cfg: dict[str, Any], entry: FamilyEntry, **fields: Any) -> FamilyContext:
    from metaloop.tasks.base import TaskError

    if fields.get("part", "train") not in PARTS:
        raise ConfigError(f"unknown part {fields['part']!r}; choose one of {', '.join(PARTS)}")
    try:
        return FamilyContext(data={**entry.data_keys, **cfg["data"]}, **fields)
    except TaskError as err:
        raise ConfigError(str(err)) from err


def _family_call(entry: FamilyEntry, fn: Callable[..., Any], options, context) -> Any:
    try:
        return entry.call(fn, options, context)
    except (ValueError, FileNotFoundError, OSError) as err:
        where = "[data]/[task]" if entry.data_keys else "[task]"
        raise ConfigError(f"{where} {err}") from err


def family_spec(cfg: dict[str, Any], family: Any = None) -> TaskSpec:
    """The ``TaskSpec`` of ``family`` (a built family) or, without one, of the configured
    training family read from its registration, loading no data."""
    if family is not None and spec_of(family) is not None:
        return spec_of(family)
    entry, options = _family(cfg)
    kwargs = constructor_kwargs("task", entry.build, options, skip=("context",))
    context = _context(cfg, entry)
    if entry.spec is not None:
        spec = _family_call(entry, entry.spec, kwargs, context)
    else:  # a cheap family: build it
        spec = spec_of(_family_call(entry, entry.build, kwargs, context))
    if not isinstance(spec, TaskSpec):
        raise ConfigError(
            f"task family {entry.name!r} declares no TaskSpec (give the family a spec "
            "attribute or register it with spec=...)"
        )
    return spec


def build_family(
    cfg: dict[str, Any],
    part: str = "train",
    evaluation: bool = False,
    cache: dict[Any, Any] | None = None,
    protocol: str = "standard",
    run_dir: str | os.PathLike[str] | None = None,
    **override: Any,
) -> Any:
    """The task family for ``part`` (``train``, ``val`` or ``test``) with optional overrides
    of ``ways``/``shots``/``queries`` (evaluation uses other episode sizes).

    ``evaluation=True`` builds plain evaluation episodes of ``part``: for the training part
    that means no augmentation and, on Lake's splits, the upright characters only (their
    rotated copies are training-time classes) and any classes per episode, so that
    ``eval --part train`` measures how well the meta-training classes themselves are
    learned (the generalisation gap is the difference with ``--part test``).  Builds of
    one command that pass the same ``cache`` dictionary share what they load (one decode
    of a dataset for its training and validation parts).  ``run_dir`` is the run's
    directory, for families that keep data-derived state there (a text family's
    tokenizer)."""
    entry, options = _family(cfg)
    options.update({k: v for k, v in override.items() if v})
    if protocol not in entry.protocols:
        raise ConfigError(
            f"the {protocol} protocol needs a task family that offers it, not {entry.name!r} "
            f"(it offers: {', '.join(entry.protocols)})"
        )
    kwargs = constructor_kwargs("task", entry.build, options, skip=("context",))
    context = _context(cfg, entry, part=part, evaluation=evaluation, protocol=protocol)
    context = dataclasses.replace(context, cache=cache, run_dir=run_dir)
    return _family_call(entry, entry.build, kwargs, context)


def has_validation(cfg: dict[str, Any]) -> bool:
    """Whether the run has a meta-validation set (the family's registration says; e.g. not
    for Lake's splits with ``data.val_alphabets = 0``, where every background alphabet
    trains)."""
    entry, _ = _family(cfg)
    if entry.has_validation is None:
        return True
    return bool(entry.has_validation(_context(cfg, entry)))


def check_background_only(cfg: dict[str, Any], what: str) -> None:
    """Refuse Lake's protocols (tested on the 20 evaluation alphabets) for an Omniglot run
    trained on the Vinyals split, whose classes are drawn from all 50 alphabets: the score
    would reward recognising characters seen in training, not one-shot learning."""
    entry, _ = _family(cfg)
    if "within-alphabet" in entry.protocols and cfg["data"].get("split") == "vinyals":
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
    cache: dict[Any, Any] | None = None,
) -> Any:
    """Lake's within-alphabet episodes (default 20-way 1-shot, 1 query per class) of the
    test alphabets, or of ``part``'s alphabets (plain evaluation episodes, see
    ``build_family``)."""
    entry, _ = _family(cfg)
    if "within-alphabet" not in entry.protocols:
        raise ConfigError(f"the within-alphabet protocol needs an image family, not {entry.name!r}")
    check_background_only(cfg, "the within-alphabet protocol")
    return build_family(
        cfg,
        part,
        evaluation=True,
        protocol="within-alphabet",
        cache=cache,
        ways=ways or 20,
        shots=shots or 1,
        queries=queries or 1,
    )


def _image_model(spec: TaskSpec, role: str) -> dict[str, Any]:
    if len(spec.input_shape) != 3:
        return {}
    return {
        "in_channels": spec.input_shape[0],
        "ways": None if role == "embedding" else spec.y_dim,
        "image_size": spec.input_shape[-1],
    }


def _mlp_model(spec: TaskSpec, role: str) -> dict[str, Any]:
    if len(spec.input_shape) == 3 and role == "embedding":
        return {"in_features": spec.x_dim}
    return {"in_features": spec.x_dim, "out_features": spec.y_dim}


#: the size arguments of the built-in models, from the family's spec and the learner's
#: ``model_role`` (then the spec's ``model_hints``, then the config's ``[model]`` keys)
def _head_only(spec: TaskSpec, role: str) -> dict[str, Any]:
    """Models whose other sizes come from ``model_hints`` (text encoders): the head."""
    return {"ways": None if role == "embedding" else spec.y_dim}


MODEL_SIZES: dict[str, Callable[[TaskSpec, str], dict[str, Any]]] = {
    "mlp": _mlp_model,
    "conv4": _image_model,
    "resnet12": _image_model,
    "text_bag": _head_only,
    "text_cnn": _head_only,
    "text_transformer": _head_only,
}


def model_defaults(cfg: dict[str, Any], name: str, spec: TaskSpec) -> dict[str, Any]:
    """Constructor defaults of model ``name`` for the configured family and learner (the
    learner's ``model_spec`` of the family's spec, and its ``model_role``)."""
    cls = algorithm_class(cfg["algorithm"].get("name", "maml"))
    spec, role = cls.model_spec(spec, _algorithm_options(cfg, cls)), cls.model_role
    sizes = MODEL_SIZES.get(name)
    return {**(sizes(spec, role) if sizes else {}), **spec.model_hints.get(name, {})}


def build_model(cfg: dict[str, Any], spec: TaskSpec | None = None) -> nn.Module:
    """The ``[model]``, sized by the family's ``spec`` (default: read from the config,
    loading no data)."""
    model_cfg = dict(cfg["model"])
    name = model_cfg.pop("name", "mlp")
    cls = _lookup(MODELS, "model", name)
    spec = spec if spec is not None else family_spec(cfg)
    kwargs = {**model_defaults(cfg, name, spec), **constructor_kwargs("model", cls, model_cfg)}
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"[model] {name}: {err}") from err


def _algorithm_options(cfg: dict[str, Any], cls: type) -> dict[str, Any]:
    algo_cfg = dict(cfg["algorithm"])
    algo_cfg.pop("name", None)
    return constructor_kwargs("algorithm", cls, algo_cfg, skip=("model", "encoder"))


def build_learner(
    cfg: dict[str, Any],
    model: nn.Module,
    family: Any = None,
    spec: TaskSpec | None = None,
    cache: dict[Any, Any] | None = None,
    run_dir: str | os.PathLike[str] | None = None,
) -> Any:
    """The ``[algorithm]`` learner around ``model``: the config's keys over the class's
    ``config_defaults`` for the family's spec.  ``family`` is the command's training
    family when it has one (its spec knows ``num_classes``); without it, a learner that
    ``needs_training_classes`` gets the training family built here (sharing ``cache``,
    in ``run_dir``)."""
    name = cfg["algorithm"].get("name", "maml")
    cls = algorithm_class(name)
    options = _algorithm_options(cfg, cls)
    if spec is None:
        spec = family_spec(cfg, family)
        if family is None and spec.num_classes is None and cls.needs_training_classes(options):
            spec = family_spec(cfg, build_family(cfg, "train", cache=cache, run_dir=run_dir))
    kwargs = {**cls.config_defaults(spec, model, options), **options}
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
