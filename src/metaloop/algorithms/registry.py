"""The open algorithm registry: a name (or an import path) -> a ``MetaLearner`` class.

Three ways to name a learner, tried in this order by ``resolve``:

1. a name registered with the ``@register("name")`` class decorator (every built-in
   algorithm file does this; importing ``metaloop.algorithms`` registers them all);
2. an entry point of the group ``metaloop.algorithms`` declared by an installed package
   (``[project.entry-points."metaloop.algorithms"] mylearner = "mypkg.mod:MyLearner"``);
3. an import path ``"package.module:Class"``.

An import path only imports a module that is already importable in this environment
(``importlib.import_module``; no path is added, nothing stored in a run directory is
executed), and the attribute must be a ``MetaLearner`` subclass.  Every failure raises
``RegistryError`` (a ``ValueError``) with one line naming what was given and what is allowed.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import pkgutil
import re
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from metaloop.algorithms.base import MetaLearner

#: the entry-point group through which installed packages add learners
ENTRY_POINT_GROUP = "metaloop.algorithms"

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_IDENTIFIER = r"[A-Za-z_][A-Za-z0-9_]*"
_PATH = re.compile(rf"^{_IDENTIFIER}(?:\.{_IDENTIFIER})*:{_IDENTIFIER}$")

_REGISTRY: dict[str, type] = {}

C = TypeVar("C", bound=type)


class RegistryError(ValueError):
    """An algorithm name or import path does not resolve to a ``MetaLearner`` class."""


def register(name: str) -> Any:
    """Class decorator: make ``cls`` available as ``[algorithm] name = "<name>"``.

    ``name`` is lower-case letters, digits and underscores.  Registering a second class
    under a taken name is an error (re-registering the same class, e.g. on a module
    reload, is allowed).
    """
    if not isinstance(name, str) or not _NAME.match(name):
        raise RegistryError(
            f"algorithm name must be lower-case letters, digits and underscores starting "
            f"with a letter, got {name!r}"
        )

    def decorate(cls: C) -> C:
        _check_learner_class(cls, name)
        taken = _REGISTRY.get(name)
        if taken is not None and _qualified(taken) != _qualified(cls):
            raise RegistryError(
                f"algorithm name {name!r} is already registered to {_qualified(taken)}; "
                f"choose another name for {_qualified(cls)}"
            )
        _REGISTRY[name] = cls
        return cls

    return decorate


_SCANNED = False


def _builtins() -> None:
    """Import every module of ``metaloop.algorithms`` once (their ``@register`` decorators
    fill the registry), so that an in-tree algorithm is one new file: nothing else names
    it.  A module whose optional third-party dependency is not installed is left out."""
    global _SCANNED
    package = importlib.import_module("metaloop.algorithms")
    if _SCANNED:
        return
    _SCANNED = True
    for module in pkgutil.iter_modules(package.__path__):
        try:
            importlib.import_module(f"{package.__name__}.{module.name}")
        except ModuleNotFoundError as err:  # an optional third-party package is missing
            if not err.name or err.name.split(".")[0] == "metaloop":
                raise


def _qualified(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _check_learner_class(obj: Any, given: str) -> None:
    from metaloop.algorithms.base import MetaLearner

    if not (isinstance(obj, type) and issubclass(obj, MetaLearner)):
        raise RegistryError(
            f"algorithm {given!r} resolves to {obj!r}, which is not a MetaLearner subclass"
        )


def _entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def available() -> list[str]:
    """Every name ``resolve`` accepts without an import path: registered names (in the
    order they were registered), then the entry points of installed packages."""
    _builtins()
    return [*_REGISTRY, *(name for name in _entry_points() if name not in _REGISTRY)]


def resolve(name_or_path: str) -> type[MetaLearner]:
    """The ``MetaLearner`` class of a registered name, an entry point or
    ``"package.module:Class"`` (module docstring)."""
    if not isinstance(name_or_path, str) or not name_or_path:
        raise RegistryError(
            f"algorithm must be a registered name or 'package.module:Class', got {name_or_path!r}"
        )
    _builtins()
    if name_or_path in _REGISTRY:
        return _REGISTRY[name_or_path]  # type: ignore[return-value]
    if ":" not in name_or_path:
        entry = _entry_points().get(name_or_path)
        if entry is None:
            raise RegistryError(
                f"unknown algorithm {name_or_path!r}; choose one of {', '.join(available())} "
                f"or name a class as 'package.module:Class'"
            )
        try:
            cls = entry.load()
        except Exception as err:  # an installed plugin that fails to import
            raise RegistryError(
                f"algorithm {name_or_path!r} (entry point {entry.value}) failed to import: "
                f"{type(err).__name__}: {err}".splitlines()[0]
            ) from err
        _check_learner_class(cls, name_or_path)
        return cls
    return _import_path(name_or_path)


def _import_path(path: str) -> type[MetaLearner]:
    if not _PATH.match(path):
        raise RegistryError(
            f"algorithm path {path!r} is not of the form 'package.module:Class' "
            "(dotted module name, a colon, a class name)"
        )
    module_name, _, attr = path.partition(":")
    try:
        found = importlib.util.find_spec(module_name) is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise RegistryError(
            f"algorithm path {path!r}: module {module_name!r} is not importable in this "
            "environment (install it or put it on PYTHONPATH)"
        )
    try:
        module = importlib.import_module(module_name)
    except Exception as err:
        raise RegistryError(
            f"algorithm path {path!r}: importing {module_name!r} failed: "
            f"{type(err).__name__}: {err}".splitlines()[0]
        ) from err
    if not hasattr(module, attr):
        raise RegistryError(f"algorithm path {path!r}: module {module_name!r} has no {attr!r}")
    cls = getattr(module, attr)
    _check_learner_class(cls, path)
    return cls


def name_of(cls: type) -> str:
    """The name under which ``cls`` is registered, else its ``"module:Class"`` path."""
    _builtins()
    for name, registered in _REGISTRY.items():
        if registered is cls:
            return name
    return _qualified(cls)
