"""The analyses of ``metaloop diagnose`` that probe the trained learner as it is (no
meta-training): meta-gradient noise by source (``--noise``), the geometry at ``theta_0``
(``--geometry``) and inner-step curves of remedies (``--inner-decay``, ``--support-jitter``)."""

from __future__ import annotations

import argparse
import copy
import dataclasses
from typing import Any

from metaloop.cli.config import ConfigError
from metaloop.cli.diagnose_options import _synthetic_only


def _noise(args: argparse.Namespace, learner: Any, family: Any) -> dict[str, Any]:
    """``--noise``: the nested decomposition of the meta-gradient covariance into task,
    support and query sampling (``noise``; both orders side by side in ``noise_orders``
    for a learner with a first-order switch), repeated per ``--noise-shots``
    (``noise_by_shots``) and against ``--noise-batch-sizes`` (``noise_by_batch``)."""
    from metaloop.diagnostics import noise

    _synthetic_only(family, "--noise")
    out: dict[str, Any] = {}
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
    return out


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
