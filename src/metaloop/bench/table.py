"""``format_table``: the plain-text report of a ``run_benchmark`` (or sampler) result."""

from __future__ import annotations

from typing import Any

from metaloop.bench.report import fmt, load_text
from metaloop.bench.sampler import NAME as SAMPLER
from metaloop.bench.sampler import format_sampler_table


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
