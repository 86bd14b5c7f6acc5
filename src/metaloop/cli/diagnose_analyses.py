"""The analyses of ``metaloop diagnose`` beyond the default report (each behind a flag):

* ``--oracle``: the learned ``theta_0`` against the closed-form one-step MAML optimum
  (linear regression, 1-D quadratics, Gaussian means; bias-free linear model);
* ``--inner-lrs A,B,..``: query and support loss against ``0..--max-steps`` inner steps, one
  curve per inner rate (inner-loop overfitting);
* ``--loto``: the leave-one-task-out risk inflation ratio with its 95% interval;
* ``--pool-sizes N1,N2,..``: the ratio against the size of the meta-training pool (fresh
  learners meta-trained for ``--iterations`` on each pool): ``N`` tasks of a synthetic
  family, or ``N`` whole class groups (``--pool-key``, Omniglot's alphabets) of an image
  family, held out against the test part;
* ``--noise``: the meta-gradient covariance split into task, support and query sampling;
  ``--noise-batch-sizes`` measures the covariance of the meta-batch mean against ``B``;
* ``--bn-policies P1,P2,..``: the backbone's normalization policies side by side (fresh
  learners, same seed, episodes and iterations), accuracy on ``--episodes`` test episodes;
* ``--plot DIR``: a PNG per analysis in ``DIR``.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import functools
from pathlib import Path
from typing import Any

from metaloop.cli.args import positive_int
from metaloop.cli.config import ConfigError


def _float_list(text: str) -> list[float]:
    try:
        values = [float(s) for s in text.split(",") if s.strip()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(
            f"expected numbers separated by commas, got {text!r}"
        ) from err
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive numbers, got {text!r}")
    return values


def _int_list(text: str) -> list[int]:
    try:
        values = [int(s) for s in text.split(",") if s.strip()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(
            f"expected integers separated by commas, got {text!r}"
        ) from err
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _policy_list(text: str) -> list[str]:
    from metaloop.models.norm import NORM_POLICIES

    if text.strip() == "all":
        return [p for p in NORM_POLICIES if p != "none"]
    values = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [v for v in values if v not in NORM_POLICIES]
    if not values or unknown or len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(
            f"expected distinct policies from {', '.join(NORM_POLICIES)} (or 'all'), got {text!r}"
        )
    return values


def add_arguments(dg: argparse.ArgumentParser) -> None:
    dg.add_argument("--oracle", action="store_true", help="theta_0 against the closed form")
    dg.add_argument(
        "--inner-lrs", type=_float_list, default=None, help="inner-step curves at these rates"
    )
    dg.add_argument(
        "--inner-decay",
        type=_float_list,
        default=None,
        metavar="C1,C2,..",
        help="inner-step curves with inner weight decay c (first --inner-lrs rate)",
    )
    dg.add_argument(
        "--support-jitter",
        type=_float_list,
        default=None,
        metavar="STD1,..",
        help="inner-step curves with 4 noisy copies of each support point (input noise std)",
    )
    dg.add_argument(
        "--decay-toward",
        default="zero,init",
        help="--inner-decay anchors: zero and/or init (theta_0), comma-separated",
    )
    dg.add_argument("--loto", action="store_true", help="leave-one-task-out risk inflation")
    dg.add_argument("--loto-tasks", type=positive_int, default=10, help="task set of --loto")
    dg.add_argument(
        "--pool-sizes", type=_int_list, default=None, help="risk inflation against pool size"
    )
    dg.add_argument("--pool-points", type=positive_int, default=50, help="points per pool task")
    dg.add_argument(
        "--pool-key",
        default="alphabet",
        help="--pool-sizes on an image family: the class metadata field a pool takes whole",
    )
    dg.add_argument(
        "--pool-seed",
        type=int,
        default=None,
        help="--pool-sizes on an image family: pick the groups in a seeded order (default: "
        "the first N in sorted order)",
    )
    dg.add_argument(
        "--meta-batch",
        type=positive_int,
        default=None,
        help="meta-batch of --pool-sizes/--diversity/--bn-policies training (default: the run's)",
    )
    dg.add_argument(
        "--bn-policies",
        type=_policy_list,
        default=None,
        metavar="P1,P2,..",
        help="train and test the backbone with these normalization policies side by side "
        "('all': the six of models.norm except none)",
    )
    dg.add_argument(
        "--episodes",
        type=positive_int,
        default=600,
        help="--bn-policies: test episodes (standard protocol, eval seed 12345)",
    )
    dg.add_argument(
        "--small-queries",
        type=int,
        default=1,
        help="--bn-policies: also test with this many queries per class (0: skip)",
    )
    dg.add_argument(
        "--iterations", type=positive_int, default=500, help="meta-training of --loto/--pool-sizes"
    )
    dg.add_argument("--outer-lr", type=float, default=1e-3, help="Adam rate of that training")
    dg.add_argument(
        "--geometry",
        action="store_true",
        help="gradient alignment, dead ReLU units, distance to the subspace of task optima",
    )
    dg.add_argument(
        "--diversity",
        type=_float_list,
        default=None,
        metavar="W1,W2,..",
        help="meta-train at these widths of the family's ranges; test in-range and shifted",
    )
    dg.add_argument(
        "--diversity-shift",
        type=float,
        default=0.75,
        help="--diversity: the shifted test ranges move by this many configured widths",
    )
    dg.add_argument("--noise", action="store_true", help="meta-gradient noise by source")
    dg.add_argument(
        "--noise-draws",
        type=_int_list,
        default=[8, 4, 4],
        metavar="I,J,K",
        help="--noise: tasks, support sets per task, query sets per support set",
    )
    dg.add_argument(
        "--noise-shots",
        type=_int_list,
        default=None,
        metavar="S1,S2,..",
        help="--noise: repeat the decomposition with these support sizes",
    )
    dg.add_argument(
        "--noise-batch-sizes",
        type=_int_list,
        default=None,
        metavar="B1,B2,..",
        help="--noise: covariance trace of the meta-batch mean against these meta-batch sizes",
    )
    dg.add_argument(
        "--noise-batches",
        type=positive_int,
        default=50,
        help="--noise-batch-sizes: independent meta-batches per size",
    )
    dg.add_argument("--plot", default=None, metavar="DIR", help="write a PNG per analysis")


def _synthetic_only(family: Any, what: str) -> None:
    if type(family).__module__ != "metaloop.tasks.synthetic":
        raise ConfigError(
            f"{what} needs a synthetic task family (metaloop.tasks.synthetic: sinusoid, "
            f"linear, gaussian_mean, ...), got {type(family).__name__}"
        )


def run_analyses(
    args: argparse.Namespace, cfg: dict[str, Any], learner: Any, family: Any, batch: Any
) -> dict[str, Any]:
    """The flagged analyses as a JSON-ready dict (empty when no flag is given)."""
    import torch

    from metaloop.cli.build import build_learner, build_model
    from metaloop.diagnostics import inner_curve, oracles, overfitting
    from metaloop.diagnostics.core import leave_one_task_out

    def make_learner() -> Any:
        return build_learner(cfg, build_model(cfg))

    stepwise = [
        flag
        for flag, on in (
            ("--oracle", args.oracle),
            ("--inner-lrs", args.inner_lrs),
            ("--inner-decay", args.inner_decay),
            ("--support-jitter", args.support_jitter),
            ("--geometry", args.geometry),
        )
        if on
    ]
    if stepwise and not learner.adapts_by_steps:
        raise ConfigError(
            f"{', '.join(stepwise)} need a learner that adapts by inner gradient steps (MAML "
            f"family), got {type(learner).__name__}"
        )
    out: dict[str, Any] = {}
    if args.oracle:
        try:
            result = oracles.compare_with_oracle(learner.model, family, learner.inner_lr)
        except (ValueError, AttributeError) as err:
            raise ConfigError(f"--oracle: {err}") from err
        out["oracle"] = dataclasses.asdict(result)
    if args.inner_lrs:
        curves = inner_curve.inner_step_curves(learner, batch, args.max_steps, args.inner_lrs)
        out["inner_curves"] = {
            str(a): {
                **dataclasses.asdict(c),
                "summary": dataclasses.asdict(inner_curve.overfitting_summary(c)),
            }
            for a, c in curves.items()
        }
    if args.inner_decay or args.support_jitter:
        out["remedies"] = _remedy_curves(args, cfg, learner, batch)
    if args.geometry:
        out["geometry"] = _geometry(learner, family, batch)
    if args.loto:
        tasks = family.sample(args.loto_tasks, torch.Generator().manual_seed(1))
        loo = leave_one_task_out(make_learner, tasks, args.iterations, args.outer_lr)
        out["loto"] = {
            **dataclasses.asdict(overfitting.loto_risk_inflation(loo)),
            "per_task": loo.per_task,
        }
    if args.pool_sizes:
        out["pool_sizes"] = _pool_sizes(args, cfg, family, make_learner)
    if args.diversity:
        out["diversity"] = _diversity(args, cfg, family, make_learner)
    if args.noise:
        from metaloop.diagnostics import noise

        _synthetic_only(family, "--noise")
        if len(args.noise_draws) != 3:
            raise ConfigError(f"--noise-draws takes three integers I,J,K, got {args.noise_draws}")
        sizes = {"tasks": args.noise_draws[0], "supports": args.noise_draws[1]}
        sizes["queries"] = args.noise_draws[2]
        if learner.first_order is not None:
            amp = noise.order_amplification(learner, family, **sizes)
            out["noise"] = dataclasses.asdict(
                amp.second_order if not learner.first_order else amp.first_order
            )
            out["noise_orders"] = {
                "first_order": dataclasses.asdict(amp.first_order),
                "second_order": dataclasses.asdict(amp.second_order),
                "ratios": amp.ratios,
            }
        else:
            out["noise"] = dataclasses.asdict(
                noise.decompose_meta_gradient_noise(learner, family, **sizes)
            )
        if args.noise_shots:
            by_shots = {}
            for shots in args.noise_shots:
                resized = copy.copy(family)
                resized.shots = shots
                by_shots[str(shots)] = dataclasses.asdict(
                    noise.decompose_meta_gradient_noise(learner, resized, **sizes)
                )
            out["noise_by_shots"] = by_shots
        if args.noise_batch_sizes:
            out["noise_by_batch"] = _noise_by_batch(args, learner, family)
    if args.bn_policies:
        out["bn_policies"] = _bn_policies(args, cfg)
    if args.plot and out:
        from metaloop.cli.diagnose_plots import plot_analyses

        out["plots"] = [str(p) for p in plot_analyses(out, Path(args.plot))]
    return out


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


def _noise_by_batch(args: argparse.Namespace, learner: Any, family: Any) -> dict[str, Any]:
    """Covariance trace of the meta-batch mean against ``B``, one series per support size
    (``--noise-shots``, else the family's), beside the nested decomposition's ``total / B``."""
    from metaloop.diagnostics import noise

    out = {}
    for shots in args.noise_shots or [family.shots]:
        resized = copy.copy(family)
        resized.shots = shots
        scaling = noise.meta_batch_scaling(
            learner, resized, args.noise_batch_sizes, batches=args.noise_batches
        )
        out[str(shots)] = dataclasses.asdict(scaling)
    return out


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


def _geometry(learner: Any, family: Any, batch: Any) -> dict[str, Any]:
    """Alignment (true task weights for a bias-free linear model on linear regression,
    long descent on each task's points otherwise), dead ReLUs on the batch's inputs, and the
    subspace distance where the family has one."""
    import torch

    from metaloop.diagnostics import geometry
    from metaloop.tasks import LinearRegression

    out: dict[str, Any] = {}
    weights = [p for p in learner.model.parameters() if p.requires_grad]
    linear = (
        isinstance(family, LinearRegression)
        and len(weights) == 1
        and weights[0].numel() == family.dim
    )
    optima = batch.info["weights"] if linear else None
    out["alignment"] = dataclasses.asdict(geometry.gradient_alignment(learner, batch, optima))
    out["alignment"]["optima"] = "true task weights" if linear else "500 descent steps"
    inputs = torch.cat([batch.support_x, batch.query_x], 1).flatten(0, 1)
    try:
        dead = geometry.dead_relu_units(learner.model, inputs)
        out["dead_relu"] = {**dataclasses.asdict(dead), "fraction": dead.fraction}
    except ValueError:
        out["dead_relu"] = None  # no ReLU in the model
    if linear:
        out["subspace"] = dataclasses.asdict(
            geometry.subspace_distance(weights[0].detach().reshape(-1), family, batch)
        )
    return out


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


def _remedy_curves(
    args: argparse.Namespace, cfg: dict[str, Any], learner: Any, batch: Any
) -> dict[str, Any]:
    """Inner-step curves of the learner and of copies of it (same model, same ``theta_0``)
    whose inner optimizer adds weight decay ``c (theta_t - anchor)`` (each ``c`` and
    anchor of ``--inner-decay``/``--decay-toward``) or whose support sets get 4 noisy
    copies of each point (each std of ``--support-jitter``); all at the first
    ``--inner-lrs`` rate (default: the learner's)."""
    import torch

    from metaloop.cli.build import build_learner
    from metaloop.diagnostics import inner_curve
    from metaloop.tasks.augment import SupportJitter

    anchors = [a.strip() for a in args.decay_toward.split(",") if a.strip()]
    if not anchors or any(a not in ("zero", "init") for a in anchors):
        raise ConfigError(f"--decay-toward takes zero and/or init, got {args.decay_toward!r}")
    rate = (args.inner_lrs or [learner.inner_lr])[0]
    variants = {"as trained": learner}
    for anchor in anchors if args.inner_decay else []:
        for coef in args.inner_decay:
            changed = copy.deepcopy(cfg)
            algorithm = changed["algorithm"]
            kwargs = dict(algorithm.get("inner_optimizer_kwargs") or {})
            kwargs.update(weight_decay=coef, decay_toward=anchor)
            algorithm["inner_optimizer_kwargs"] = kwargs
            variants[f"decay {coef:g} to {anchor}"] = build_learner(changed, learner.model)
    for std in args.support_jitter or []:
        variant = build_learner(cfg, learner.model)
        variant.support_transform = SupportJitter(std, copies=4)
        variants[f"jitter {std:g} x4"] = variant
    out = {}
    for label, variant in variants.items():
        torch.manual_seed(0)  # the jitter's draws
        curve = inner_curve.inner_step_curves(variant, batch, args.max_steps, [rate])[rate]
        out[label] = {
            **dataclasses.asdict(curve),
            "summary": dataclasses.asdict(inner_curve.overfitting_summary(curve)),
        }
    return {"inner_lr": rate, "curves": out}


def print_analyses(out: dict[str, Any]) -> None:
    if "oracle" in out:
        o = out["oracle"]
        print(
            f"oracle ({o['family']}, {o['note']}): |theta_0 - oracle| = {o['distance']:.4g} "
            f"(|oracle| = {o['oracle_scale']:.4g})"
        )
    for rate, c in out.get("inner_curves", {}).items():
        s = c["summary"]
        print(
            f"inner rate {rate}: best query loss {s['best_query_loss']:.4g} at "
            f"{s['best_step']} steps, {s['final_query_loss']:.4g} at {c['steps'][-1]} "
            f"(x{s['rise']:.3g})"
        )
    if "remedies" in out:
        for label, c in out["remedies"]["curves"].items():
            s = c["summary"]
            print(
                f"{label} (alpha {out['remedies']['inner_lr']}): best query loss "
                f"{s['best_query_loss']:.4g} at {s['best_step']} steps, "
                f"{s['final_query_loss']:.4g} at {c['steps'][-1]}"
            )
    if "geometry" in out:
        g = out["geometry"]
        a = g["alignment"]
        print(
            f"gradient alignment (optima: {a['optima']}): mean cosine {a['mean']:.3f}, "
            f"{a['fraction_positive']:.0%} of tasks positive"
        )
        if g["dead_relu"] is not None:
            d = g["dead_relu"]
            print(f"dead ReLU units at theta_0: {d['dead']}/{d['units']} ({d['fraction']:.1%})")
        if "subspace" in g:
            d = g["subspace"]
            print(
                f"theta_0 to the subspace of task optima {d['to_subspace']:.4g}, to its "
                f"centre {d['to_center']:.4g}, to the optima (mean) {d['to_optima']:.4g}"
            )
    if "loto" in out:
        r = out["loto"]
        print(
            f"leave-one-task-out: training tasks {r['train_loss']:.4g}, held-out "
            f"{r['held_out_loss']:.4g}, risk inflation {r['ratio']:.3g} "
            f"[{r['low']:.3g}, {r['high']:.3g}]"
        )
    if "noise" in out:
        n = out["noise"]
        print(
            "meta-gradient covariance trace by source: "
            + ", ".join(f"{k} {n[k]:.4g}" for k in ("task", "support", "query", "total"))
        )
    for shots, scaling in out.get("noise_by_batch", {}).items():
        points = ", ".join(f"B={p['meta_batch_size']} {p['trace']:.4g}" for p in scaling["points"])
        print(
            f"meta-batch covariance trace ({shots} shots): {points}; log-log slope "
            f"{scaling['slope']:.3f} (1/B: -1)"
        )
    if "noise_orders" in out:
        r = out["noise_orders"]["ratios"]
        print(
            "second- over first-order covariance: "
            + ", ".join(f"{k} {r[k]:.3g}" for k in ("task", "support", "query", "total"))
        )
    for path in out.get("plots", []):
        print(path)
