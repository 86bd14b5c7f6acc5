"""TOML run configurations: load, override with ``--set key=value``, validate.

A configuration has six sections.  ``train`` and ``eval`` (and ``data``) have fixed keys;
``task``, ``model`` and ``algorithm`` name a class (``family`` / ``name``) and pass the
remaining keys to its constructor, so the valid keys are exactly that constructor's
arguments.  Every unknown key, wrong type or out-of-range value is reported before any
training starts, naming the key, what was given and what is allowed.
"""

from __future__ import annotations

import copy
import inspect
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


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
    "patience": 0,
    "checkpoint_every": 1000,
    "log_every": 100,
    "nonfinite": "stop",
    "tasks_per_chunk": 0,
    "threads": 0,
    "progress": True,
    "tensorboard": False,
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
    "reference_name": "",
    "reference": {},
}
DATA_DEFAULTS: dict[str, Any] = {
    "root": "",
    "split": "vinyals",
    "image_size": 28,
    "rotations": True,
    "cache_dir": "",
    "download": False,
}
CHOICES: dict[tuple[str, str], tuple[str, ...]] = {
    ("train", "optimizer"): ("adam", "sgd", "adamw"),
    ("train", "scheduler"): ("none", "cosine", "step"),
    ("train", "nonfinite"): ("stop", "skip"),
    ("eval", "protocol"): ("standard", "within-alphabet"),
    ("data", "split"): ("vinyals", "lake", "small1", "small2"),
}
NON_NEGATIVE = {("train", k) for k in ("weight_decay", "grad_clip", "patience", "tasks_per_chunk", "threads")} | {
    ("eval", k) for k in ("shots", "queries", "ways")
}
FIXED_SECTIONS = {"train": TRAIN_DEFAULTS, "eval": EVAL_DEFAULTS, "data": DATA_DEFAULTS}
TOP_LEVEL = {"seed": 0, "device": "cpu", "name": ""}
SECTIONS = ("task", "model", "algorithm", "data", "train", "eval")


def defaults() -> dict[str, Any]:
    cfg: dict[str, Any] = copy.deepcopy(TOP_LEVEL)
    for section, values in FIXED_SECTIONS.items():
        cfg[section] = copy.deepcopy(values)
    cfg["task"] = {"family": "sinusoid"}
    cfg["model"] = {"name": "mlp"}
    cfg["algorithm"] = {"name": "maml"}
    return cfg


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> dict[str, Any]:
    """Defaults, updated by the TOML file at ``path``, then by ``key=value`` overrides."""
    cfg = defaults()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            loaded = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"config file {path} is not valid TOML: {err}") from err
        merge(cfg, loaded, source=str(path))
    for item in overrides or []:
        apply_override(cfg, item)
    return cfg


def merge(cfg: dict[str, Any], update: Mapping[str, Any], source: str = "config") -> None:
    for key, value in update.items():
        if key in SECTIONS:
            if not isinstance(value, Mapping):
                raise ConfigError(f"{source}: [{key}] must be a table, got {value!r}")
            if key in ("task", "model", "algorithm") and (
                value.get("family", value.get("name")) not in (None, _class_key(cfg[key]))
            ):
                cfg[key] = {}  # a different class: its defaults are not ours
            for k, v in value.items():
                cfg[key][k] = copy.deepcopy(v)
        elif key in TOP_LEVEL:
            cfg[key] = value
        else:
            raise ConfigError(
                f"{source}: unknown top-level key {key!r}; valid keys are "
                f"{', '.join(sorted(TOP_LEVEL))} and sections {', '.join(SECTIONS)}"
            )


def _class_key(section: Mapping[str, Any]) -> Any:
    return section.get("family", section.get("name"))


def parse_value(text: str) -> Any:
    """Parse an override value as a TOML value, falling back to a bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_override(cfg: dict[str, Any], item: str) -> None:
    """Apply ``section.key=value`` (or ``seed=value``) to ``cfg``."""
    if "=" not in item:
        raise ConfigError(f"--set expects key=value (e.g. train.iterations=1000), got {item!r}")
    key, _, text = item.partition("=")
    key = key.strip()
    value = parse_value(text.strip())
    if "." not in key:
        if key not in TOP_LEVEL:
            raise ConfigError(
                f"--set {key}: unknown key; top-level keys are {', '.join(sorted(TOP_LEVEL))}, "
                f"section keys look like train.iterations"
            )
        cfg[key] = value
        return
    section, _, sub = key.partition(".")
    if section not in SECTIONS:
        raise ConfigError(f"--set {key}: unknown section {section!r}; sections are {', '.join(SECTIONS)}")
    if "." in sub:  # nested table, e.g. eval.reference.1
        head, _, tail = sub.partition(".")
        cfg[section].setdefault(head, {})[tail] = value
        return
    if sub in ("family", "name") and section in ("task", "model", "algorithm"):
        if value != _class_key(cfg[section]):
            cfg[section] = {}
    cfg[section][sub] = value


def _type_name(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "a list", dict: "a table"}.get(type(value), type(value).__name__)


def _check_type(where: str, value: Any, default: Any) -> Any:
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, (list, tuple)):
        ok = isinstance(value, (list, tuple))
    elif isinstance(default, dict):
        ok = isinstance(value, dict)
    elif isinstance(default, str):
        ok = isinstance(value, str)
    else:
        ok = True
    if not ok:
        raise ConfigError(f"{where} must be {_type_name(default)}, got {value!r}")
    return value


def validate_fixed(cfg: dict[str, Any]) -> None:
    """Check the fixed-key sections (train, eval, data) and the top-level keys."""
    for key, default in TOP_LEVEL.items():
        cfg[key] = _check_type(key, cfg.get(key, default), default)
    for section, schema in FIXED_SECTIONS.items():
        for key, value in cfg[section].items():
            if key not in schema:
                raise ConfigError(
                    f"[{section}] unknown key {key!r}; valid keys are {', '.join(sorted(schema))}"
                )
            cfg[section][key] = _check_type(f"{section}.{key}", value, schema[key])
            choices = CHOICES.get((section, key))
            if choices and cfg[section][key] not in choices:
                raise ConfigError(
                    f"{section}.{key} must be one of {', '.join(choices)}, got {value!r}"
                )
            default = schema[key]
            if isinstance(default, (int, float)) and not isinstance(default, bool):
                minimum = 0 if (section, key) in NON_NEGATIVE else None
                if minimum is None and value <= 0 and key not in ("seed",):
                    raise ConfigError(f"{section}.{key} must be > 0, got {value!r}")
                if minimum is not None and value < minimum:
                    raise ConfigError(f"{section}.{key} must be >= 0, got {value!r}")
    steps = cfg["eval"]["steps"]
    if any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in steps):
        raise ConfigError(f"eval.steps must be a list of integers >= 0, got {steps!r}")


def constructor_kwargs(
    where: str, target: Callable[..., Any], options: Mapping[str, Any], skip: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Check ``options`` against ``target``'s signature (names and simple types)."""
    sig = inspect.signature(target)
    params = {
        name: p for name, p in sig.parameters.items()
        if name not in ("self", *skip) and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }
    accepts_kwargs = any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values())
    valid = dict(params)
    if accepts_kwargs:
        for base in getattr(target, "__mro__", ())[1:]:
            init = base.__dict__.get("__init__")
            if init is None:
                continue
            for name, p in inspect.signature(init).parameters.items():
                if name not in ("self", *skip) and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
                    valid.setdefault(name, p)
    out = {}
    for key, value in options.items():
        if key not in valid:
            raise ConfigError(
                f"[{where}] unknown key {key!r} for {getattr(target, '__name__', target)}; "
                f"valid keys are {', '.join(sorted(valid)) or '(none)'}"
            )
        default = valid[key].default
        if default is not inspect.Parameter.empty and default is not None:
            if isinstance(default, tuple):
                default = list(default)
            value = _check_type(f"{where}.{key}", value, default)
            if isinstance(default, tuple | list) and isinstance(value, list):
                value = tuple(value) if isinstance(valid[key].default, tuple) else value
        out[key] = value
    return out


def dump_toml(cfg: Mapping[str, Any]) -> str:
    """Write a configuration as TOML (only the types configs use)."""
    lines: list[str] = []
    for key in TOP_LEVEL:
        if key in cfg:
            lines.append(f"{key} = {_toml_value(cfg[key])}")
    for section in SECTIONS:
        if section not in cfg:
            continue
        values = cfg[section]
        lines.append(f"\n[{section}]")
        tables = {}
        for k, v in values.items():
            if isinstance(v, dict):
                tables[k] = v
            else:
                lines.append(f"{k} = {_toml_value(v)}")
        for k, v in tables.items():
            lines.append(f"\n[{section}.{k}]")
            for kk, vv in v.items():
                lines.append(f"{_toml_key(kk)} = {_toml_value(vv)}")
    return "\n".join(lines) + "\n"


def _toml_key(key: Any) -> str:
    key = str(key)
    return key if key.replace("_", "").replace("-", "").isalnum() and not key.isdigit() else f'"{key}"'


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items()) + "}"
    raise ConfigError(f"cannot write {v!r} to TOML")
