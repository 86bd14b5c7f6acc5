"""The analyses of ``metaloop diagnose`` that meta-train fresh learners, one per setting
(``--pool-sizes``, ``--bn-policies``, ``--diversity``), for ``--iterations`` with Adam at
``--outer-lr`` on meta-batches of ``--meta-batch``."""

from __future__ import annotations

import argparse
import copy
import dataclasses
import functools
from typing import Any

from metaloop.cli.config import ConfigError
from metaloop.cli.diagnose_options import _synthetic_only


def _progress(args: argparse.Namespace) -> Any:
    """Where the long analyses report each finished point: stdout, or stderr under
    ``--json`` (stdout then holds the JSON report alone)."""
    import sys

    return functools.partial(print, file=sys.stderr, flush=True) if args.json else print


def _meta_batch(args: argparse.Namespace, cfg: dict[str, Any]) -> int:
    return args.meta_batch or int(cfg["train"].get("meta_batch_size", 10))


def _pool_sizes(
    args: argparse.Namespace, cfg: dict[str, Any], family: Any, make_learner: Any
) -> list[dict[str, Any]]:
    """Synthetic families: pools of ``N`` tasks with ``--pool-points`` fixed points each,
    held out against fresh tasks.  Image families (``EpisodicFamily``): pools of ``N``
    whole ``--pool-key`` groups of the training part (augmented as in training), held out
    against the test part, which must share no group with the pools."""
    from metaloop.cli.build import build_family
    from metaloop.data.episodes import EpisodicFamily
    from metaloop.diagnostics import overfitting

    log = _progress(args)
    if isinstance(family, EpisodicFamily):
        cache: dict[Any, Any] = {}
        train = build_family(cfg, "train", cache=cache)
        try:
            pools = overfitting.group_pools(train, args.pool_sizes, args.pool_key, args.pool_seed)
        except ValueError as err:  # TaskError included
            raise ConfigError(f"--pool-sizes: {err}") from err
        held_out = build_family(cfg, "test", evaluation=True, cache=cache)
        largest = pools[max(pools)].dataset.values(args.pool_key)
        shared = set(largest) & set(held_out.dataset.values(args.pool_key))
        if shared:
            raise ConfigError(
                f"--pool-sizes: the test part shares {len(shared)} {args.pool_key} groups with "
                f"the pools (e.g. {sorted(shared, key=str)[0]!r}); use a split whose test "
                'groups are disjoint (Omniglot: data.split = "lake")'
            )
        points = overfitting.family_pool_sweep(
            make_learner,
            pools,
            held_out,
            iterations=args.iterations,
            meta_batch_size=_meta_batch(args, cfg),
            outer_lr=args.outer_lr,
            log=log,
            train_eval=lambda pool: pool.with_shape(transform=None),
        )
        out = [dataclasses.asdict(p) for p in points]
        for p in out:
            p["classes"] = pools[p["pool_size"]].num_classes
        return out
    _synthetic_only(family, "--pool-sizes")
    shots, queries = family.shots, family.queries
    if shots + queries > args.pool_points:
        raise ConfigError(
            f"--pool-points must be >= shots + queries = {shots + queries}, got {args.pool_points}"
        )
    half = args.pool_points // 2
    pool_family = build_family(cfg, "train", shots=half, queries=args.pool_points - half)
    points = overfitting.pool_size_sweep(
        make_learner,
        pool_family,
        args.pool_sizes,
        shots,
        queries,
        iterations=args.iterations,
        meta_batch_size=_meta_batch(args, cfg),
        outer_lr=args.outer_lr,
        log=log,
    )
    return [dataclasses.asdict(p) for p in points]


def _bn_policies(args: argparse.Namespace, cfg: dict[str, Any]) -> dict[str, Any]:
    """The run's configuration retrained with each ``--bn-policies`` policy for
    ``--iterations`` (meta-batch ``--meta-batch``, Adam ``--outer-lr``), tested on
    ``--episodes`` episodes of the test part at the run's evaluation sizes and steps."""
    from metaloop.cli.build import build_family, build_learner, build_model
    from metaloop.diagnostics import norm_policies

    if "norm" not in cfg["model"]:
        raise ConfigError(
            f"--bn-policies needs a model with a normalization policy ([model] norm, e.g. "
            f"conv4 or resnet12), got model {cfg['model'].get('name')!r} without one"
        )
    if args.small_queries < 0:
        raise ConfigError(f"--small-queries must be >= 0, got {args.small_queries}")
    cache: dict[Any, Any] = {}
    train = build_family(cfg, "train", cache=cache)
    ev = cfg["eval"]
    sizes = {k: ev.get(k) for k in ("ways", "shots", "queries")}
    test = build_family(cfg, "test", evaluation=True, cache=cache, **sizes)
    small = None
    if args.small_queries:
        small_sizes = {**sizes, "queries": args.small_queries}
        small = build_family(cfg, "test", evaluation=True, cache=cache, **small_sizes)
    steps = max(ev["steps"]) if ev.get("steps") else None  # the run's reported count

    def make_learner(policy: str) -> Any:
        changed = copy.deepcopy(cfg)
        changed["model"]["norm"] = policy
        return build_learner(changed, build_model(changed), family=train)

    results = norm_policies.norm_policy_sweep(
        make_learner,
        args.bn_policies,
        train,
        test,
        iterations=args.iterations,
        meta_batch_size=_meta_batch(args, cfg),
        outer_lr=args.outer_lr,
        episodes=args.episodes,
        steps=steps,
        small_family=small,
        log=_progress(args),
    )
    return {
        "test_queries": test.queries,
        "small_queries": args.small_queries or None,
        "results": [dataclasses.asdict(r) for r in results],
    }


def _diversity(
    args: argparse.Namespace, cfg: dict[str, Any], family: Any, make_learner: Any
) -> dict[str, Any]:
    """Fresh learners meta-trained on the family's interval parameters scaled to each width,
    scored on the narrowest training family (in range for all) and on ranges shifted by
    ``--diversity-shift`` configured widths (the full configured width)."""
    from metaloop.diagnostics import diversity

    _synthetic_only(family, "--diversity")
    attrs = [
        k
        for k, v in vars(family).items()
        if isinstance(v, tuple) and len(v) == 2 and k != "x_range"
    ]
    if not attrs:
        raise ConfigError(
            f"--diversity needs a family with interval parameters (e.g. sinusoid's amplitude "
            f"and phase), {type(family).__name__} has none"
        )
    widths = sorted(args.diversity)
    train = {w: diversity.scaled_family(family, attrs, width=w) for w in widths}
    test = {
        f"in-range (width {widths[0]:g})": train[widths[0]],
        f"shifted by {args.diversity_shift:g}": diversity.scaled_family(
            family, attrs, width=1.0, shift=args.diversity_shift
        ),
    }
    points = diversity.diversity_sweep(
        make_learner,
        train,
        test,
        iterations=args.iterations,
        meta_batch_size=_meta_batch(args, cfg),
        outer_lr=args.outer_lr,
        log=_progress(args),
    )
    return {
        "attributes": attrs,
        "ranges": {f"{w:g}": {a: getattr(f, a) for a in attrs} for w, f in train.items()},
        "test_ranges": {k: {a: getattr(f, a) for a in attrs} for k, f in test.items()},
        "points": [dataclasses.asdict(p) for p in points],
    }
