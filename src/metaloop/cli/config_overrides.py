"""Merging a TOML table into a configuration and ``--set key=value`` overrides
(``metaloop.cli.config``).
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Mapping
from typing import Any

from metaloop.cli.config_checks import _type_name
from metaloop.cli.config_schema import SECTIONS, TOP_LEVEL, ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


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
