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

import contextlib
import copy
import ctypes
import datetime
import gc
import os
import statistics
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metaloop.bench.baselines import (
    HigherMAML,
    PlainLoopMAML,
    PlainLoopProtoNet,
    TorchOptMAML,
    available_libraries,
)
from metaloop.bench.report import fmt, load_average, load_text, machine_facts
from metaloop.bench.sampler import NAME as SAMPLER
from metaloop.bench.sampler import format_sampler_table
from metaloop.bench.workloads import Case, get_workload
from metaloop.functional.speed import num_threads, retained_memory_threshold
from metaloop.tasks.base import TaskBatch

MEMORY_METHOD_CPU = "peak RSS growth during one meta-step (after gc + malloc_trim), 0.5 ms sampling"
MEMORY_METHOD_CUDA = "torch.cuda.max_memory_allocated growth during one meta-step"


# -- memory probes --------------------------------------------------------------------------
def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _malloc_trim() -> None:
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class PeakMemory:
    """Context manager: ``self.peak`` is the peak memory growth inside it, in bytes."""

    def __init__(self, device: torch.device, interval: float = 0.0005) -> None:
        self.device, self.interval = device, interval
        self.peak: int | None = None

    def __enter__(self) -> PeakMemory:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
            return self
        _malloc_trim()
        self._start = _rss_bytes()
        self._max = self._start
        self._stop = threading.Event()
        if self._start is not None:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            rss = _rss_bytes()
            if rss is not None and rss > self._max:
                self._max = rss
            time.sleep(self.interval)

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device) - self._start
            return
        if self._start is None:
            return
        self._stop.set()
        self._thread.join()
        rss = _rss_bytes() or 0
        self.peak = max(self._max, rss) - self._start


# -- engines ---------------------------------------------------------------------------------
def parse_engine(name: str) -> tuple[str, dict[str, Any]]:
    """``"vmap+compile+chunk=4"`` -> ``("vmap", {"compile": True, "chunk_size": 4})``."""
    base, *opts = name.split("+")
    kwargs: dict[str, Any] = {}
    for opt in opts:
        key, _, value = opt.partition("=")
        if key == "compile":
            modes = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
            kwargs["compile"] = (
                True if not value else {"mode": value} if value in modes else {"backend": value}
            )
        elif key == "checkpoint":
            kwargs["checkpoint"] = True
        elif key == "channels_last":
            kwargs["channels_last"] = True
        elif key == "bf16":
            kwargs["autocast"] = "bfloat16"
        elif key == "chunk" and value.isdigit():
            kwargs["chunk_size"] = int(value)
        else:
            raise ValueError(f"unknown engine option {opt!r} in {name!r}")
    return base, kwargs


def build_engine(name: str, case: Case, model: nn.Module) -> nn.Module:
    """The engine (a ``meta_loss`` learner) for an engine name and a case."""
    base, kwargs = parse_engine(name)
    if case.kind == "protonet":
        channels_last = bool(kwargs.pop("channels_last", False))
        autocast = kwargs.pop("autocast", None)
        if kwargs:
            raise ValueError(f"ProtoNet engines take only +channels_last and +bf16, got {name!r}")
        if base == "plain":
            if autocast:
                raise ValueError(f"the plain ProtoNet loop runs in float32, got {name!r}")
            if channels_last:  # what a user of the plain loop would do: restride the model
                model.to(memory_format=torch.channels_last)
            return PlainLoopProtoNet(model)
        if base == "protonet":
            from metaloop.algorithms.protonet import ProtoNet

            return ProtoNet(model, channels_last=channels_last, autocast=autocast)
        raise ValueError(f"unknown ProtoNet engine {name!r}; use plain or protonet")
    common = dict(
        inner_lr=case.inner_lr,
        inner_steps=case.inner_steps,
        loss=case.loss,
        first_order=case.first_order,
    )
    if base in ("plain", "higher", "torchopt"):
        if kwargs:
            raise ValueError(f"the {base} engine takes no options, got {name!r}")
        cls = {"plain": PlainLoopMAML, "higher": HigherMAML, "torchopt": TorchOptMAML}[base]
        return cls(model, **common)
    if base in ("loop", "vmap"):
        from metaloop.algorithms.maml import MAML

        return MAML(model, vectorize=base, **common, **kwargs)
    raise ValueError(f"unknown engine {name!r}; bases: plain, loop, vmap, higher, torchopt")


def default_engines(case: Case) -> tuple[str, ...]:
    engines = list(case.engines)
    if case.kind == "maml" and not case.first_order:
        engines += [lib for lib, ok in available_libraries().items() if ok]
    return tuple(engines)


# -- timing ----------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], None], device: torch.device) -> float:
    return _timed2(fn, device)[0]


def _timed2(fn: Callable[[], None], device: torch.device) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one call."""
    _sync(device)
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    _sync(device)
    return time.perf_counter() - t0, time.process_time() - c0


def _floor_step(
    model: nn.Module,
    batch: TaskBatch,
    loss: str,
    per_task: bool = False,
    channels_last: bool = False,
) -> Callable[[], None]:
    """Forward + backward of the query loss with the shared parameters: all query examples
    in one call, or (``per_task``) one call per task; ``channels_last``: model and images
    restrided channels-last (pass a copy of the model)."""
    loss_fn = F.mse_loss if loss == "mse" else F.cross_entropy
    params = list(model.parameters())
    if per_task:
        chunks = [(batch.query_x[i], batch.query_y[i]) for i in range(len(batch))]
    else:
        chunks = [(batch.query_x.flatten(0, 1), batch.query_y.flatten(0, 1))]
    if channels_last:
        model.to(memory_format=torch.channels_last)
        chunks = [(x.clone(memory_format=torch.channels_last), y) for x, y in chunks]

    def step() -> None:
        for p in params:
            p.grad = None
        for qx, qy in chunks:
            out = model(qx)
            if loss == "cross_entropy" and (out.dim() != 2 or out.shape[-1] <= int(qy.max())):
                # an encoder without a head (ProtoNet): any scalar of the embedding
                target = out.flatten(1).pow(2).mean()
            else:
                target = loss_fn(out, qy)
            target.backward()

    return step


def _count_flops(fn: Callable[[], None]) -> int | None:
    """Matrix-product and convolution FLOPs of one call of ``fn`` (eager), or ``None``."""
    from torch.utils.flop_counter import FlopCounterMode

    try:
        with FlopCounterMode(display=False) as counter:
            fn()
    except Exception:  # a kernel the counter cannot trace: no count, not a failed benchmark
        return None
    return int(counter.get_total_flops()) or None


def _grads(model: nn.Module) -> list[Tensor | None]:
    return [None if p.grad is None else p.grad.detach().clone() for p in model.parameters()]


def _rel_diff(grads: list[Tensor | None], ref: list[Tensor | None]) -> float | None:
    pairs = [(g, r) for g, r in zip(grads, ref) if r is not None]
    if not pairs or any(g is None for g, _ in pairs) or len(grads) != len(ref):
        return None
    scale = max(float(r.abs().max()) for _, r in pairs) or 1.0
    return max(float((g.float() - r.float()).abs().max()) for g, r in pairs) / scale


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


@contextlib.contextmanager
def _maybe_threads(threads: int | None) -> Iterator[None]:
    with num_threads(threads):
        yield


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


def format_table(result: dict[str, Any]) -> str:
    """Plain-text tables (one per case) of a ``run_benchmark`` result (or of a
    ``run_sampler_benchmark`` result: ``metaloop.bench.sampler.format_sampler_table``)."""
    if result.get("workload") == SAMPLER:
        return format_sampler_table(result)
    lines = [
        f"{result['workload']}: {result['description']}",
        f"device {result['device']}, torch {result['torch']}, {result['threads']} threads, "
        f"{result['repeats']} repeats (median), load avg " + load_text(result),
    ]
    header = (
        f"{'engine':<42}{'tasks/s':>10}{'ms/step':>10}{'x plain':>9}{'x floor':>9}"
        f"{'peak MB':>10}{'grad diff':>11}{'1st step s':>11}{'tasks/cpu-s':>12}"
        f"{'x plain cpu':>12}"
    )
    for case in result["cases"]:
        floor = case["floor"]
        lines += [
            "",
            f"[{case['case']}] meta-batch {case['meta_batch']}; floor (query fwd+bwd only"
            + (f", {floor['layout'].replace('_', ' ')}" if floor.get("layout") else "")
            + f"): {floor['seconds'] * 1e3:.2f} ms = {floor['tasks_per_s']:.1f} tasks/s"
            + (
                f" ({case['meta_batch'] / floor['cpu_seconds']:.1f} tasks/cpu-s)"
                if floor.get("cpu_seconds")
                else ""
            ),
        ]
        counted = case.get("flops") or {}
        if counted.get("x_floor"):
            lines.append(
                f"work (matmul/conv FLOPs): floor {counted['floor'] / 1e6:,.1f} M, plain "
                f"meta-step {counted['plain'] / 1e6:,.1f} M = {counted['x_floor']:.2f}x the floor"
            )
        lines += [header, "-" * len(header)]
        for e in case["engines"]:
            if e["error"]:
                lines.append(f"{e['engine']:<42}failed: {e['error'][:120]}")
                continue
            mem = e["peak_memory_bytes"]
            lines.append(
                f"{e['engine']:<42}{fmt(e['tasks_per_s'], '.1f'):>10}"
                f"{fmt(e['seconds'] and e['seconds'] * 1e3, '.2f'):>10}"
                f"{fmt(e['ratio_to_plain'], '.2f'):>9}{fmt(e['x_floor'], '.2f'):>9}"
                f"{fmt(mem and mem / 2**20, '.1f'):>10}{fmt(e['grad_rel_diff'], '.1e'):>11}"
                f"{fmt(e['first_step_seconds'], '.2f'):>11}"
                f"{fmt(e.get('tasks_per_cpu_s'), '.1f'):>12}"
                f"{fmt(e.get('ratio_to_plain_cpu'), '.2f'):>12}"
            )
    return "\n".join(lines)
