"""What a task family is (``TaskSpec``) and the registry of families that configs name.

A family says what it is through a ``spec`` attribute, a ``TaskSpec``: the shape of one
input, the size of one prediction, whether it is classification, the classes per task
and the number of training classes.  Models and learners take their sizes from it (the
CLI's model defaults, a CNP's ``x_dim``/``y_dim``, a fine-tuning head's classes), so no
code anywhere branches on a family's name.

``register_family(name)`` makes a family buildable from a config's ``[task] family =
"name"``: it decorates a class or a builder function whose keyword arguments are the
``[task]`` keys.  A builder that also declares a ``context`` keyword receives a
``FamilyContext``: the part (``train``/``val``/``test``), whether the episodes are for
evaluation, the protocol, and the ``[data]`` table with the family's own ``data_keys``.
Installed packages can add families through the entry-point group
``metaloop.task_families``.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from metaloop.tasks.base import TaskError
from metaloop.validate import is_int

#: the entry-point group through which installed packages add task families
ENTRY_POINT_GROUP = "metaloop.task_families"
PARTS = ("train", "val", "test")

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass(frozen=True)
class TaskSpec:
    """What a task family's tasks are, for the models and learners built on them.

    Attributes:
        input_shape: shape of one input ``x`` without batch dimensions, e.g. ``(1,)`` for
            sinusoids, ``(1, 28, 28)`` for Omniglot images.
        y_dim: outputs the model predicts per example: the target size for regression,
            ``ways`` (class scores) for classification.
        classification: integer class labels (cross-entropy) rather than real targets (MSE).
        ways: classes per task (classification), else ``None``.
        num_classes: classes of the meta-training set (the size of a whole-dataset
            classification head), ``None`` when the family has no fixed class set or when
            the count is only known once its data is loaded.
        model_hints: extra constructor defaults per model name, e.g. ``{"mlp":
            {"hidden": (), "bias": False}}`` for a family whose reference model is linear.
    """

    input_shape: tuple[int, ...]
    y_dim: int
    classification: bool = False
    ways: int | None = None
    num_classes: int | None = None
    model_hints: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        shape = tuple(self.input_shape)
        if not shape or any(not is_int(d) or d < 1 for d in shape):
            raise TaskError(f"TaskSpec.input_shape must be positive integers, got {shape!r}")
        object.__setattr__(self, "input_shape", shape)
        for name in ("y_dim", "ways", "num_classes"):
            value = getattr(self, name)
            if value is None and name != "y_dim":
                continue
            if not is_int(value) or value < 1:
                raise TaskError(f"TaskSpec.{name} must be a positive integer, got {value!r}")
        object.__setattr__(self, "model_hints", MappingProxyType(dict(self.model_hints)))

    @property
    def x_dim(self) -> int:
        """Features of one flattened input: the product of ``input_shape``."""
        return math.prod(self.input_shape)

    @property
    def loss(self) -> str:
        """The task loss: ``"cross_entropy"`` for classification, else ``"mse"``."""
        return "cross_entropy" if self.classification else "mse"


@dataclass(frozen=True)
class FamilyContext:
    """What a registered builder is asked for besides its ``[task]`` keys.

    Attributes:
        part: ``"train"``, ``"val"`` or ``"test"``: whose classes (or tasks) to draw.
        evaluation: plain evaluation episodes (no augmentation, no training-only classes).
        protocol: ``"standard"``, or a family-specific protocol (``"within-alphabet"``).
        data: the ``[data]`` table: the global keys plus this family's ``data_keys``.
        cache: a dictionary shared by every build of one command (``None``: no sharing),
            where a builder may keep what it loaded (a decoded dataset) for the next part.
        run_dir: the run directory of the command (``None`` outside a run), where a family
            may keep state derived from the training data (a text family's tokenizer).
    """

    part: str = "train"
    evaluation: bool = False
    protocol: str = "standard"
    data: Mapping[str, Any] = field(default_factory=dict)
    cache: dict[Any, Any] | None = field(default=None, compare=False, repr=False)
    run_dir: Any = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.part not in PARTS:
            raise TaskError(f"unknown part {self.part!r}; choose one of {', '.join(PARTS)}")

    @property
    def training(self) -> bool:
        """Training episodes (augmentation, training-only classes) rather than evaluation."""
        return self.part == "train" and not self.evaluation


@dataclass(frozen=True)
class FamilyEntry:
    """A registered family: how to build it and what it adds to ``[data]``.

    ``build(**task_options[, context=FamilyContext])`` returns the family.  ``spec``
    (same arguments) returns its ``TaskSpec`` without loading any data; when it is
    ``None``, the family is cheap to build and config validation builds it and reads its
    ``spec`` attribute.  ``protocols`` are the ``FamilyContext.protocol`` values the
    builder knows; ``has_validation(context)`` says whether the configured data has a
    meta-validation part (``None``: always).
    """

    name: str
    build: Callable[..., Any]
    data_keys: Mapping[str, Any]
    spec: Callable[..., TaskSpec] | None = None
    protocols: tuple[str, ...] = ("standard",)
    has_validation: Callable[[FamilyContext], bool] | None = None

    @property
    def takes_context(self) -> bool:
        return "context" in _parameters(self.build)

    def call(self, fn: Callable[..., Any], options: Mapping[str, Any], context: FamilyContext):
        """``fn(**options)``, plus ``context=context`` when ``build`` declares it."""
        if self.takes_context:
            return fn(**options, context=context)
        return fn(**options)


_FAMILIES: dict[str, FamilyEntry] = {}


def _parameters(fn: Callable[..., Any]) -> Mapping[str, inspect.Parameter]:
    try:
        return inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return {}


def register_family(
    name: str,
    *,
    data_keys: Mapping[str, Any] | None = None,
    spec: Callable[..., TaskSpec] | None = None,
    protocols: tuple[str, ...] = ("standard",),
    has_validation: Callable[[FamilyContext], bool] | None = None,
) -> Callable[[Any], Any]:
    """Decorator: make a family class or builder available as ``[task] family = name``.

    Args:
        name: lower-case letters, digits and underscores.
        data_keys: ``[data]`` keys this family reads, with their defaults (their types
            are checked like every fixed key's); a key another family already declares
            must have the same default.
        spec: ``spec(**task_options[, context])`` -> ``TaskSpec`` without loading data
            (give it for families whose construction reads files).
        protocols: the evaluation protocols the builder offers (``context.protocol``);
            ``"standard"`` always, e.g. ``"within-alphabet"`` for Omniglot.
        has_validation: ``has_validation(context) -> bool``, whether the configured data
            has a meta-validation part (default: always).
    """
    if not isinstance(name, str) or not _NAME.match(name):
        raise TaskError(
            f"task family name must be lower-case letters, digits and underscores starting "
            f"with a letter, got {name!r}"
        )
    keys = dict(data_keys or {})

    def decorate(build: Any) -> Any:
        taken = _FAMILIES.get(name)
        if taken is not None and _qualified(taken.build) != _qualified(build):
            raise TaskError(
                f"task family {name!r} is already registered to {_qualified(taken.build)}"
            )
        for key, default in keys.items():
            for other in _FAMILIES.values():
                if other.name != name and key in other.data_keys:
                    if other.data_keys[key] != default:
                        raise TaskError(
                            f"[data] key {key!r} of family {name!r} has default {default!r} "
                            f"but family {other.name!r} declares it with {other.data_keys[key]!r}"
                        )
        _FAMILIES[name] = FamilyEntry(
            name, build, MappingProxyType(keys), spec, tuple(protocols), has_validation
        )
        return build

    return decorate


def _qualified(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}:{getattr(obj, '__qualname__', repr(obj))}"


def _builtins() -> None:
    """Import the synthetic families (``import metaloop`` imports every layer, so the data
    layer's families, registered by ``metaloop.data``, are there too)."""
    importlib.import_module("metaloop.tasks.synthetic")


def _entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def available_families() -> list[str]:
    """Every family name a config may give: registered ones and installed entry points."""
    _builtins()
    return [*_FAMILIES, *(name for name in _entry_points() if name not in _FAMILIES)]


def get_family(name: str) -> FamilyEntry:
    """The registered family ``name`` (loading an installed entry point if need be)."""
    _builtins()
    if name in _FAMILIES:
        return _FAMILIES[name]
    entry = _entry_points().get(name) if isinstance(name, str) else None
    if entry is not None:
        try:
            entry.load()  # its module registers the family
        except Exception as err:
            raise TaskError(
                f"task family {name!r} (entry point {entry.value}) failed to import: "
                f"{type(err).__name__}: {err}".splitlines()[0]
            ) from err
        if name in _FAMILIES:
            return _FAMILIES[name]
    raise TaskError(
        f"unknown task family {name!r}; choose one of {', '.join(available_families())}"
    )


def all_data_keys() -> dict[str, Any]:
    """The ``[data]`` keys every registered family declares, with their defaults."""
    _builtins()
    keys: dict[str, Any] = {}
    for entry in _FAMILIES.values():
        for key, default in entry.data_keys.items():
            keys.setdefault(key, default)
    return keys


def spec_of(family: Any) -> TaskSpec | None:
    """A family's ``spec`` attribute, or ``None`` for a family that does not declare one."""
    spec = getattr(family, "spec", None)
    return spec if isinstance(spec, TaskSpec) else None
