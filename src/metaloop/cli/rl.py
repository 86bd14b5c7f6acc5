"""``metaloop rl``: train, evaluate and plot meta-RL learners (needs the ``rl`` extra).

    metaloop rl train configs/bandit-rl2.toml --run-dir runs/rl2 [--set train.iterations=100]
    metaloop rl eval runs/rl2 [--tasks 500] [--baselines] [--json]
    metaloop rl plot runs/rl2 [--out regret.png]

A config has ``[env]`` (``name`` and the environment's keyword arguments: ``make_env``),
``[algorithm]`` (``name = "rl2"`` or ``"maml_rl"`` and the learner's keyword arguments),
``[model]`` (MAML-RL's policy MLP: ``hidden``, ``activation``), ``[train]`` (``iterations``,
``meta_batch_size``, ``lr``, ``grad_clip``) and ``[eval]`` (``tasks``; bandits: ``horizons``
to play the trained policy at; MAML-RL: ``steps``, the policy-gradient steps to report).
Evaluation reports the mean total reward per task with its 95% interval over test tasks
drawn with seed 12345 (and the final cumulative regret on bandits), writes ``eval.json``
with the per-step curves, and ``plot`` draws cumulative regret against pulls (bandits) or
return against adaptation steps (MAML-RL).
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from metaloop.cli.config import ConfigError, tomllib

TEST_SEED = 12345
SECTIONS = {
    "name": "",
    "seed": 0,
    "env": {"name": "bernoulli_bandit"},
    "algorithm": {"name": "rl2"},
    "model": {"hidden": [64, 64], "activation": "tanh"},
    "train": {"iterations": 1000, "meta_batch_size": 32, "lr": 0.003, "grad_clip": 1.0},
    "eval": {"tasks": 500, "horizons": [], "steps": [0, 1, 3]},
}


def _interval(values: Any) -> dict[str, float]:
    v = np.asarray(values, dtype=float)
    ci = 1.96 * v.std(ddof=1) / np.sqrt(len(v)) if len(v) > 1 else float("nan")
    return {"mean": float(v.mean()), "ci95": float(ci)}


def load(path: str | Path, overrides: list[str] | None = None) -> dict[str, Any]:
    """The config at ``path`` over the defaults, then ``section.key=value`` overrides."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        loaded = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"config file {path} is not valid TOML: {err}") from err
    cfg = json.loads(json.dumps(SECTIONS))
    for item in overrides or []:
        key, sep, text = item.partition("=")
        section, dot, name = key.partition(".")
        if not sep or not dot:
            raise ConfigError(f"--set needs section.key=value, got {item!r}")
        try:
            value = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            value = text
        loaded.setdefault(section, {})[name] = value
    for key, value in loaded.items():
        if key not in cfg:
            raise ConfigError(f"unknown config section {key!r}; allowed: {', '.join(cfg)}")
        if isinstance(cfg[key], dict):
            if not isinstance(value, dict):
                raise ConfigError(f"[{key}] must be a table")
            if key in ("train", "eval", "model"):
                unknown = set(value) - set(cfg[key])
                if unknown:
                    raise ConfigError(
                        f"unknown [{key}] key(s) {', '.join(sorted(unknown))}; "
                        f"allowed: {', '.join(cfg[key])}"
                    )
            cfg[key].update(value)
        else:
            cfg[key] = value
    return cfg


def _kwargs(section: str, cls: Any, options: dict[str, Any], skip: tuple[str, ...]) -> dict:
    allowed = [p for p in inspect.signature(cls).parameters if p not in skip]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ConfigError(
            f"[{section}] {cls.__name__} takes no key(s) {', '.join(unknown)}; "
            f"allowed: {', '.join(allowed)}"
        )
    return options


def build(cfg: dict[str, Any]) -> Any:
    """The environment and the learner the config describes."""
    from gymnasium import spaces

    from metaloop.algorithms.maml_rl import MAMLRL
    from metaloop.algorithms.rl2 import RL2
    from metaloop.models.mlp import MLP
    from metaloop.tasks.envs import ENVS, make_env

    env_cfg = dict(cfg["env"])
    env_name = env_cfg.pop("name")
    if env_name not in ENVS and ":" not in str(env_name):
        raise ConfigError(f"unknown environment {env_name!r}; choose one of {', '.join(ENVS)}")
    env = make_env(env_name, **_kwargs("env", ENVS.get(env_name, object), env_cfg, ()))
    algo = dict(cfg["algorithm"])
    name = algo.pop("name")
    torch.manual_seed(int(cfg["seed"]))
    if name == "rl2":
        return RL2(env, **_kwargs("algorithm", RL2, algo, ("env",)))
    if name == "maml_rl":
        obs_dim = int(np.prod(env.observation_space.shape))
        space = env.action_space
        out = int(space.n) if isinstance(space, spaces.Discrete) else int(np.prod(space.shape))
        model = cfg["model"]
        policy = MLP(obs_dim, out, hidden=tuple(model["hidden"]), activation=model["activation"])
        return MAMLRL(policy, env, **_kwargs("algorithm", MAMLRL, algo, ("policy", "env")))
    raise ConfigError(f"unknown meta-RL algorithm {name!r}; choose rl2 or maml_rl")


def train(args: argparse.Namespace) -> int:
    from metaloop.train.rl import fit_meta_rl

    cfg = load(args.config, args.set)
    learner = build(cfg)
    run = Path(args.run_dir)
    run.mkdir(parents=True, exist_ok=True)
    (run / "config.json").write_text(json.dumps(cfg, indent=1))
    t = cfg["train"]
    records = fit_meta_rl(
        learner,
        int(t["iterations"]),
        meta_batch_size=int(t["meta_batch_size"]),
        lr=float(t["lr"]),
        seed=int(cfg["seed"]),
        grad_clip=t["grad_clip"],
        log=run / "metrics.jsonl",
    )
    torch.save(learner.state_dict(), run / "learner.pt")
    print(json.dumps({"run_dir": str(run), **records[-1]}))
    return 0


def _restore(run_dir: str | Path) -> tuple[dict[str, Any], Any]:
    run = Path(run_dir)
    if not (run / "config.json").is_file() or not (run / "learner.pt").is_file():
        raise ConfigError(f"{run} is not a trained meta-RL run (config.json, learner.pt)")
    cfg = json.loads((run / "config.json").read_text())
    learner = build(cfg)
    learner.load_state_dict(torch.load(run / "learner.pt", weights_only=True))
    learner.eval()
    return cfg, learner


def evaluate_run(run_dir: str | Path, tasks: int | None = None, baselines: bool = False) -> dict:
    """Mean total reward (and regret) over test tasks; see the module docstring."""
    from metaloop.evaluation.bandits import POLICIES, Prior, make_policy, run_bandit_policy
    from metaloop.tasks.envs import BanditEnv, make_env

    cfg, learner = _restore(run_dir)
    n = int(tasks or cfg["eval"]["tasks"])
    if n < 2:
        raise ConfigError(f"--tasks must be at least 2 (for an interval), got {n}")
    result: dict[str, Any] = {"tasks": n}
    if learner.learns_in_context:  # RL²: play whole trials; MAML-RL: adapt by steps
        env_cfg = dict(cfg["env"])
        name = env_cfg.pop("name")
        horizons = list(cfg["eval"]["horizons"]) or [learner.env.horizon]
        for horizon in horizons:
            env = make_env(name, **{**env_cfg, "horizon": int(horizon)})
            test = env.sample_tasks(n, torch.Generator().manual_seed(TEST_SEED))
            learner.set_env(env)
            with torch.no_grad():
                trial = learner.rollout(test, seed=TEST_SEED)
            rows = {cfg["algorithm"]["name"]: (trial.total_reward.numpy(), trial.regrets.numpy())}
            if baselines and isinstance(env, BanditEnv):
                for policy in POLICIES:
                    if policy == "gittins" and Prior.of(env).kind != "bernoulli":
                        continue
                    run = run_bandit_policy(
                        make_policy(policy, Prior.of(env)), env, test, TEST_SEED
                    )
                    rows[policy] = (run.total_reward, run.regrets)
            block = {}
            for key, (total, regrets) in rows.items():
                block[key] = {"total_reward": _interval(total)}
                if isinstance(env, BanditEnv):
                    cumulative = np.cumsum(regrets, 1)
                    block[key]["regret"] = _interval(cumulative[:, -1])
                    block[key]["regret_curve"] = cumulative.mean(0).round(4).tolist()
            result[f"horizon={horizon}"] = block
    else:
        steps = sorted(int(s) for s in cfg["eval"]["steps"])
        test = learner.env.sample_tasks(n, torch.Generator().manual_seed(TEST_SEED))
        _, history = learner.adapt(test, steps=steps[-1], seed=TEST_SEED)
        result["return_after_steps"] = {
            s: _interval(history[s].rewards.sum(-1).mean(-1).numpy()) for s in steps
        }
    (Path(run_dir) / "eval.json").write_text(json.dumps(result))
    return result


def eval_cmd(args: argparse.Namespace) -> int:
    result = evaluate_run(args.run_dir, args.tasks, args.baselines)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{result['tasks']} test tasks, mean +- 95% CI")
    for key, block in result.items():
        if key.startswith("horizon="):
            print(f"  {key}:")
            for policy, row in block.items():
                line = f"    {policy:<20} total reward {_fmt(row['total_reward'])}"
                if "regret" in row:
                    line += f", regret {_fmt(row['regret'])}"
                print(line)
        elif key == "return_after_steps":
            for s, row in block.items():
                print(f"  {s} policy-gradient steps: return {_fmt(row)}")
    return 0


def _fmt(row: dict[str, float]) -> str:
    return f"{row['mean']:.3f} +- {row['ci95']:.3f}"


def plot_cmd(args: argparse.Namespace) -> int:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise ConfigError("plotting needs matplotlib: pip install 'metaloop[plot]'") from err
    path = Path(args.run_dir) / "eval.json"
    if not path.is_file():
        raise ConfigError(f"{args.run_dir} has no eval.json: run `metaloop rl eval` first")
    result = json.loads(path.read_text())
    blocks = [(k, v) for k, v in result.items() if k.startswith("horizon=")]
    fig, axes = plt.subplots(1, max(1, len(blocks)), figsize=(5 * max(1, len(blocks)), 3.8))
    axes = np.atleast_1d(axes)
    for ax, (key, block) in zip(axes, blocks):
        for policy, row in block.items():
            if "regret_curve" in row:
                curve = row["regret_curve"]
                ax.plot(range(1, len(curve) + 1), curve, label=policy, lw=1.5)
        ax.set(xlabel="pull", ylabel="cumulative regret", title=key)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    if not blocks:
        steps = result["return_after_steps"]
        xs = [int(s) for s in steps]
        axes[0].errorbar(
            xs,
            [steps[s]["mean"] for s in steps],
            yerr=[steps[s]["ci95"] for s in steps],
            marker="o",
        )
        axes[0].set(xlabel="policy-gradient steps", ylabel="return", title="adaptation")
        axes[0].grid(alpha=0.3)
    fig.tight_layout()
    out = Path(args.out) if args.out else Path(args.run_dir) / "rl.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    print(out)
    return 0


def add_parsers(sub: Any) -> None:
    rl = sub.add_parser("rl", help="meta-RL: train, eval and plot (RL², MAML-RL)")
    rl_sub = rl.add_subparsers(dest="rl_command", required=True)
    p = rl_sub.add_parser("train", help="meta-train from a TOML config")
    p.add_argument("config")
    p.add_argument("--run-dir", required=True)
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    p.set_defaults(func=_guarded(train))
    p = rl_sub.add_parser("eval", help="mean return / regret over test tasks")
    p.add_argument("run_dir")
    p.add_argument("--tasks", type=int, default=None)
    p.add_argument("--baselines", action="store_true", help="bandits: every baseline too")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_guarded(eval_cmd))
    p = rl_sub.add_parser("plot", help="regret against pulls, or return against steps")
    p.add_argument("run_dir")
    p.add_argument("--out", default=None)
    p.set_defaults(func=_guarded(plot_cmd))


def _guarded(fn: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        try:
            import gymnasium  # noqa: F401
        except ImportError:
            print("metaloop rl needs gymnasium: pip install 'metaloop[rl]'", file=sys.stderr)
            return 2
        return fn(args)

    return run


__all__ = ["add_parsers", "build", "evaluate_run", "load"]
