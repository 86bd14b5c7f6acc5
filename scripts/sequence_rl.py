"""Measure the figures of docs/sequence-rl.md (black-box sequence learners, meta-RL).

    python scripts/sequence_rl.py sinusoid --learner transformer --iterations 4000 \\
        --out /work/runs/seq-transformer
    python scripts/sequence_rl.py bandit-baselines --out /work/runs/bandit-baselines
    python scripts/sequence_rl.py rl2 --arms 5 --horizon 10 --out /work/runs/rl2-5-10
    python scripts/sequence_rl.py navigation --out /work/runs/nav-maml-rl
    python scripts/sequence_rl.py navigation --lvc --iterations 100 --out /work/runs/nav-lvc
    python scripts/sequence_rl.py maml-bandit --arms 5 --horizon 100 --steps 4 --out /work/runs/mb
    python scripts/sequence_rl.py plot --bandits /work/runs/bandit-baselines \\
        --rl2 /work/runs/rl2-5-10 --png docs/sequence-rl-regret.png --out /tmp/plot

Each command writes ``result.json`` (and a log on stdout) to ``--out``.  One torch thread.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from metaloop.evaluation import evaluate
from metaloop.tasks import Sinusoid
from metaloop.train import Trainer

TEST_SEED = 12345
SETTINGS = ((5, 10), (5, 100), (10, 100))


def sequence_learner(name: str) -> nn.Module:
    from metaloop.algorithms.incontext import InContextTransformer
    from metaloop.algorithms.mann_lstm import LabelDelayLSTM
    from metaloop.algorithms.snail import SNAIL

    encoder = nn.Identity()
    if name == "transformer":
        return InContextTransformer(encoder, 1, 1, width=64, depth=3, heads=4, min_support=5)
    if name == "lstm":
        return LabelDelayLSTM(encoder, 1, 1, hidden=128, layers=2, min_support=5)
    if name == "snail":
        return SNAIL(encoder, 1, 1, max_support=10, filters=16, key_size=16, value_size=16,
                     min_support=5)  # fmt: skip
    raise SystemExit(f"unknown learner {name!r}; choose transformer, lstm or snail")


def run_sinusoid(args: argparse.Namespace) -> dict:
    torch.manual_seed(args.seed)
    learner = sequence_learner(args.learner)
    optimizer = torch.optim.Adam(learner.parameters(), lr=args.lr)
    trainer = Trainer(learner, optimizer, meta_batch_size=25, seed=args.seed, progress=False)
    start = time.perf_counter()
    trainer.fit(
        Sinusoid(shots=10, queries=10),
        iterations=args.iterations,
        run_dir=args.out / "run",
        validate_every=args.iterations,
        validation_tasks=100,
        checkpoint_every=args.iterations,
        log_every=250,
    )
    minutes = (time.perf_counter() - start) / 60
    learner.eval()
    out = {"learner": args.learner, "iterations": args.iterations, "train_minutes": minutes}
    for shots in (5, 10):
        result = evaluate(learner, Sinusoid(shots=shots, queries=10), episodes=600)
        est = result[0]["loss"]
        out[f"mse_{shots}shot"] = {"mean": est.mean, "ci95": est.ci95, "median": est.median}
    return out


def interval(values) -> dict:
    v = np.asarray(values, dtype=float)
    return {"mean": float(v.mean()), "ci95": float(1.96 * v.std(ddof=1) / np.sqrt(len(v)))}


def bandit_tasks(arms: int, horizon: int, tasks: int):
    from metaloop.tasks.envs import BernoulliBanditEnv

    env = BernoulliBanditEnv(arms=arms, horizon=horizon)
    return env, env.sample_tasks(tasks, torch.Generator().manual_seed(TEST_SEED))


def run_bandit_baselines(args: argparse.Namespace) -> dict:
    from metaloop.evaluation.bandits import POLICIES, make_policy, run_bandit_policy

    out: dict = {"tasks": args.tasks}
    for arms, horizon in SETTINGS:
        env, tasks = bandit_tasks(arms, horizon, args.tasks)
        row = {}
        for name in POLICIES:
            start = time.perf_counter()
            run = run_bandit_policy(make_policy(name), env, tasks, seed=TEST_SEED)
            row[name] = interval(run.total_reward)
            row[name]["regret_curve"] = run.cumulative_regret.mean(0).round(3).tolist()
            row[name]["seconds"] = round(time.perf_counter() - start, 1)
            print(arms, horizon, name, row[name]["mean"], flush=True)
        out[f"k={arms},n={horizon}"] = row
    return out


def run_rl2(args: argparse.Namespace) -> dict:
    from metaloop.algorithms.rl2 import RL2
    from metaloop.tasks.envs import BernoulliBanditEnv
    from metaloop.train.rl import fit_meta_rl

    torch.manual_seed(args.seed)
    learner = RL2(BernoulliBanditEnv(arms=args.arms, horizon=args.horizon), hidden=args.hidden)
    start = time.perf_counter()
    records = fit_meta_rl(
        learner, args.iterations, meta_batch_size=args.meta_batch_size, lr=args.lr,
        seed=args.seed, log_every=50, log=args.out / "train.jsonl",
    )  # fmt: skip
    out = {"arms": args.arms, "train_horizon": args.horizon, "iterations": args.iterations,
           "meta_batch_size": args.meta_batch_size, "lr": args.lr, "last_log": records[-1],
           "train_minutes": (time.perf_counter() - start) / 60}  # fmt: skip
    torch.save(learner.state_dict(), args.out / "rl2.pt")
    learner.eval()
    for horizon in args.eval_horizons:
        env, tasks = bandit_tasks(args.arms, horizon, args.tasks)
        learner.set_env(env)
        with torch.no_grad():
            trial = learner.rollout(tasks, seed=TEST_SEED)
        curve = trial.regrets.cumsum(1).mean(0).numpy().round(3).tolist()
        out[f"n={horizon}"] = {**interval(trial.total_reward.numpy()), "regret_curve": curve}
        print(horizon, out[f"n={horizon}"]["mean"], flush=True)
    return out


def run_maml_bandit(args: argparse.Namespace) -> dict:
    """MAML-RL on bandits, every pull counting: blocks of ``horizon / (steps + 1)`` pulls,
    a policy-gradient step after each block but the last (see ``MAMLRL``'s docstring)."""
    from metaloop.algorithms.maml_rl import MAMLRL
    from metaloop.tasks.envs import BernoulliBanditEnv
    from metaloop.train.rl import fit_meta_rl

    block = args.horizon // (args.steps + 1)
    if block * (args.steps + 1) != args.horizon:
        raise SystemExit(f"horizon {args.horizon} is not a multiple of steps + 1")
    env = BernoulliBanditEnv(arms=args.arms, horizon=1)
    torch.manual_seed(args.seed)
    policy = nn.Linear(1, args.arms)  # the observation is 0: the bias is the logits
    learner = MAMLRL(
        policy, env, inner_lr=args.inner_lr, inner_steps=args.steps, inner_episodes=block,
        outer_episodes=block, gamma=1.0, count_inner=True,
    )  # fmt: skip
    start = time.perf_counter()
    records = fit_meta_rl(
        learner, args.iterations, meta_batch_size=args.meta_batch_size, lr=args.lr,
        seed=args.seed, log_every=25, log=args.out / "train.jsonl",
    )  # fmt: skip
    out = {"arms": args.arms, "horizon": args.horizon, "steps": args.steps, "block": block,
           "inner_lr": args.inner_lr, "iterations": args.iterations, "last_log": records[-1],
           "train_minutes": (time.perf_counter() - start) / 60}  # fmt: skip
    tasks = env.sample_tasks(args.tasks, torch.Generator().manual_seed(TEST_SEED))
    _, history = learner.adapt(tasks, steps=args.steps, seed=TEST_SEED)
    total = sum(h.rewards.sum((1, 2)) for h in history)
    out["total_reward"] = interval(total.numpy())
    means = torch.tensor(np.stack([t["means"] for t in tasks]), dtype=torch.float32)
    out["initial_policy"] = torch.softmax(policy.bias.detach(), 0).tolist()
    out["best_arm_mean"] = float(means.max(1).values.mean() * args.horizon)
    print(out["total_reward"], flush=True)
    return out


def run_navigation(args: argparse.Namespace) -> dict:
    from metaloop.algorithms.maml_rl import MAMLRL
    from metaloop.models.mlp import MLP
    from metaloop.tasks.envs import PointNavigationEnv
    from metaloop.train.rl import fit_meta_rl

    env = PointNavigationEnv(horizon=args.horizon)
    options = {"inner_lr": args.inner_lr, "inner_episodes": args.episodes,
               "outer_episodes": args.episodes, "init_log_std": -1.0,
               "baseline": args.baseline, "normalize_advantages": args.normalize,
               "time_average": args.time_average,
               "score_baseline": args.score_baseline,
               "sampling_term": args.sampling_term,
               "low_variance_curvature": args.lvc}  # fmt: skip

    def learner(seed: int, **kw) -> MAMLRL:
        torch.manual_seed(seed)
        policy = MLP(2, 2, hidden=(64, 64), activation="tanh")
        return MAMLRL(policy, env, **{**options, **kw})

    out: dict = {"horizon": args.horizon, "iterations": args.iterations, "lr": args.lr,
                 "meta_batch_size": args.meta_batch_size, **options}  # fmt: skip
    models = {"maml": learner(args.seed)}
    if args.both_estimators:  # the same with the other meta-gradient estimator: the
        # unbiased one beside the original, the original one beside the unbiased one or LVC
        models["maml_other_estimator"] = learner(
            args.seed,
            sampling_term=not (args.sampling_term or args.lvc),
            low_variance_curvature=False,
        )
    # multi-task pretraining: no inner step (inner_lr 0), plain policy gradient on all tasks
    models["pretrained"] = learner(
        args.seed, inner_lr=0.0, sampling_term=False, low_variance_curvature=False
    )
    for name, model in models.items():
        start, cpu = time.perf_counter(), time.process_time()
        records = fit_meta_rl(
            model, args.iterations, meta_batch_size=args.meta_batch_size, lr=args.lr,
            seed=args.seed, log_every=25, log=args.out / f"{name}.jsonl",
        )  # fmt: skip
        out[f"{name}_train_minutes"] = (time.perf_counter() - start) / 60
        out[f"{name}_train_cpu_minutes"] = (time.process_time() - cpu) / 60
        out[f"{name}_last_log"] = records[-1]
    models["scratch"] = learner(args.seed + 1)
    tasks = env.sample_tasks(args.tasks, torch.Generator().manual_seed(TEST_SEED))
    for name, model in models.items():
        model.inner_lr = args.inner_lr  # every policy adapts with the same step
        _, history = model.adapt(tasks, steps=3, seed=TEST_SEED)
        returns = {s: h.rewards.sum(-1).mean(-1).numpy() for s, h in enumerate(history)}
        out[name] = {f"{s}_steps": interval(returns[s]) for s in (0, 1, 3)}
        out[name]["per_task"] = {s: returns[s].round(4).tolist() for s in (0, 1, 3)}
        print(name, {k: round(v["mean"], 2) for k, v in out[name].items() if "mean" in v})
    return out


def run_plot(args: argparse.Namespace) -> dict:
    """Cumulative regret against pulls: every baseline (and RL² where measured)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    baselines = json.loads((args.bandits / "result.json").read_text())
    rl2 = {}
    if args.rl2 and (args.rl2 / "eval.json").is_file():  # a `metaloop rl` run directory
        evaluation = json.loads((args.rl2 / "eval.json").read_text())
        rl2["arms"] = json.loads((args.rl2 / "config.json").read_text())["env"]["arms"]
        for key, block in evaluation.items():
            if key.startswith("horizon="):
                rl2[f"n={key.split('=')[1]}"] = block["rl2"]
    elif args.rl2:
        rl2 = json.loads((args.rl2 / "result.json").read_text())
    fig, axes = plt.subplots(1, len(SETTINGS), figsize=(5 * len(SETTINGS), 3.6))
    for ax, (arms, horizon) in zip(axes, SETTINGS):
        for name, row in baselines[f"k={arms},n={horizon}"].items():
            curve = row["regret_curve"]
            ax.plot(range(1, len(curve) + 1), curve, label=name, lw=1.2)
        if rl2.get("arms") == arms and f"n={horizon}" in rl2:
            curve = rl2[f"n={horizon}"]["regret_curve"]
            ax.plot(range(1, len(curve) + 1), curve, "k--", label="RL² (short training)")
        ax.set(xlabel="pull", ylabel="cumulative regret", title=f"k = {arms}, n = {horizon}")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(args.png, dpi=100)
    return {"png": str(args.png)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("sinusoid")
    p.add_argument("--learner", required=True)
    p.add_argument("--iterations", type=int, default=4000)
    p.add_argument("--lr", type=float, default=1e-3)
    p = sub.add_parser("bandit-baselines")
    p.add_argument("--tasks", type=int, default=500)
    p = sub.add_parser("rl2")
    p.add_argument("--arms", type=int, default=5)
    p.add_argument("--horizon", type=int, default=10)
    p.add_argument("--eval-horizons", type=int, nargs="+", default=[10, 100])
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--iterations", type=int, default=1000)
    p.add_argument("--meta-batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--tasks", type=int, default=500)
    p = sub.add_parser("maml-bandit")
    p.add_argument("--arms", type=int, default=5)
    p.add_argument("--horizon", type=int, default=10)
    p.add_argument("--steps", type=int, default=1)
    p.add_argument("--inner-lr", type=float, default=2.0)
    p.add_argument("--iterations", type=int, default=200)
    p.add_argument("--meta-batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--tasks", type=int, default=500)
    p = sub.add_parser("navigation")
    p.add_argument("--horizon", type=int, default=20)
    p.add_argument("--episodes", type=int, default=10)
    p.add_argument("--inner-lr", type=float, default=0.1)
    p.add_argument("--iterations", type=int, default=200)
    p.add_argument("--meta-batch-size", type=int, default=10)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--tasks", type=int, default=40)
    p.add_argument("--baseline", choices=("leave_one_out", "linear"), default="linear")
    p.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--time-average", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--score-baseline", choices=("batch", "pre_update"), default="pre_update")
    p.add_argument("--sampling-term", action=argparse.BooleanOptionalAction, default=False)
    p.add_argument(
        "--lvc", action="store_true", help="ProMP's low-variance curvature (no score term)"
    )
    p.add_argument(
        "--both-estimators",
        action="store_true",
        help="also train with the other estimator (the original one beside --lvc)",
    )
    p = sub.add_parser("plot")
    p.add_argument("--bandits", type=Path, required=True)
    p.add_argument("--rl2", type=Path, default=None)
    p.add_argument("--png", type=Path, required=True)
    for p in sub.choices.values():
        p.add_argument("--out", type=Path, required=True)
        p.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    commands = {
        "sinusoid": run_sinusoid,
        "bandit-baselines": run_bandit_baselines,
        "rl2": run_rl2,
        "navigation": run_navigation,
        "maml-bandit": run_maml_bandit,
        "plot": run_plot,
    }
    result = commands[args.command](args)
    print(json.dumps(result, indent=1))
    (args.out / "result.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
