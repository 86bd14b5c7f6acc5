"""Time per meta-training iteration (and per evaluation episode) on CLINC150: plain, bf16, compiled.

One iteration is what ``metaloop.Trainer`` does per step: ``loss, _ = learner.meta_loss(batch)``,
``loss.backward()``, ``optimizer.step()`` on a meta-batch of real episodes (meta-training
intents of the random split, the configs' episode shapes: ProtoNet 10-way 3-shot 5-query,
Proto-MAML 5-way 3-shot 5-query with one first-order inner step; the fine-tune baseline
10-way 3-shot 5-query, its ``meta_loss`` being plain classification over the 100
meta-training intents; meta-batch 4).  The same
``--iterations`` batches are replayed for every variant, after ``--warmup`` untimed
iterations on other batches (they pay for compilation and recompilation to a dynamic
utterance length).  Reported: the median CPU time of one iteration (``time.process_time``,
one thread, so contention from other processes does not count), the median wall time, the
warmup's CPU time, and the relative difference of the first warmup iteration's loss from
the plain variant's (same initial weights, same batch).

Variants: ``plain`` (float32, eager, batches cut to their longest utterance as in
training); ``bf16`` (``autocast="bfloat16"``: the learner option, parameters and gradients
stay float32); ``plain-full`` (eager on batches of the full width ``max_length``,
``data.trim_batches = false``: what the padding alone costs); ``compile`` on those
full-width batches (one shape, so one compilation; on trimmed batches every new width
recompiles and dynamo runs eagerly after 8): Proto-MAML with the learner's
``compile=True`` (its meta-gradient, one compiled ``torch.func.grad`` per task), ProtoNet,
which has no compile option, with its encoder compiled in place (``nn.Module.compile()``,
the graphs a compiled encoder gives any embedding learner); the fine-tune baseline with
its ``compile=True`` (the encoder forward) and ``autocast="bfloat16"`` options.

The fine-tune baseline is also timed per *evaluation* episode (``evaluate_batch`` on one
5-way 1-shot 15-query episode of the test intents, the encoder in ``eval()`` mode, its 100
Adam steps of head fitting; ``--eval-episodes`` timed after ``--eval-warmup`` untimed):
``eval_cpu_ms``, ``eval_wall_ms``, and ``eval_loss_rel_diff``, the relative difference of
the first episode's query loss after fitting from the plain variant's.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python scripts/clinc_speed.py \
        --tokenizer RUN/tokenizer.json --out speed.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from metaloop.algorithms.finetune import FineTuneBaseline
from metaloop.algorithms.protomaml import ProtoMAML
from metaloop.algorithms.protonet import ProtoNet
from metaloop.data.text import TextEpisodicFamily, clinc150_split
from metaloop.models.text import TextCNN, TextTransformer

VARIANTS = ("plain", "bf16", "plain-full", "compile")
#: variants run on batches of the full width max_length (``trim=False``): one input shape
FULL_WIDTH = ("plain-full", "compile")
EPISODES = {"protonet": (10, 3, 5), "protomaml": (5, 3, 5), "finetune": (10, 3, 5)}
#: evaluation episodes timed per learner (the configs' eval shape: 5-way 1-shot 15-query)
EVAL_EPISODES = {"finetune": (5, 1, 15)}


def build_encoder(name: str, vocab: int, max_length: int, ways: int | None) -> torch.nn.Module:
    """The configs' encoders: 64-dimensional embeddings; the CNN with 64 channels per width."""
    if name == "text_cnn":
        return TextCNN(vocab, dim=64, channels=64, ways=ways)
    if name == "text_transformer":
        return TextTransformer(vocab, dim=64, max_length=max_length, ways=ways)
    raise SystemExit(f"unknown encoder {name!r}; choose text_cnn or text_transformer")


def build_learner(
    learner: str, encoder: str, variant: str, vocab: int, max_length: int, num_classes: int
):
    """A fresh learner (seed 0, so every variant starts from the same weights)."""
    torch.manual_seed(0)
    if learner == "finetune":  # configs/clinc-finetune.toml: head, 100 Adam steps, lr 0.01
        return FineTuneBaseline(
            build_encoder(encoder, vocab, max_length, None),
            steps=100,
            lr=0.01,
            num_classes=num_classes,
            autocast="bfloat16" if variant == "bf16" else None,
            compile=variant == "compile",
        )
    if learner == "protonet":
        model = build_encoder(encoder, vocab, max_length, None)
        if variant == "compile":
            model.compile()
        return ProtoNet(model, autocast="bfloat16" if variant == "bf16" else None)
    if learner == "protomaml":
        model = build_encoder(encoder, vocab, max_length, EPISODES["protomaml"][0])
        options: dict[str, Any] = {"autocast": "bfloat16"} if variant == "bf16" else {}
        if variant == "compile":
            options["compile"] = True
        return ProtoMAML(
            model, inner_lr=0.1, inner_steps=1, first_order=True, loss="cross_entropy", **options
        )
    raise SystemExit(f"unknown learner {learner!r}; choose protonet, protomaml or finetune")


def step(learner: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: Any) -> float:
    optimizer.zero_grad()
    loss, _ = learner.meta_loss(batch)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def measure(learner, batches: list, warmup: list) -> dict[str, Any]:
    optimizer = torch.optim.Adam(learner.parameters(), lr=1e-3)
    cpu0 = time.process_time()
    initial_loss = None
    for batch in warmup:
        loss = step(learner, optimizer, batch)
        initial_loss = loss if initial_loss is None else initial_loss
    warmup_cpu = time.process_time() - cpu0
    cpu, wall, losses = [], [], []
    for batch in batches:
        c, w = time.process_time(), time.perf_counter()
        losses.append(step(learner, optimizer, batch))
        cpu.append(time.process_time() - c)
        wall.append(time.perf_counter() - w)
    return {
        "cpu_ms": 1000 * statistics.median(cpu),
        "wall_ms": 1000 * statistics.median(wall),
        "warmup_cpu_s": warmup_cpu,
        "initial_loss": initial_loss,
    }


def measure_eval(learner, episodes: list, warmup: list) -> dict[str, Any]:
    """Median CPU and wall time of ``evaluate_batch`` on one episode (encoder in eval mode)."""
    learner.eval()
    cpu0 = time.process_time()
    for batch in warmup:
        learner.evaluate_batch(batch)
    warmup_cpu = time.process_time() - cpu0
    cpu, wall, first_loss = [], [], None
    for batch in episodes:
        c, w = time.process_time(), time.perf_counter()
        metrics = learner.evaluate_batch(batch)
        cpu.append(time.process_time() - c)
        wall.append(time.perf_counter() - w)
        if first_loss is None:
            first_loss = float(metrics[learner.steps]["loss"].mean())
    return {
        "eval_cpu_ms": 1000 * statistics.median(cpu),
        "eval_wall_ms": 1000 * statistics.median(wall),
        "eval_warmup_cpu_s": warmup_cpu,
        "eval_loss": first_loss,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokenizer", required=True, help="a run's tokenizer.json (random split)")
    p.add_argument("--learners", nargs="*", default=list(EPISODES))
    p.add_argument("--encoders", nargs="*", default=["text_cnn", "text_transformer"])
    p.add_argument("--variants", nargs="*", default=list(VARIANTS))
    p.add_argument("--iterations", type=int, default=20)
    p.add_argument("--warmup", type=int, default=4)
    p.add_argument("--meta-batch", type=int, default=4)
    p.add_argument("--eval-episodes", type=int, default=20)
    p.add_argument("--eval-warmup", type=int, default=2)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    torch.set_num_threads(1)
    split = clinc150_split(None, "random", seed=0, tokenizer_path=args.tokenizer)
    train, test = split.train, split.test
    rows = []
    for learner_name in args.learners:
        ways, shots, queries = EPISODES[learner_name]
        data = {}
        for trim in (True, False):  # the same episodes, cut or at full width
            family = TextEpisodicFamily(train, ways, shots, queries, trim=trim)
            g = torch.Generator().manual_seed(0)
            warmup = [family.sample(args.meta_batch, g) for _ in range(args.warmup)]
            data[trim] = warmup, [family.sample(args.meta_batch, g) for _ in range(args.iterations)]
        eval_data = {}
        if learner_name in EVAL_EPISODES:
            e_ways, e_shots, e_queries = EVAL_EPISODES[learner_name]
            for trim in (True, False):
                family = TextEpisodicFamily(test, e_ways, e_shots, e_queries, trim=trim)
                g = torch.Generator().manual_seed(1)
                eval_data[trim] = (
                    [family.sample(1, g) for _ in range(args.eval_warmup)],
                    [family.sample(1, g) for _ in range(args.eval_episodes)],
                )
        for encoder in args.encoders:
            plain_loss = plain_eval_loss = None
            for variant in args.variants:
                learner = build_learner(
                    learner_name,
                    encoder,
                    variant,
                    train.vocab_size,
                    train.max_length,
                    train.num_classes,
                )
                row = {"learner": learner_name, "encoder": encoder, "variant": variant}
                warmup, batches = data[variant not in FULL_WIDTH]
                row.update(measure(learner, batches, warmup))
                if variant == "plain":
                    plain_loss = row["initial_loss"]
                elif plain_loss is not None:
                    row["loss_rel_diff"] = abs(row["initial_loss"] - plain_loss) / abs(plain_loss)
                if eval_data:
                    e_warmup, e_episodes = eval_data[variant not in FULL_WIDTH]
                    row.update(measure_eval(learner, e_episodes, e_warmup))
                    if variant == "plain":
                        plain_eval_loss = row["eval_loss"]
                    elif plain_eval_loss is not None:
                        diff = abs(row["eval_loss"] - plain_eval_loss)
                        row["eval_loss_rel_diff"] = diff / abs(plain_eval_loss)
                rows.append(row)
                print(json.dumps(row), flush=True)
    Path(args.out).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
