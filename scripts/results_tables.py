"""Print the markdown tables of docs/results.md from the runs' eval-*.json files."""

import json
import sys
from pathlib import Path


def load(run, name):
    p = Path("runs") / run / f"eval-{name}.json"
    text = p.read_text() if p.exists() else ""
    return json.loads(text) if text.strip() else None  # absent, or still being written


def iters(run):
    log = Path("runs") / run / "metrics.jsonl"
    last = [json.loads(x) for x in log.read_text().splitlines() if x.strip()][-1]
    return last["iteration"], last.get("seconds")


def sinusoid():
    print("| algorithm | iterations (best ckpt) | 1 step | 5 steps | 10 steps | training time |")
    print("|---|---|---|---|---|---|")
    print("| MAML paper (Finn et al. 2017) | 70,000 | 0.67 | 0.38 | 0.35 | |")
    for algo in ("maml", "fomaml", "metasgd", "reptile", "joint"):
        d = load(f"sinusoid-{algo}", "5shot")
        if d is None:
            continue
        done, secs = iters(f"sinusoid-{algo}")
        cells = []
        for s in ("1", "5", "10"):
            e = d["steps"][s]["loss"]
            cells.append(f"{e['mean']:.3f} +- {e['ci95']:.3f} (median {e['median']:.3f})")
        print(
            f"| {algo} | {done:,} ({d['checkpoint_iteration']:,}) | "
            + " | ".join(cells)
            + f" | {secs / 60:.0f} min |"
        )


def accuracy_row(label, run, name, published=""):
    d = load(run, name)
    if d is None:
        return
    ((_, m),) = d["steps"].items()
    a = m["accuracy"]
    done, secs = iters(run)
    ep = d["episode"]
    print(
        f"| {label} | {ep['ways']}-way {ep['shots']}-shot, {ep['queries']} q | "
        f"{100 * a['mean']:.2f} +- {100 * a['ci95']:.2f}% | {100 - 100 * a['mean']:.2f}% | "
        f"{published} | {done:,} ({d['checkpoint_iteration']:,}) | {secs / 60:.0f} min |"
    )


def omniglot():
    columns = ("episodes", "accuracy (600)", "error", "published", "iterations (best ckpt)")
    print("| method | " + " | ".join(columns) + " | training time |")
    print("|---|---|---|---|---|---|---|")
    accuracy_row("MAML", "omniglot-5w1s-maml", "5w1s", "98.7 +- 0.4%")
    accuracy_row("first-order MAML", "omniglot-5w1s-fomaml", "5w1s", "98.3 +- 0.5%")
    accuracy_row("MAML, 20-way", "omniglot-20w1s-maml", "20w1s", "95.8 +- 0.3%")
    accuracy_row("first-order MAML, 20-way", "omniglot-20w1s-fomaml", "20w1s", "")
    accuracy_row("ProtoNet (60-way 1-shot training)", "omniglot-protonet-1shot", "5w1s", "98.8%")
    accuracy_row("ProtoNet (same model)", "omniglot-protonet-1shot", "20w1s", "96.0%")
    accuracy_row("ProtoNet (same model)", "omniglot-protonet-1shot", "5w5s", "99.7%")
    accuracy_row("ProtoNet (same model)", "omniglot-protonet-1shot", "20w5s", "98.9%")
    accuracy_row(
        "ProtoNet, background only",
        "omniglot-lake-protonet",
        "within-alphabet",
        "20 runs: Siamese 8.0%, humans 4.5% error",
    )
    accuracy_row(
        "MAML, background only",
        "omniglot-lake-20w1s-maml",
        "within-alphabet",
        "20 runs: deep convnet 13.5% error",
    )
    for split in ("small1", "small2"):
        accuracy_row(
            f"ProtoNet, {split} only",
            f"omniglot-{split}-protonet",
            "within-alphabet",
            "20 runs, deep convnet: 24.0% / 22.3% error",
        )


PUBLISHED = {  # 5w1s, 20w1s, 5w5s, 20w5s (BENCHMARKS.md)
    "matching": ("Matching Networks", ("98.1", "93.8", "98.9", "98.5")),
    "relation": ("Relation Network", ("99.6", "97.6", "99.8", "99.1")),
    "siamese": ("Siamese network (triplet)", ("97.3", "88.2", "98.4", "97.0")),
    "finetune": ("fine-tuning baseline (head)", None),
}


def metric():
    """One model per method, tested at the four shapes: measured (published) per cell."""
    shapes = ("5w1s", "20w1s", "5w5s", "20w5s")
    columns = ("5-way 1-shot", "20-way 1-shot", "5-way 5-shot", "20-way 5-shot")
    print("| method | " + " | ".join(columns) + " | iterations (best ckpt) | training time |")
    print("|---|---|---|---|---|---|---|")
    for method, (label, published) in PUBLISHED.items():
        cells, best = [], None
        for j, name in enumerate(shapes):
            # relation: the evaluations with mean aggregation (the preset's), where present
            d = load(f"omniglot-{method}", f"{name}-mean") or load(f"omniglot-{method}", name)
            if d is None:
                cells.append("")
                continue
            ((_, m),) = d["steps"].items()
            a = m["accuracy"]
            pub = f" ({published[j]})" if published else ""
            cells.append(f"{100 * a['mean']:.2f} +- {100 * a['ci95']:.2f}{pub}")
            best = d["checkpoint_iteration"]
        if best is None:
            continue
        done, secs = iters(f"omniglot-{method}")
        timing = f" | {done:,} ({best:,}) | {secs / 60:.1f} min |"
        print(f"| {label} | " + " | ".join(cells) + timing)


{"sinusoid": sinusoid, "omniglot": omniglot, "metric": metric}[sys.argv[1]]()
