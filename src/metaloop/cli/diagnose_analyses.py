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

This module dispatches and prints; the flags are defined in ``diagnose_options``, the
analyses that meta-train fresh learners live in ``diagnose_sweeps``, those that probe the
trained learner as it is in ``diagnose_probes``, the figures in ``diagnose_plots``.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from metaloop.cli.config import ConfigError
from metaloop.cli.diagnose_probes import _geometry, _noise, _remedy_curves
from metaloop.cli.diagnose_sweeps import _bn_policies, _diversity, _pool_sizes


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
        out.update(_noise(args, learner, family))
    if args.bn_policies:
        out["bn_policies"] = _bn_policies(args, cfg)
    if args.plot and out:
        from metaloop.cli.diagnose_plots import plot_analyses

        out["plots"] = [str(p) for p in plot_analyses(out, Path(args.plot))]
    return out


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
