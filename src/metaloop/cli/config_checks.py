"""Checking a configuration (``metaloop.cli.config``): the top-level keys and the fixed
sections against their schema (``validate_fixed``: names, types, choices, ranges, finite
numbers, the seed, the device, the validation protocol), and a class section's keys
against its constructor's signature (``constructor_kwargs``: names, default types, simple
annotations, dtypes).  Every message names the key, what was given and what is allowed.
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

from metaloop.cli.config_schema import (
    CHOICES,
    FIXED_SECTIONS,
    NON_NEGATIVE,
    TOP_LEVEL,
    ConfigError,
    data_keys,
)
from metaloop.validate import is_int


def _type_name(value: Any) -> str:
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a table",
    }.get(type(value), type(value).__name__)


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


SEED_RANGE = (-(2**63), 2**63 - 1)  # what torch.Generator.manual_seed accepts, with room
CLASS_KEYS = (("task", "family"), ("model", "name"), ("algorithm", "name"))
DEVICE_TYPES = ("cpu", "cuda", "mps")


def _check_finite(where: str, value: Any) -> None:
    """NaN and infinity are never valid configuration numbers (TOML can spell them)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{where} must be a finite number, got {value!r}")
    if isinstance(value, (list, tuple)):
        for item in value:
            _check_finite(where, item)
    elif isinstance(value, dict):
        for k, item in value.items():
            _check_finite(f"{where}.{k}", item)


def _check_seed(where: str, value: int) -> None:
    low, high = SEED_RANGE
    if not low <= value <= high:
        raise ConfigError(f"{where} must be an integer in -2**63..2**63-1, got {value!r}")


def _check_device(value: str) -> None:
    import torch

    try:
        device = torch.device(value)
    except (RuntimeError, ValueError, TypeError):
        device = None
    if device is None or device.type not in DEVICE_TYPES:
        raise ConfigError(f"device must be one of cpu, cuda, cuda:N or mps, got {value!r}")
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (device.index is not None and device.index >= count):
            raise ConfigError(
                f"device {value!r} is not available on this machine ({count} CUDA devices); "
                'use device = "cpu"'
            )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f'device {value!r} is not available on this machine; use device = "cpu"')


def validate_fixed(cfg: dict[str, Any]) -> None:
    """Check the fixed-key sections (train, eval, data) and the top-level keys."""
    for key, default in TOP_LEVEL.items():
        cfg[key] = _check_type(key, cfg.get(key, default), default)
    _check_seed("seed", cfg["seed"])
    _check_device(cfg["device"])
    for section, key in CLASS_KEYS:
        name = cfg[section].get(key)
        if name is not None and not isinstance(name, str):
            raise ConfigError(
                f"{section}.{key} must be a string naming the {section} to use, got {name!r}"
            )
    for section, schema in FIXED_SECTIONS.items():
        if section == "data":
            schema = data_keys(cfg["task"].get("family", "sinusoid"))
        for key, value in cfg[section].items():
            if key not in schema:
                raise ConfigError(
                    f"[{section}] unknown key {key!r}; valid keys are {', '.join(sorted(schema))}"
                )
            cfg[section][key] = _check_type(f"{section}.{key}", value, schema[key])
            _check_finite(f"{section}.{key}", value)
            choices = CHOICES.get((section, key))
            if choices and cfg[section][key] not in choices:
                raise ConfigError(
                    f"{section}.{key} must be one of {', '.join(choices)}, got {value!r}"
                )
            default = schema[key]
            if isinstance(default, (int, float)) and not isinstance(default, bool):
                if key == "seed":
                    _check_seed(f"{section}.{key}", value)
                    continue
                minimum = 0 if (section, key) in NON_NEGATIVE else None
                if minimum is None and value <= 0:
                    raise ConfigError(f"{section}.{key} must be > 0, got {value!r}")
                if minimum is not None and value < minimum:
                    raise ConfigError(f"{section}.{key} must be >= 0, got {value!r}")
    steps = cfg["eval"]["steps"]
    if any(not is_int(s) or s < 0 for s in steps):
        raise ConfigError(f"eval.steps must be a list of integers >= 0, got {steps!r}")
    _check_validation_protocol(cfg["train"])
    if cfg["eval"]["divergence_factor"] < 1:
        raise ConfigError(
            f"eval.divergence_factor must be >= 1, got {cfg['eval']['divergence_factor']!r}"
        )


def _check_validation_protocol(train: dict[str, Any]) -> None:
    """``train.validation_steps`` (integers >= 0) and ``train.select_on`` (``""``, a metric
    name, or ``"metric@steps"`` with ``steps`` among the validation step counts)."""
    steps = train["validation_steps"]
    if any(not is_int(s) or s < 0 for s in steps):
        raise ConfigError(f"train.validation_steps must be a list of integers >= 0, got {steps!r}")
    select = train["select_on"]
    if not select:
        return
    metric, at, counts = select.partition("@")
    if not metric or (at and not all(c.strip().isdigit() for c in counts.split(","))):
        raise ConfigError(
            "train.select_on must be a metric name, 'metric@steps' or 'metric@steps,steps,...' "
            f"(for example 'loss@10' or 'loss@1,5,10'), got {select!r}"
        )
    for count in counts.split(",") if at else ():
        if steps and int(count) not in steps:
            raise ConfigError(
                f"train.select_on = {select!r} names {count.strip()} steps; "
                f"train.validation_steps {steps} does not include it"
            )


def constructor_kwargs(
    where: str, target: Callable[..., Any], options: Mapping[str, Any], skip: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Check ``options`` against ``target``'s signature (names and simple types)."""
    sig = inspect.signature(target)
    params = {
        name: p
        for name, p in sig.parameters.items()
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
                if name not in ("self", *skip) and p.kind in (
                    p.POSITIONAL_OR_KEYWORD,
                    p.KEYWORD_ONLY,
                ):
                    valid.setdefault(name, p)
    out = {}
    for key, value in options.items():
        if key not in valid:
            raise ConfigError(
                f"[{where}] unknown key {key!r} for {getattr(target, '__name__', target)}; "
                f"valid keys are {', '.join(sorted(valid)) or '(none)'}"
            )
        name = f"{where}.{key}"
        _check_finite(name, value)
        default = valid[key].default
        if _is_dtype(default):
            value = _dtype(name, value)
        elif default is not inspect.Parameter.empty and default is not None:
            if isinstance(default, tuple):
                default = list(default)
            value = _check_type(name, value, default)
            if isinstance(default, tuple | list) and isinstance(value, list):
                value = tuple(value) if isinstance(valid[key].default, tuple) else value
        if not _is_dtype(default):
            _check_annotation(name, options[key], valid[key].annotation)
        out[key] = value
    return out


# simple annotations (strings under ``from __future__ import annotations``) that configs
# are checked against: ``int | None``, ``tuple[float, float]``, ``Sequence[int]`` ...
_SIMPLE_TYPES: dict[str, tuple[type, ...]] = {
    "int": (int,),
    "float": (int, float),
    "str": (str,),
    "bool": (bool,),
    "None": (),
}
_TYPE_WORDS = {"int": "an integer", "float": "a number", "str": "a string", "bool": "a boolean"}
_SEQUENCE = re.compile(r"^(?:tuple|list|Sequence)\[(\w+)(?:, \.\.\.)?\]$")
_FIXED_TUPLE = re.compile(r"^tuple\[(\w+(?:, \w+)+)\]$")


def _is_instance(value: Any, word: str) -> bool:
    if word == "bool":
        return isinstance(value, bool)
    return isinstance(value, _SIMPLE_TYPES[word]) and not isinstance(value, bool)


def _annotation_part(part: str) -> tuple[str, Callable[[Any], bool]] | None:
    """``(description, predicate)`` for one member of a simple annotation, else ``None``."""
    if part in _TYPE_WORDS:
        return _TYPE_WORDS[part], lambda v: _is_instance(v, part)
    fixed = _FIXED_TUPLE.match(part)
    if fixed:
        items = [w.strip() for w in fixed.group(1).split(",")]
        if not all(w in _TYPE_WORDS for w in items):
            return None
        kinds = ", ".join(_TYPE_WORDS[w] for w in items)
        return (
            f"a list of {len(items)} values ({kinds})",
            lambda v: (
                isinstance(v, (list, tuple))
                and len(v) == len(items)
                and all(_is_instance(x, w) for x, w in zip(v, items))
            ),
        )
    seq = _SEQUENCE.match(part)
    if seq and seq.group(1) in _TYPE_WORDS:
        word = seq.group(1)
        return (
            f"a list of {_TYPE_WORDS[word].split(' ', 1)[1]}s",
            lambda v: isinstance(v, (list, tuple)) and all(_is_instance(x, word) for x in v),
        )
    return None


def _check_annotation(where: str, value: Any, annotation: Any) -> None:
    """Check ``value`` against a parameter annotation made of simple members (``int``,
    ``float | None``, ``tuple[float, float]``, ``str | Sequence[str] | None`` ...); an
    annotation with any other member (a callable, a class) is not checked."""
    if not isinstance(annotation, str):
        return
    parts = [p.strip() for p in annotation.split("|") if p.strip() != "None"]
    checks = [_annotation_part(p) for p in parts]
    if not checks or any(c is None for c in checks):
        return
    if not any(ok(value) for _, ok in checks):
        raise ConfigError(f"{where} must be {' or '.join(d for d, _ in checks)}, got {value!r}")


FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")


def _is_dtype(default: Any) -> bool:
    return type(default).__name__ == "dtype" and type(default).__module__ == "torch"


def _dtype(where: str, value: Any) -> Any:
    import torch

    if value not in FLOAT_DTYPES:
        raise ConfigError(f"{where} must be one of {', '.join(FLOAT_DTYPES)}, got {value!r}")
    return getattr(torch, value)
