"""Run directories as the commands read them: the config and learner of a run, several
runs as an ensemble, and the evaluation-time wrappers (test-time shift, balanced
assignment) that ``eval`` and ``lake-runs`` apply to them."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from metaloop.cli.config import ConfigError, load_config
from metaloop.validate import is_int

CONFIG_NAME = "config.toml"


def runtime(cfg: dict[str, Any]) -> None:
    """Process-wide settings of a run: torch threads and the allocator policy
    (``metaloop.runtime.configure``)."""
    from metaloop.runtime import configure

    configure(cfg["train"]["threads"], cfg["train"]["retain_memory"])


def load_run(
    run_dir: str | Path,
    checkpoint: str = "best",
    overrides: list[str] | None = None,
    cache: dict[Any, Any] | None = None,
):
    """Config and learner of a run directory, weights from its best or latest checkpoint.

    A learner that needs the training classes (``needs_training_classes``) gets the
    training family built, sharing ``cache`` with the command's other builds."""
    from metaloop.cli.build import build_learner, build_model, validate
    from metaloop.train.checkpoint import load_best, load_latest

    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_NAME).exists():
        raise ConfigError(f"{run_dir} is not a run directory (no {CONFIG_NAME})")
    cfg = load_config(run_dir / CONFIG_NAME, overrides)
    validate(cfg)
    model = build_model(cfg)
    learner = build_learner(cfg, model, cache=cache, run_dir=run_dir)
    state = load_best(run_dir) if checkpoint == "best" else load_latest(run_dir)
    if state is None:
        raise ConfigError(f"{run_dir} has no checkpoint yet (train it first)")
    try:
        learner.load_state_dict(state["learner"])
    except RuntimeError as err:  # config.toml edited, or --set changed the model
        detail = " ".join(line.strip() for line in str(err).splitlines()[1:3])
        raise ConfigError(
            f"the checkpoint of {run_dir} does not fit the learner built from its config"
            f"{' and --set ' + ', '.join(overrides) if overrides else ''}: {detail}"
        ) from err
    return cfg, learner, state


@dataclass(frozen=True)
class Member:
    """One run directory loaded for evaluation."""

    path: str
    cfg: dict[str, Any]
    learner: Any
    state: dict[str, Any]


def load_members(
    args: argparse.Namespace,
    overrides: list[str] | None = None,
    cache: dict[Any, Any] | None = None,
) -> tuple[Any, list[Member]]:
    """The learner to evaluate and the loaded runs: one run's learner, or with several run
    directories their ``Ensemble`` (the members must take the same inputs as the first run,
    whose test episodes they share); data loads share ``cache``."""
    members = [
        Member(path, *load_run(path, args.checkpoint, overrides, cache)) for path in args.run_dir
    ]
    first = members[0]
    for member in members[1:]:
        for section, key in (("task", "family"), ("data", "image_size")):
            mine, theirs = first.cfg[section].get(key), member.cfg[section].get(key)
            if mine != theirs:
                raise ConfigError(
                    f"ensemble members must take the same inputs as the first run "
                    f"{first.path}: {member.path} has {section}.{key} = {theirs!r}, the first "
                    f"run {mine!r}"
                )
    if len(members) == 1:
        return first.learner, members
    from metaloop.evaluation import Ensemble

    try:
        return Ensemble([m.learner for m in members]), members
    except ValueError as err:
        raise ConfigError(f"cannot ensemble {', '.join(args.run_dir)}: {err}") from err


def describe_members(members: list[Member]) -> list[dict[str, Any]]:
    return [
        {
            "run_dir": str(m.path),
            "algorithm": m.cfg["algorithm"].get("name"),
            "checkpoint_iteration": m.state.get("iteration"),
        }
        for m in members
    ]


def member_shift(member: Any, option: int | None) -> int:
    """``--tta-shift`` if given, else the run's ``[eval] tta_shift``; checked."""
    shift = option if option is not None else member.cfg["eval"]["tta_shift"]
    if not is_int(shift) or shift < 0:
        raise ConfigError(f"--tta-shift must be an integer >= 0, got {shift}")
    return shift


def apply_test_time_shift(
    learner: Any, members: list[Member], option: int | None
) -> tuple[Any, int]:
    """Apply ``--tta-shift`` (else each run's ``[eval] tta_shift``) to every member: a metric
    learner averages embeddings over the translated views (its ``test_time_shift``), any
    other classifier is wrapped in ``ShiftAveraged`` (predictions averaged over translated
    queries).  Returns the learner to evaluate and the first nonzero shift (0: off)."""
    from metaloop.evaluation.shift import ShiftAveraged

    shifts = []
    wrapped = []
    for member in members:
        shift, model = member_shift(member, option), member.learner
        if shift and model.shifts_embeddings:
            model.test_time_shift = shift
        elif shift:
            try:
                model = ShiftAveraged(model, shift)
            except ValueError as err:
                raise ConfigError(
                    f"--tta-shift {shift} for {member.path} "
                    f"({member.cfg['algorithm'].get('name')!r}): {err}"
                ) from err
        shifts.append(shift)
        wrapped.append(model)
    if len(members) == 1:
        learner = wrapped[0]
    else:
        for i, model in enumerate(wrapped):
            learner.members[i] = model
    return learner, next((s for s in shifts if s), 0)


def apply_balance(learner: Any, args: argparse.Namespace) -> Any:
    """``--balanced``: wrap the learner in ``BalancedAssignment``; checks the temperature
    (which means nothing without ``--balanced``)."""
    from metaloop.evaluation import BalancedAssignment

    if not args.balanced:
        if args.balance_temperature is not None:
            raise ConfigError("--balance-temperature needs --balanced")
        return learner
    try:
        return BalancedAssignment(learner, temperature=balance_temperature(args))
    except ValueError as err:
        raise ConfigError(f"--balanced: {err}") from err


def balance_temperature(args: argparse.Namespace) -> float:
    return 1.0 if args.balance_temperature is None else args.balance_temperature


def balance_report(args: argparse.Namespace) -> dict[str, float] | None:
    return {"temperature": balance_temperature(args)} if args.balanced else None
