"""PNG figures of ``metaloop diagnose``'s analyses (needs the optional ``plot`` extra)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from metaloop.cli.config import ConfigError


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise ConfigError("--plot needs matplotlib: pip install 'metaloop[plot]'") from err
    return plt


def plot_inner_curves(curves: dict[str, dict[str, Any]], path: Path, title: str = "") -> Path:
    """Query (solid) and support (dashed) loss against inner steps, one colour per rate."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for i, (label, c) in enumerate(curves.items()):
        colour = f"C{i}"
        ax.plot(c["steps"], c["query_loss"], color=colour, label=f"{label} query")
        ax.plot(c["steps"], c["support_loss"], color=colour, linestyle="--", alpha=0.6)
        best = c["steps"][min(range(len(c["steps"])), key=c["query_loss"].__getitem__)]
        ax.plot([best], [min(c["query_loss"])], "o", color=colour)
    ax.set_xlabel("inner steps")
    ax.set_ylabel("MSE (solid: query, dashed: support)")
    ax.set_yscale("log")
    ax.set_title(title or "inner-loop overfitting")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_pool_sizes(
    points: list[dict[str, Any]], path: Path, unit: str = "tasks in the meta-training pool"
) -> Path:
    """Risk inflation ratio (95% interval) against the meta-training pool size, log-log."""
    plt = _pyplot()
    n = [p["pool_size"] for p in points]
    r = [p["risk"]["ratio"] for p in points]
    low = [p["risk"]["ratio"] - p["risk"]["low"] for p in points]
    high = [p["risk"]["high"] - p["risk"]["ratio"] for p in points]
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    ax.errorbar(n, r, yerr=[low, high], marker="o", capsize=3)
    ax.axhline(1.0, color="grey", linestyle=":")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(n, [str(v) for v in n])
    ax.minorticks_off()
    top = max(p["risk"]["high"] for p in points)
    if top < 10:  # less than a decade: plain numbers
        ticks = [t for t in (0.7, 1, 1.5, 2, 3, 5, 7) if t <= 1.1 * top]
        ax.set_yticks(ticks, [f"{t:g}" for t in ticks])
    ax.set_xlabel(unit)
    ax.set_ylabel("risk inflation (held-out / training-task loss)")
    ax.set_title(f"meta-overfitting ({points[0]['iterations']} iterations per pool)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_noise(noise: dict[str, Any], path: Path) -> Path:
    """Stacked bar of the meta-gradient covariance trace by source."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 3.8))
    bottom = 0.0
    for key in ("task", "support", "query"):
        ax.bar(["meta-gradient"], [noise[key]], bottom=bottom, label=key)
        bottom += noise[key]
    ax.set_ylabel("trace of covariance (one task)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_diversity(result: dict[str, Any], path: Path) -> Path:
    """Post-adaptation query loss (95% interval) against the training width, per test set."""
    plt = _pyplot()
    points = result["points"]
    widths = [p["width"] for p in points]
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for label in points[0]["scores"]:
        means = [p["scores"][label]["mean"] for p in points]
        errs = [p["scores"][label]["half_width"] for p in points]
        ax.errorbar(widths, means, yerr=errs, marker="o", capsize=3, label=label)
    ax.set_xlabel("training range width (fraction of the configured ranges)")
    ax.set_ylabel("query MSE after adaptation")
    ax.set_yscale("log")
    ax.set_title(f"task diversity ({points[0]['iterations']} iterations per width)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_noise_by_shots(by_shots: dict[str, dict[str, Any]], path: Path) -> Path:
    """Covariance trace by source against the support size (one task per meta-batch; a
    meta-batch of T tasks divides every curve by T)."""
    plt = _pyplot()
    shots = [int(k) for k in by_shots]
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for key in ("task", "support", "query", "total"):
        values = [max(by_shots[str(s)][key], 1e-12) for s in shots]
        ax.plot(shots, values, marker="o", label=key, linestyle="--" if key == "total" else "-")
    ax.set_xlabel("support shots")
    ax.set_ylabel("trace of covariance (one task)")
    ax.set_xscale("log")
    ax.set_xticks(shots, [str(s) for s in shots])
    ax.minorticks_off()
    ax.set_yscale("log")
    ax.set_title("meta-gradient noise by source")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_bn_policies(result: dict[str, Any], path: Path) -> Path:
    """Test accuracy (95% interval) per normalization policy: the run's query-set size, the
    small query sets, and (running statistics) the same weights with episode statistics;
    the CPU seconds of meta-training under each label."""
    plt = _pyplot()
    rows = result["results"]
    fig, ax = plt.subplots(figsize=(7.0, 4.0))
    series = [("accuracy", f"{result['test_queries']} queries per class")]
    if result.get("small_queries"):
        series.append(("small_query_accuracy", f"{result['small_queries']} query per class"))
    series.append(("episode_statistics_accuracy", "running-stats weights, episode statistics"))
    width = 0.8 / len(series)
    for k, (key, label) in enumerate(series):
        xs, means, errs = [], [], []
        for i, row in enumerate(rows):
            if row.get(key):
                xs.append(i + (k - (len(series) - 1) / 2) * width)
                means.append(100 * row[key]["mean"])
                errs.append(100 * row[key]["ci95"])
        if xs:
            ax.bar(xs, means, width, yerr=errs, capsize=3, label=label, color=f"C{k}")
    labels = [f"{r['policy']}\n{r['train_seconds']:.0f} s" for r in rows]
    ax.set_xticks(range(len(rows)), labels, fontsize=8)
    low = min(100 * r["accuracy"]["mean"] for r in rows)
    ax.set_ylim(max(0.0, low - 25), 100)
    ax.set_ylabel("test accuracy after adaptation (%)")
    first = rows[0]
    ax.set_title(
        f"normalization policies ({first['iterations']} iterations, meta-batch "
        f"{first['meta_batch_size']}; CPU seconds of training below)",
        fontsize=9,
    )
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_noise_by_batch(by_batch: dict[str, dict[str, Any]], path: Path) -> Path:
    """Covariance trace of the meta-batch mean (95% interval) against the meta-batch size,
    log-log, one series per support size, each with its ``1/B`` line through the points."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    sizes: list[int] = []
    for i, (shots, scaling) in enumerate(by_batch.items()):
        points = scaling["points"]
        b = [p["meta_batch_size"] for p in points]
        sizes = sorted(set(sizes) | set(b))
        trace = [p["trace"] for p in points]
        err = [min(p["ci95"], 0.999 * p["trace"]) for p in points]
        ax.errorbar(
            b,
            trace,
            yerr=[err, [p["ci95"] for p in points]],
            marker="o",
            capsize=3,
            linestyle="none",
            color=f"C{i}",
            label=f"{shots} shots (slope {scaling['slope']:.2f})",
        )
        ax.plot(b, [scaling["one_task_trace"] / v for v in b], color=f"C{i}", linestyle=":")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(sizes, [str(v) for v in sizes])
    ax.minorticks_off()
    ax.set_xlabel("meta-batch size B (tasks)")
    ax.set_ylabel("trace of covariance of the meta-gradient")
    ax.set_title("meta-gradient noise against meta-batch size (dotted: 1/B)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_analyses(out: dict[str, Any], folder: Path) -> list[Path]:
    """One PNG per analysis present in ``out``; returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    if "inner_curves" in out:
        curves = {f"alpha={k}": v for k, v in out["inner_curves"].items()}
        paths.append(plot_inner_curves(curves, folder / "inner_curves.png"))
    if "remedies" in out:
        rate = out["remedies"]["inner_lr"]
        paths.append(
            plot_inner_curves(
                out["remedies"]["curves"],
                folder / "remedies.png",
                f"inner-loop overfitting remedies (alpha = {rate})",
            )
        )
    if "pool_sizes" in out:
        groups = "classes" in out["pool_sizes"][0]  # pools of whole class groups
        unit = "alphabets (class groups) in the pool" if groups else None
        paths.append(
            plot_pool_sizes(out["pool_sizes"], folder / "pool_sizes.png", *([unit] if unit else []))
        )
    if "bn_policies" in out:
        paths.append(plot_bn_policies(out["bn_policies"], folder / "bn_policies.png"))
    if "noise_by_batch" in out:
        paths.append(plot_noise_by_batch(out["noise_by_batch"], folder / "noise_by_batch.png"))
    if "diversity" in out:
        paths.append(plot_diversity(out["diversity"], folder / "diversity.png"))
    if "noise_by_shots" in out:
        paths.append(plot_noise_by_shots(out["noise_by_shots"], folder / "noise_by_shots.png"))
    if "noise" in out:
        paths.append(plot_noise(out["noise"], folder / "noise.png"))
    return paths
