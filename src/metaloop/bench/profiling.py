"""``profile_engine``: a ``torch.profiler`` table of one engine's meta-steps on one case."""

from __future__ import annotations

import time

import torch

from metaloop.bench.engines import build_engine
from metaloop.bench.measure import _maybe_threads, _sync
from metaloop.bench.workloads import get_workload


def profile_engine(
    workload: str,
    engine: str,
    case: str | None = None,
    steps: int = 5,
    warmup: int = 3,
    device: str | torch.device = "cpu",
    threads: int | None = None,
    row_limit: int = 20,
    seed: int = 0,
) -> str:
    """``torch.profiler`` table (ops sorted by self time) of ``steps`` meta-steps of one
    engine on one case of a workload, after ``warmup`` untimed steps."""
    from torch.profiler import ProfilerActivity, profile

    spec = get_workload(workload)
    chosen = [c for c in spec.cases if case is None or c.label == case]
    if not chosen:
        raise ValueError(f"no case {case!r} in {workload}")
    c = chosen[0]
    device = torch.device(device)
    with _maybe_threads(threads):
        batch = c.make_batch(torch.Generator().manual_seed(seed)).to(device)
        torch.manual_seed(seed)
        model = c.make_model().to(device)
        learner = build_engine(engine, c, model)
        learner.to(device)

        def step() -> None:
            for p in model.parameters():
                p.grad = None
            loss, _ = learner.meta_loss(batch)
            loss.backward()

        for _ in range(warmup):
            step()
        activities = [ProfilerActivity.CPU]
        if device.type == "cuda":
            activities.append(ProfilerActivity.CUDA)
        t0 = time.perf_counter()
        with profile(activities=activities) as prof:
            for _ in range(steps):
                step()
            _sync(device)
        wall = (time.perf_counter() - t0) / steps
        title = (
            f"{workload} [{c.label}] {engine}: {steps} meta-steps, "
            f"{torch.get_num_threads()} threads, {wall * 1e3:.2f} ms/step under the profiler"
        )
    return (
        title
        + "\n"
        + prof.key_averages().table(
            sort_by="self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total",
            row_limit=row_limit,
        )
    )
