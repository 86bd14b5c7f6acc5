"""TOML run configurations: load, override with ``--set key=value``, validate.

A configuration has six sections.  ``train`` and ``eval`` (and ``data``) have fixed keys;
``task``, ``model`` and ``algorithm`` name a class (``family`` / ``name``) and pass the
remaining keys to its constructor, so the valid keys are exactly that constructor's
arguments.  Every unknown key, wrong type or out-of-range value is reported before any
training starts, naming the key, what was given and what is allowed.

This module loads and writes configurations (``load_config``, ``dump_toml``); the schema
and ``ConfigError`` live in ``config_schema``, merging and ``--set`` overrides in
``config_overrides``, validation in ``config_checks`` (every public name of the three is
importable from here).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from metaloop.cli.config_checks import (
    CLASS_KEYS,
    DEVICE_TYPES,
    FLOAT_DTYPES,
    SEED_RANGE,
    _check_device,  # noqa: F401 (cli.bench imports it from here)
    constructor_kwargs,
    validate_fixed,
)
from metaloop.cli.config_overrides import apply_override, merge, parse_value
from metaloop.cli.config_schema import (
    CHOICES,
    DATA_DEFAULTS,
    EVAL_DEFAULTS,
    FIXED_SECTIONS,
    NON_NEGATIVE,
    PARTS,
    SECTIONS,
    TOP_LEVEL,
    TRAIN_DEFAULTS,
    ConfigError,
    data_keys,
    defaults,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = [
    "CHOICES",
    "CLASS_KEYS",
    "DATA_DEFAULTS",
    "DEVICE_TYPES",
    "EVAL_DEFAULTS",
    "FIXED_SECTIONS",
    "FLOAT_DTYPES",
    "NON_NEGATIVE",
    "PARTS",
    "SECTIONS",
    "SEED_RANGE",
    "TOP_LEVEL",
    "TRAIN_DEFAULTS",
    "ConfigError",
    "apply_override",
    "constructor_kwargs",
    "data_keys",
    "defaults",
    "dump_toml",
    "load_config",
    "merge",
    "parse_value",
    "tomllib",
    "validate_fixed",
]


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
