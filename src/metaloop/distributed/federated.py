"""Federated meta-learning: clients as ``torch.distributed`` processes, each with its own
task distribution, and a shared initialisation averaged every round.

One round (FedAvg applied to a meta-learner, as in FedMeta, Chen et al. 2018):

    every client c starts from the shared theta (identical on all processes),
    takes ``local_steps`` outer SGD steps  theta_c <- theta_c - lr * grad meta_loss(B_c)
        on meta-batches B_c of its own tasks (MAML, FOMAML or Reptile's meta-gradient),
    theta <- (1/C) sum_c theta_c             (``all_reduce`` of the parameters, then / C).

Only parameters travel: each client uploads and downloads one copy of them per round,
``2 * sum_p numel(p) * element_size(p)`` bytes (the logical payload; gloo's ring adds
its own constant factor), the same for the three algorithms.  What differs is the client's
compute (second-order MAML differentiates through the inner loop; FOMAML and Reptile do not)
and how good the averaged initialisation is after the same number of rounds.

``run_client`` is what each process runs; ``federated_experiment`` spawns the clients on
one machine (gloo, file rendezvous) and collects their reports;
``python -m metaloop.distributed.federated`` compares MAML / FOMAML / Reptile on sinusoids
whose phase range differs per client and writes a JSON report and a PNG.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from metaloop.algorithms.base import MetaLearner
from metaloop.tasks.base import TaskFamily


@dataclass
class RoundLog:
    round: int
    loss: float  # this client's mean local meta-loss over the round's steps
    compute_seconds: float  # CPU time of the local steps (process time)
    bytes_sent: int  # logical payload uploaded by this client this round
    bytes_received: int


@dataclass
class ClientReport:
    rank: int
    clients: int
    rounds: list[RoundLog] = field(default_factory=list)
    eval_loss: float = float("nan")  # post-adaptation query loss on this client's tasks
    eval_half_width: float = float("nan")
    eval_accuracy: float | None = None
    final_params: dict[str, list[float]] | None = None


def parameter_bytes(learner: MetaLearner) -> int:
    """Bytes of one copy of the learner's trainable parameters."""
    return sum(p.numel() * p.element_size() for p in learner.parameters() if p.requires_grad)


def average_parameters(learner: MetaLearner, clients: int) -> None:
    """``theta <- (1/C) sum_c theta_c`` in place, over the default process group."""
    for p in learner.parameters():
        if p.requires_grad:
            dist.all_reduce(p.data, op=dist.ReduceOp.SUM)
            p.data.div_(clients)


def broadcast_parameters(learner: MetaLearner, source: int = 0) -> None:
    """Every client starts from ``source``'s parameters."""
    for p in learner.parameters():
        dist.broadcast(p.data, source)


def local_steps(
    learner: MetaLearner,
    family: TaskFamily,
    steps: int,
    lr: float,
    meta_batch_size: int,
    generator: torch.Generator,
) -> float:
    """``steps`` plain SGD steps on the learner's meta-loss; returns the mean loss."""
    total = 0.0
    params = [p for p in learner.parameters() if p.requires_grad]
    for _ in range(steps):
        learner.zero_grad(set_to_none=True)
        loss, _ = learner.meta_loss(family.sample(meta_batch_size, generator))
        loss.backward()
        with torch.no_grad():
            for p in params:
                if p.grad is not None:
                    p.sub_(lr * p.grad)
        total += float(loss.detach())
    learner.zero_grad(set_to_none=True)
    return total / steps


def run_client(
    learner: MetaLearner,
    family: TaskFamily,
    rounds: int,
    local_steps_per_round: int,
    lr: float,
    meta_batch_size: int,
    eval_family: TaskFamily | None = None,
    episodes: int = 200,
    eval_steps: int | None = None,
    seed: int = 0,
    keep_params: bool = False,
) -> ClientReport:
    """One client's side of federated meta-training (the process group must be initialised).

    Rank 0's initial parameters are broadcast, then ``rounds`` rounds of local steps on this
    client's ``family`` and averaging.  Afterwards the shared initialisation is scored on
    ``eval_family`` (default: this client's family) after ``eval_steps`` inner steps.
    """
    rank, clients = dist.get_rank(), dist.get_world_size()
    broadcast_parameters(learner)
    payload = parameter_bytes(learner)
    gen = torch.Generator().manual_seed(seed + 1000 * rank)
    report = ClientReport(rank, clients)
    for r in range(rounds):
        start = time.process_time()
        loss = local_steps(learner, family, local_steps_per_round, lr, meta_batch_size, gen)
        spent = time.process_time() - start
        average_parameters(learner, clients)
        report.rounds.append(RoundLog(r, loss, spent, payload, payload))
    batch = (eval_family or family).sample(
        episodes, torch.Generator().manual_seed(seed + 7 + 1000 * rank)
    )
    result = learner.evaluate_batch(batch, None if eval_steps is None else (eval_steps,))
    metrics = result[max(result)]
    losses = metrics["loss"].double()
    report.eval_loss = float(losses.mean())
    report.eval_half_width = 1.96 * float(losses.std()) / math.sqrt(len(losses))
    if "accuracy" in metrics:
        report.eval_accuracy = float(metrics["accuracy"].double().mean())
    if keep_params:
        report.final_params = {
            n: p.detach().double().reshape(-1).tolist() for n, p in learner.named_parameters()
        }
    return report


Setup = Callable[[int], tuple[MetaLearner, TaskFamily, TaskFamily | None]]


def _spawned(
    rank: int,
    clients: int,
    init_file: str,
    out_dir: str,
    runs: list[tuple[Setup, dict[str, Any]]],
) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=clients
    )
    try:
        for i, (setup, options) in enumerate(runs):
            learner, family, eval_family = setup(rank)
            report = run_client(learner, family, eval_family=eval_family, **options)
            Path(out_dir, f"run{i}-client{rank}.json").write_text(json.dumps(asdict(report)))
        dist.barrier()
    finally:
        dist.destroy_process_group()


def federated_experiments(
    runs: list[tuple[Setup, dict[str, Any]]], clients: int
) -> list[list[ClientReport]]:
    """Spawn ``clients`` processes (gloo, CPU, file rendezvous) once and run each
    ``(setup, options)`` in turn: ``setup(rank)`` returns that client's learner (built the
    same way on every rank; rank 0's parameters are broadcast anyway), its training family
    and its evaluation family (``None``: the training family); ``options`` go to
    ``run_client``.  ``setup`` must be picklable (a module-level function or object).
    Returns the clients' reports per run."""
    if clients < 1:
        raise ValueError(f"clients must be >= 1, got {clients}")
    with tempfile.TemporaryDirectory() as tmp:
        init_file = os.path.join(tmp, "init")
        mp.spawn(_spawned, args=(clients, init_file, tmp, runs), nprocs=clients)
        out = []
        for i in range(len(runs)):
            reports = []
            for rank in range(clients):
                data = json.loads(Path(tmp, f"run{i}-client{rank}.json").read_text())
                data["rounds"] = [RoundLog(**r) for r in data["rounds"]]
                reports.append(ClientReport(**data))
            out.append(reports)
    return out


def federated_experiment(setup: Setup, clients: int, **options: Any) -> list[ClientReport]:
    """One run of ``federated_experiments``: the clients' reports."""
    return federated_experiments([(setup, options)], clients)[0]


# -- the sinusoid comparison (python -m metaloop.distributed.federated) -------------------
ALGORITHMS = ("maml", "fomaml", "reptile")


@dataclass
class _SineSetup:
    """Client ``c`` of ``C``: sinusoids with phases in ``[c pi / C, (c + 1) pi / C]``."""

    algorithm: str
    clients: int
    hidden: tuple[int, ...] = (40, 40)
    inner_lr: float = 0.01
    inner_steps: int = 1
    seed: int = 0

    def __call__(self, rank: int) -> tuple[MetaLearner, TaskFamily, TaskFamily | None]:
        from metaloop.algorithms.maml import MAML
        from metaloop.algorithms.reptile import Reptile
        from metaloop.models.mlp import MLP
        from metaloop.tasks.synthetic import Sinusoid

        torch.manual_seed(self.seed)
        model = MLP(1, 1, hidden=self.hidden)
        kwargs = {"inner_lr": self.inner_lr, "inner_steps": self.inner_steps}
        if self.algorithm == "reptile":
            learner: MetaLearner = Reptile(model, eval_steps=self.inner_steps, **kwargs)
        else:
            learner = MAML(model, first_order=self.algorithm == "fomaml", **kwargs)
        width = math.pi / self.clients
        family = Sinusoid(shots=10, queries=10, phase=(rank * width, (rank + 1) * width))
        return learner, family, None


def _summary(reports: list[ClientReport]) -> dict[str, Any]:
    rounds = len(reports[0].rounds)
    return {
        "clients": len(reports),
        "rounds": rounds,
        "compute_seconds_per_round": sum(r.compute_seconds for c in reports for r in c.rounds)
        / (rounds * len(reports)),
        "bytes_per_round_per_client": reports[0].rounds[0].bytes_sent
        + reports[0].rounds[0].bytes_received,
        "eval_loss": sum(c.eval_loss for c in reports) / len(reports),
        "eval_loss_per_client": [c.eval_loss for c in reports],
        "eval_half_width_per_client": [c.eval_half_width for c in reports],
        "train_loss_by_round": [
            sum(c.rounds[r].loss for c in reports) / len(reports) for r in range(rounds)
        ],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m metaloop.distributed.federated",
        description="MAML / FOMAML / Reptile as federated meta-learners on sinusoids",
    )
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--local-steps", type=int, default=5)
    parser.add_argument("--meta-batch-size", type=int, default=10)
    parser.add_argument("--lr", type=float, default=0.01, help="MAML/FOMAML local SGD rate")
    parser.add_argument("--reptile-lr", type=float, default=0.1, help="Reptile local SGD rate")
    parser.add_argument("--inner-steps", type=int, default=1)
    parser.add_argument("--algorithms", default=",".join(ALGORITHMS))
    parser.add_argument("--episodes", type=int, default=200)
    parser.add_argument("--eval-steps", type=int, default=10)
    parser.add_argument("--out", default="federated.json")
    parser.add_argument("--plot", default=None, help="PNG of training loss against rounds")
    args = parser.parse_args(argv)
    algorithms = [a.strip() for a in args.algorithms.split(",") if a.strip()]
    unknown = [a for a in algorithms if a not in ALGORITHMS]
    if unknown:
        parser.error(f"unknown algorithm(s) {unknown}; choose from {', '.join(ALGORITHMS)}")
    runs = [
        (
            _SineSetup(name, args.clients, inner_steps=args.inner_steps),
            {
                "rounds": args.rounds,
                "local_steps_per_round": args.local_steps,
                "lr": args.reptile_lr if name == "reptile" else args.lr,
                "meta_batch_size": args.meta_batch_size,
                "episodes": args.episodes,
                "eval_steps": args.eval_steps,
            },
        )
        for name in algorithms
    ]
    results = {}
    for name, reports in zip(algorithms, federated_experiments(runs, args.clients)):
        results[name] = _summary(reports)
        s = results[name]
        print(
            f"{name}: eval MSE after {args.eval_steps} steps {s['eval_loss']:.4g}, client compute "
            f"{s['compute_seconds_per_round']:.3g} s/round, {s['bytes_per_round_per_client']} "
            "bytes/round/client",
            flush=True,
        )
    Path(args.out).write_text(json.dumps({"settings": vars(args), "results": results}, indent=1))
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5.5, 3.8))
        for name, s in results.items():
            if name != "reptile":  # Reptile's loss is its surrogate, not a query loss
                ax.plot(range(1, s["rounds"] + 1), s["train_loss_by_round"], label=name)
        ax.set_xlabel("round")
        ax.set_ylabel("clients' local meta-loss (query MSE)")
        ax.set_yscale("log")
        ax.set_title(f"federated meta-learning, {args.clients} clients")
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.plot, dpi=110)
        plt.close(fig)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
