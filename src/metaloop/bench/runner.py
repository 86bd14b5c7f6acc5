"""Time meta-steps of the engine against the plain per-task loop, in one process.

``run_benchmark(workload)`` runs every case of a workload (``metaloop.bench.workloads``)
with every engine configuration and returns a JSON-serialisable dict; ``format_table``
renders it.  For each case:

1. one random batch of the workload's shapes (seeded) and one initial model; every engine
   starts from a deep copy of that model, so all meta-gradients are comparable;
2. the **floor**: forward + backward of the task loss of the model on the query examples
   with the shared (unadapted) parameters, eager: all tasks' queries in one call
   (``batched``) and one call per task (``per_task``); the floor is the faster of the two
   (on a CPU one huge convolution batch can be slower than many small ones).  Every
   meta-step has to do at least this much (the query forward and its backward);
   ``x_floor`` is how many floors an engine's meta-step costs;
3. per engine: ``warmup`` meta-steps (the first one timed separately: it includes
   ``torch.compile``), one meta-step under the memory probe, then ``repeats`` timed
   meta-steps.  A meta-step is ``loss, _ = engine.meta_loss(batch); loss.backward()``
   (gradients reset to ``None`` before each).  ``tasks_per_s = meta_batch / median``;
4. the meta-gradient of every engine is compared with the plain loop's on the same batch
   (``grad_rel_diff``: ``max |g - g_plain| / max |g_plain|`` over all model parameters);
5. the **arithmetic**: floating-point operations of one floor step and of one plain-loop
   meta-step, counted by ``torch.utils.flop_counter`` (matrix products and convolutions,
   forward and backward; elementwise work is not counted).  ``flops.x_floor`` is the
   meta-step's multiple of the floor's work: an engine doing the same mathematics cannot
   come closer to the floor than that unless it runs those operations faster than the
   floor runs its own.

Peak memory.  CUDA: ``torch.cuda.max_memory_allocated()`` during the probed step minus the
memory allocated before it.  CPU: there is no allocator statistic for CPU tensors
(``tracemalloc`` does not see torch's allocations), so the probe measures the resident set
size: it runs ``gc.collect()`` and glibc's ``malloc_trim(0)`` (returning freed heap pages
to the OS, so earlier steps' freed memory does not hide this step's growth), reads the RSS
from ``/proc/self/statm``, then samples it every 0.5 ms from a background thread during
the meta-step; ``peak_memory_bytes`` is the largest sample minus the starting RSS.  It
counts everything the step touches (activations, the autograd graph, allocator
fragmentation) and can miss peaks shorter than the sampling interval; on systems without
``/proc`` it is ``None``.

Result fields (``run_benchmark``'s return value):

* ``workload``, ``description``, ``device``, ``torch`` (version), ``python``, ``threads``
  (``torch.get_num_threads()`` during the run), ``cpu_count``, ``load_avg_start`` /
  ``load_avg_end`` (1/5/15-minute load averages; the machines are shared, read the
  numbers with them), ``repeats``, ``warmup``, ``memory_method``, ``libraries``
  (which optional comparison libraries imported), ``started`` (UTC ISO time),
  ``total_seconds``;
* ``cases``: one per case with ``case`` (label), ``meta_batch``, ``settings`` (the
  workload's shapes and hyperparameters), ``floor`` (``seconds``, ``tasks_per_s``,
  ``cpu_seconds``, and ``batched_seconds`` / ``per_task_seconds`` with their
  ``..._cpu_seconds``), ``flops`` (``floor``, ``plain`` and ``x_floor``: the counts of
  step 5 and their ratio; ``None`` where counting failed) and
  ``engines``: a list of dicts with ``engine`` (name), ``seconds`` (median wall time of
  the timed steps), ``seconds_all``, ``tasks_per_s``, ``cpu_seconds`` / ``tasks_per_cpu_s``
  (median process CPU time per step: with one thread, a load-independent view of the
  same quantity on a shared machine; with more threads it adds up all threads),
  ``ratio_to_plain`` (plain's median time over this engine's: the speed-up;
  ``ratio_to_plain_cpu`` the same in CPU time), ``x_floor``
  (median time over the floor time), ``first_step_seconds``, ``peak_memory_bytes``,
  ``grad_rel_diff`` and ``error`` (``None``, or the message when the engine failed; the
  timing fields are then ``None``).

Engine names: a base, then options joined by ``+``.  Bases: ``plain`` (the plain loop of
``baselines``), ``loop`` and ``vmap`` (``MAML`` with that ``vectorize``), ``higher`` and
``torchopt`` (the libraries, when installed), ``protonet`` (``ProtoNet``).  Options:
``compile`` (``compile=MODE`` for a ``torch.compile`` mode such as
``max-autotune-no-cudagraphs``, ``compile=BACKEND`` for another backend, e.g.
``compile=aot_eager``), ``checkpoint``, ``channels_last``, ``bf16`` (autocast bfloat16),
``chunk=N`` (``chunk_size``).
"""

from __future__ import annotations

import copy
import datetime
import gc
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from metaloop.bench.baselines import available_libraries
from metaloop.bench.engines import build_engine, default_engines, parse_engine
from metaloop.bench.measure import (
    _count_flops,
    _floor_step,
    _grads,
    _maybe_threads,
    _rel_diff,
    _sync,  # noqa: F401 (importable from here, as before the split)
    _timed,
    _timed2,
)
from metaloop.bench.memory import MEMORY_METHOD_CPU, MEMORY_METHOD_CUDA, PeakMemory
from metaloop.bench.profiling import profile_engine
from metaloop.bench.report import load_average, machine_facts
from metaloop.bench.table import format_table
from metaloop.bench.workloads import Case, get_workload
from metaloop.functional.speed import retained_memory_threshold
from metaloop.tasks.base import TaskBatch

__all__ = [
    "MEMORY_METHOD_CPU",
    "MEMORY_METHOD_CUDA",
    "PeakMemory",
    "build_engine",
    "default_engines",
    "format_table",
    "parse_engine",
    "profile_engine",
    "run_benchmark",
    "run_case",
]


def run_case(
    case: Case,
    engines: Sequence[str],
    repeats: int,
    warmup: int,
    device: torch.device,
    memory: bool = True,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    generator = torch.Generator().manual_seed(seed)
    batch = case.make_batch(generator).to(device)
    torch.manual_seed(seed)
    base_model = case.make_model().to(device)

    floors: dict[str, tuple[float, float]] = {}
    layouts = ["batched", "per_task"]
    if batch.query_x.dim() == 5:  # images: the channels-last layout as well
        layouts += ["batched_channels_last", "per_task_channels_last"]
    for layout in layouts:
        if layout.startswith("per_task") and len(batch) == 1:
            continue
        floor_fn = _floor_step(
            copy.deepcopy(base_model),
            batch,
            case.loss,
            per_task=layout.startswith("per_task"),
            channels_last=layout.endswith("channels_last"),
        )
        floor_fn()
        floor_both = [_timed2(floor_fn, device) for _ in range(repeats)]
        floors[layout] = (
            statistics.median(w for w, _ in floor_both),
            statistics.median(c for _, c in floor_both),
        )
    # the floor is the cheapest way: one big batch is not always faster (CPU caches), and
    # the memory layout matters for convolutions
    floor_layout = min(floors, key=lambda k: floors[k])
    floor_s, floor_cpu = floors[floor_layout]
    flops: dict[str, Any] = {
        "floor": _count_flops(_floor_step(copy.deepcopy(base_model), batch, case.loss)),
        "plain": None,
        "x_floor": None,
    }

    results: list[dict[str, Any]] = []
    reference: list[Tensor | None] | None = None
    plain_s: float | None = None
    plain_cpu: float | None = None
    for name in engines:
        entry: dict[str, Any] = {
            "engine": name,
            "seconds": None,
            "seconds_all": None,
            "tasks_per_s": None,
            "cpu_seconds": None,
            "tasks_per_cpu_s": None,
            "ratio_to_plain_cpu": None,
            "ratio_to_plain": None,
            "x_floor": None,
            "first_step_seconds": None,
            "peak_memory_bytes": None,
            "grad_rel_diff": None,
            "error": None,
        }
        results.append(entry)
        if log:
            log(f"  {case.label}: {name} ...")
        try:
            model = copy.deepcopy(base_model)
            engine = build_engine(name, case, model)
            engine.to(device)
            params = list(model.parameters())

            def step(
                engine: nn.Module = engine,
                step_batch: TaskBatch = batch,
                params: list[Tensor] = params,
            ) -> None:
                for p in params:
                    p.grad = None
                loss, _ = engine.meta_loss(step_batch)
                loss.backward()

            entry["first_step_seconds"] = _timed(step, device)
            for _ in range(warmup - 1):
                step()
            if memory:
                probe = PeakMemory(device)
                with probe:
                    step()
                entry["peak_memory_bytes"] = probe.peak
            both = [_timed2(step, device) for _ in range(repeats)]
            times = [w for w, _ in both]
            median = statistics.median(times)
            cpu = statistics.median(c for _, c in both)
            entry.update(
                seconds=median,
                seconds_all=times,
                tasks_per_s=case.meta_batch / median,
                x_floor=median / floor_s,
                cpu_seconds=cpu,
                tasks_per_cpu_s=case.meta_batch / cpu if cpu > 0 else None,
            )
            grads = _grads(model)
            if name == "plain":
                reference, plain_s, plain_cpu = grads, median, cpu
                flops["plain"] = _count_flops(step)
                if flops["plain"] and flops["floor"]:
                    flops["x_floor"] = flops["plain"] / flops["floor"]
            elif reference is not None:
                entry["grad_rel_diff"] = _rel_diff(grads, reference)
            del engine, model
        except Exception as err:
            entry["error"] = f"{type(err).__name__}: {err}"[:1000]
        gc.collect()
    for entry in results:
        if plain_s is not None and entry["seconds"]:
            entry["ratio_to_plain"] = plain_s / entry["seconds"]
        if plain_cpu and entry["cpu_seconds"]:
            entry["ratio_to_plain_cpu"] = plain_cpu / entry["cpu_seconds"]
    return {
        "case": case.label,
        "meta_batch": case.meta_batch,
        "settings": {
            **case.settings,
            "loss": case.loss,
            "inner_lr": case.inner_lr,
            "inner_steps": case.inner_steps,
            "first_order": case.first_order,
            "kind": case.kind,
        },
        "floor": {
            "seconds": floor_s,
            "tasks_per_s": case.meta_batch / floor_s,
            "cpu_seconds": floor_cpu,
            "layout": floor_layout,
            **{f"{k}_seconds": v[0] for k, v in floors.items()},
            **{f"{k}_cpu_seconds": v[1] for k, v in floors.items()},
        },
        "flops": flops,
        "engines": results,
    }


def run_benchmark(
    workload: str,
    repeats: int | None = None,
    engines: Sequence[str] | None = None,
    device: str | torch.device = "cpu",
    cases: Sequence[str] | None = None,
    warmup: int | None = None,
    threads: int | None = None,
    memory: bool = True,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Benchmark one workload (``sinusoid``, ``omniglot``, ``memory``, ``protonet``).

    Args:
        workload: the workload name (``metaloop.bench.workloads``).
        repeats: timed meta-steps per engine (default: the workload's).
        engines: engine names (default: the workload's list, plus ``higher``/``torchopt``
            for second-order MAML cases when those libraries import).  ``plain`` is always
            run first, as the reference for ratios and gradients.
        device: ``"cpu"`` or ``"cuda"``.
        cases: labels of the cases to run (default all, e.g. ``["first_order"]``).
        warmup: untimed meta-steps before timing (default: the workload's).
        threads: ``torch.set_num_threads`` for the run (default: leave as is).
        memory: run the memory probe step.
        seed: seed of the random batch and of the model's initialization.
        log: called with a progress line before each engine.

    Returns the dict documented in this module's docstring (JSON-serialisable).
    """
    spec = get_workload(workload)
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but CUDA is not available")
    repeats = spec.repeats if repeats is None else int(repeats)
    warmup = spec.warmup if warmup is None else int(warmup)
    if repeats < 1 or warmup < 1:
        raise ValueError(f"repeats and warmup must be >= 1, got {repeats} and {warmup}")
    selected = [c for c in spec.cases if cases is None or c.label in cases]
    if not selected:
        raise ValueError(
            f"no case of {workload} matches {cases}; cases: "
            + ", ".join(c.label for c in spec.cases)
        )
    started = datetime.datetime.now(datetime.timezone.utc)
    load_start = load_average()
    t0 = time.perf_counter()
    out_cases = []
    with _maybe_threads(threads):
        used_threads = torch.get_num_threads()
        for case in selected:
            names = list(engines) if engines is not None else list(default_engines(case))
            names = ["plain"] + [n for n in names if n != "plain"]
            out_cases.append(run_case(case, names, repeats, warmup, device, memory, seed, log))
    return {
        "workload": spec.name,
        "description": spec.description,
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "threads": used_threads,
        "retained_memory_threshold": retained_memory_threshold(),
        **machine_facts(),
        "load_avg_start": load_start,
        "load_avg_end": load_average(),
        "repeats": repeats,
        "warmup": warmup,
        "memory_method": (MEMORY_METHOD_CUDA if device.type == "cuda" else MEMORY_METHOD_CPU)
        if memory
        else None,
        "libraries": available_libraries(),
        "started": started.isoformat(timespec="seconds"),
        "total_seconds": time.perf_counter() - t0,
        "cases": out_cases,
    }
