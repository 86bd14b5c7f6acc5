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
import math
import re
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from metaloop.validate import is_int

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
DATA_DEFAULTS: dict[str, Any] = {
    "root": "",
    "split": "vinyals",
    "image_size": 28,
    "rotations": True,
    "cache_dir": "",
    "download": False,
    "shift": 0,
    # training images: Koch et al.'s random affine distortions (rotation, shear, scale, shift)
    "affine": False,
    "train_episodes": "any",
    # Lake's splits: whole background alphabets held out for meta-validation (0: train on
    # all 30, no validation; the last checkpoint is then the one evaluated)
    "val_alphabets": 5,
}
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


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> dict[str, Any]:
    """Defaults, updated by the TOML file at ``path``, then by ``key=value`` overrides."""
    cfg = defaults()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            what = "is a directory, not a file" if path.is_dir() else "does not exist"
            raise ConfigError(f"config file {path} {what}")
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as err:
            raise ConfigError(f"config file {path} cannot be read: {err.strerror or err}") from err
        except UnicodeDecodeError as err:
            raise ConfigError(
                f"config file {path} is not UTF-8 text (byte {err.start}: {err.reason}); a "
                "config is a TOML file"
            ) from err
        try:
            loaded = tomllib.loads(text)
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
        raise ConfigError(
            f"--set {key}: unknown section {section!r}; sections are {', '.join(SECTIONS)}"
        )
    if "." in sub:  # nested table, e.g. eval.reference.1
        head, _, tail = sub.partition(".")
        table = cfg[section].setdefault(head, {})
        if not isinstance(table, dict):
            raise ConfigError(
                f"--set {key}: {section}.{head} is {_type_name(table)}, not a table; "
                f"use --set {section}.{head}=VALUE"
            )
        table[tail] = value
        return
    if sub in ("family", "name") and section in ("task", "model", "algorithm"):
        if value != _class_key(cfg[section]):
            cfg[section] = {}
    cfg[section][sub] = value


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
            lines.append(f"\n[{section}.{_toml_key(k)}]")
            for kk, vv in v.items():
                lines.append(f"{_toml_key(kk)} = {_toml_value(vv)}")
    return "\n".join(lines) + "\n"


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_ESCAPES = {
    '"': '\\"',
    "\\": "\\\\",
    "\b": "\\b",
    "\t": "\\t",
    "\n": "\\n",
    "\f": "\\f",
    "\r": "\\r",
}


def _toml_key(key: Any) -> str:
    key = str(key)
    return key if _BARE_KEY.fullmatch(key) and not key.isdigit() else _toml_string(key)


def _toml_string(text: str) -> str:
    """A TOML basic string: quotes, backslashes and control characters escaped."""
    out = []
    for ch in text:
        code = ord(ch)
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\u{code:04X}")
        elif 0xD800 <= code <= 0xDFFF:
            raise ConfigError(f"cannot write {text!r} to TOML (it holds a lone surrogate)")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return _toml_string(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items()) + "}"
    raise ConfigError(f"cannot write {v!r} to TOML")
