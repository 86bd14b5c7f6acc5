"""Learning curves of a run directory as a PNG (needs the optional ``plot`` extra)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from metaloop.cli.args import check_output_path
from metaloop.cli.config import ConfigError


def read_log(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        raise ConfigError(f"{run_dir} has no metrics.jsonl (is it a run directory?)")
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Plot training loss and validation metric against iteration; return the PNG path."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise ConfigError("plotting needs matplotlib: pip install 'metaloop[plot]'") from err
    out = Path(out) if out else Path(run_dir) / "curves.png"
    if not out.suffix:  # matplotlib would add ".png" itself; say where the file really goes
        out = out.with_name(out.name + ".png")
    check_output_path(out, "--out")
    records = read_log(run_dir)
    # a window of skipped steps logs no loss, a diverged validation a null: leave them out
    train = [r for r in records if r.get("split") == "train" and _number(r.get("loss"))]
    val = [r for r in records if r.get("split") == "val"]
    val_key = "accuracy" if val and "accuracy" in val[0] else "loss"
    val = [r for r in val if _number(r.get(val_key))]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    axes[0].plot([r["iteration"] for r in train], [r["loss"] for r in train], lw=1)
    axes[0].set(
        xlabel="iteration",
        ylabel="meta-loss (train)",
        yscale="log" if val_key == "loss" else "linear",
    )
    if val:
        axes[1].plot([r["iteration"] for r in val], [r[val_key] for r in val], marker=".", lw=1)
    axes[1].set(xlabel="iteration", ylabel=f"validation {val_key}")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle(str(run_dir))
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def add_parser(sub: Any) -> None:
    pl = sub.add_parser("plot", help="learning curves of a run directory as a PNG")
    pl.add_argument("run_dir")
    pl.add_argument("--out", default=None, help="PNG path (default RUN_DIR/curves.png)")
    pl.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    print(plot_run(args.run_dir, args.out))
    return 0
