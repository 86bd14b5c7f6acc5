"""Few-shot intent classification on CLINC150: train one learner, evaluate every setting.

One run = one (learner, encoder, split): meta-train with ``metaloop.Trainer`` (best
checkpoint chosen on meta-validation episodes), then evaluate the best checkpoint on 600
test episodes of unseen intents for each ``--eval`` setting (``5x1`` = 5-way 1-shot, 15
queries per intent), and, with ``--oos``, out-of-scope rejection on 5-way 5-shot episodes
(threshold from validation episodes only).  Writes ``RUN/results.json``.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python scripts/clinc_figures.py \
        --learner protonet --encoder text_cnn --split random --iterations 1500 \
        --run-dir /work/runs/clinc/protonet-cnn-random --oos

``--val-only`` reports validation accuracy instead of test figures (encoder choice).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import metaloop as ml
from metaloop.algorithms.finetune import FineTuneBaseline
from metaloop.algorithms.protomaml import ProtoMAML
from metaloop.algorithms.protonet import ProtoNet
from metaloop.data.text import TOKENIZER_FILE, TextEpisodicFamily, clinc150_split
from metaloop.evaluation.oos import evaluate_oos
from metaloop.models.text import EmbeddingBag, TextCNN, TextTransformer
from metaloop.train.checkpoint import load_best

ENCODERS = {"text_bag": EmbeddingBag, "text_cnn": TextCNN, "text_transformer": TextTransformer}


def build_learner(name: str, encoder: str, vocab: int, max_length: int, classes: int, dim: int):
    kwargs: dict = {"dim": dim}
    if encoder == "text_transformer":
        kwargs["max_length"] = max_length
    if encoder == "text_cnn":
        kwargs["channels"] = dim
    if name == "protonet":
        return ProtoNet(ENCODERS[encoder](vocab, **kwargs))
    if name == "finetune":
        return FineTuneBaseline(ENCODERS[encoder](vocab, **kwargs), num_classes=classes)
    if name == "protomaml":
        model = ENCODERS[encoder](vocab, ways=5, **kwargs)
        return ProtoMAML(model, inner_lr=0.1, inner_steps=3, first_order=True)
    raise SystemExit(f"unknown learner {name!r}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--learner", choices=("protonet", "protomaml", "finetune"), required=True)
    p.add_argument("--encoder", choices=tuple(ENCODERS), required=True)
    p.add_argument("--split", choices=("random", "domain"), default="random")
    p.add_argument("--iterations", type=int, default=1000)
    p.add_argument("--train-ways", type=int, default=10)
    p.add_argument("--train-shots", type=int, default=3)
    p.add_argument("--train-queries", type=int, default=5)
    p.add_argument("--meta-batch", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--dim", type=int, default=64, help="embedding width (CNN: also channels)")
    p.add_argument("--validate-every", type=int, default=250)
    p.add_argument("--eval", nargs="*", default=["5x1", "5x5", "10x1", "10x5"])
    p.add_argument("--episodes", type=int, default=600)
    p.add_argument("--oos", action="store_true")
    p.add_argument("--val-only", action="store_true")
    p.add_argument("--run-dir", required=True)
    args = p.parse_args()
    torch.set_num_threads(1)
    run = Path(args.run_dir)
    run.mkdir(parents=True, exist_ok=True)
    split = clinc150_split(None, args.split, seed=0, tokenizer_path=run / TOKENIZER_FILE)
    print(split.report(), flush=True)
    train, val, test = split.train, split.val, split.test
    vocab, max_length = train.vocab_size, train.max_length
    ways = 5 if args.learner == "protomaml" else args.train_ways
    train_family = TextEpisodicFamily(train, ways, args.train_shots, args.train_queries)
    val_family = TextEpisodicFamily(val, 5, 5, 15)
    torch.manual_seed(0)
    learner = build_learner(
        args.learner, args.encoder, vocab, max_length, train.num_classes, args.dim
    )
    optimizer = torch.optim.Adam(learner.parameters(), lr=args.lr)
    trainer = ml.Trainer(learner, optimizer, meta_batch_size=args.meta_batch, progress=False)
    start = time.time()
    fit = trainer.fit(
        train_family,
        args.iterations,
        validate_on=val_family,
        validate_every=args.validate_every,
        validation_tasks=100,
        run_dir=run,
        checkpoint_every=args.validate_every,
        log_every=50,
    )
    seconds = time.time() - start
    best = load_best(run)
    learner.load_state_dict(best["learner"])
    learner.eval()
    results: dict = {
        "args": vars(args),
        "train_seconds": seconds,
        "best_iteration": fit.best_iteration,
        "best_val": fit.best_metric,
        "split": split.description,
        "truncated": dict(split.truncated),
    }
    print(f"trained {fit.iteration} iterations in {seconds:.0f} s; best {fit.best_metric}")
    if args.val_only:
        for setting in ("5x1", "5x5"):
            w, k = map(int, setting.split("x"))
            r = ml.evaluate(learner, TextEpisodicFamily(val, w, k, 15), episodes=300, seed=1)
            acc = next(iter(r.metrics.values()))["accuracy"]
            results[f"val {setting}"] = {"mean": acc.mean, "ci95": acc.ci95}
            print(f"val {setting}: {100 * acc.mean:.2f} +- {100 * acc.ci95:.2f}", flush=True)
    else:
        for setting in args.eval:
            w, k = map(int, setting.split("x"))
            t = time.time()
            r = ml.evaluate(learner, TextEpisodicFamily(test, w, k, 15), episodes=args.episodes)
            acc = next(iter(r.metrics.values()))["accuracy"]
            results[f"test {setting}"] = {
                "mean": acc.mean,
                "ci95": acc.ci95,
                "seconds": time.time() - t,
            }
            print(f"test {setting}: {100 * acc.mean:.2f} +- {100 * acc.ci95:.2f}", flush=True)
        if args.oos:
            oos_val = TextEpisodicFamily(val, 5, 5, 15, oos=split.oos["val"], oos_queries=15)
            oos_test = TextEpisodicFamily(test, 5, 5, 15, oos=split.oos["test"], oos_queries=15)
            r = evaluate_oos(learner, oos_val, oos_test, episodes=args.episodes)
            results["oos 5x5"] = r.to_dict()
            print(r, flush=True)
    (run / "results.json").write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
