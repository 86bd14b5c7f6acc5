"""The benchmark package: its plain-loop baselines against the engine (an independent check
of both), the result dict, the table, the workloads' shapes and the memory probe.
Tiny repeats only."""

from __future__ import annotations

import json

import pytest
import torch

from metaloop.algorithms import MAML
from metaloop.bench import (
    PeakMemory,
    PlainLoopMAML,
    PlainLoopProtoNet,
    format_table,
    get_workload,
    parse_engine,
    run_benchmark,
)
from metaloop.bench.__main__ import main
from metaloop.bench.workloads import WORKLOADS, classification_batch, sinusoid_batch
from metaloop.models import MLP, Conv4

torch.set_num_threads(1)


def flat_grad(module: torch.nn.Module, params) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1) for p in params])


def grads_of(engine, batch, params) -> torch.Tensor:
    loss, _ = engine.meta_loss(batch)
    loss.backward()
    return flat_grad(engine, params)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("steps", [1, 3])
def test_plain_loop_baseline_matches_engine_on_sinusoid(first_order, steps):
    batch = sinusoid_batch(4, 5, 5, torch.Generator().manual_seed(0))
    batch = type(batch)(
        *(t.double() for t in (batch.support_x, batch.support_y, batch.query_x, batch.query_y))
    )
    torch.manual_seed(0)
    model = MLP(1, 1, hidden=(16, 16)).double()
    kw = dict(inner_lr=0.05, inner_steps=steps, loss="mse", first_order=first_order)
    plain = grads_of(PlainLoopMAML(model, **kw), batch, list(model.parameters()))
    model.zero_grad()
    for vectorize in ("vmap", "loop"):
        engine = grads_of(MAML(model, vectorize=vectorize, **kw), batch, list(model.parameters()))
        model.zero_grad()
        assert rel(engine, plain) < 1e-6


@pytest.mark.parametrize("first_order", [False, True])
def test_plain_loop_baseline_matches_engine_on_conv_with_batch_norm(first_order):
    g = torch.Generator().manual_seed(0)
    b = classification_batch(3, 3, 1, 2, (1, 16, 16), g)
    batch = type(b)(b.support_x.double(), b.support_y, b.query_x.double(), b.query_y, ways=3)
    torch.manual_seed(0)
    model = Conv4(1, 3, hidden=4, image_size=16, norm="batch_episode").double()
    kw = dict(inner_lr=0.1, inner_steps=2, loss="cross_entropy", first_order=first_order)
    plain = grads_of(PlainLoopMAML(model, **kw), batch, list(model.parameters()))
    model.zero_grad()
    engine = grads_of(MAML(model, vectorize="vmap", **kw), batch, list(model.parameters()))
    assert rel(engine, plain) < 1e-6


def test_plain_loop_protonet_matches_protonet():
    from metaloop.algorithms.protonet import ProtoNet

    g = torch.Generator().manual_seed(0)
    b = classification_batch(1, 4, 2, 3, (1, 16, 16), g)
    batch = type(b)(b.support_x.double(), b.support_y, b.query_x.double(), b.query_y, ways=4)
    torch.manual_seed(0)
    encoder = Conv4(1, None, hidden=4, image_size=16, norm="batch_episode").double()
    plain = grads_of(PlainLoopProtoNet(encoder), batch, list(encoder.parameters()))
    encoder.zero_grad()
    proto = grads_of(ProtoNet(encoder), batch, list(encoder.parameters()))
    assert rel(proto, plain) < 1e-6


def test_run_benchmark_result_fields_and_gradient_agreement():
    result = run_benchmark("sinusoid", repeats=2, warmup=1, engines=["plain", "vmap", "loop"])
    json.dumps(result)  # serialisable
    for key in (
        "workload",
        "device",
        "torch",
        "threads",
        "load_avg_start",
        "repeats",
        "memory_method",
        "libraries",
        "cases",
        "total_seconds",
    ):
        assert key in result
    (case,) = result["cases"]
    assert case["meta_batch"] == 25 and case["floor"]["seconds"] > 0
    names = [e["engine"] for e in case["engines"]]
    assert names == ["plain", "vmap", "loop"]
    for e in case["engines"]:
        assert e["error"] is None, e["error"]
        assert e["tasks_per_s"] > 0 and len(e["seconds_all"]) == 2
        assert e["ratio_to_plain"] > 0 and e["x_floor"] > 0
        assert e["peak_memory_bytes"] is None or e["peak_memory_bytes"] >= 0
    plain = case["engines"][0]
    assert plain["ratio_to_plain"] == pytest.approx(1.0)
    for e in case["engines"][1:]:
        assert e["grad_rel_diff"] < 1e-4  # float32 engine vs plain loop
    table = format_table(result)
    assert "sinusoid" in table and "vmap" in table and "x plain" in table


def test_flop_counts_match_the_closed_form_on_the_sinusoid_mlp():
    """MLP 1-40-40-1, 250 query points: forward 2N(40 + 1600 + 40) FLOPs, backward the
    weight gradients (as much again) and the input gradients of layers 2 and 3 (the
    input needs none), 2N(1600 + 40): 10,000 FLOPs per point in all."""
    result = run_benchmark("sinusoid", repeats=1, warmup=1, engines=["plain"], memory=False)
    flops = result["cases"][0]["flops"]
    assert flops["floor"] == 250 * 2 * (1680 + 1680 + 1640)
    # second order: the support pass and the query pass (2x the floor with 10 + 10 points)
    # plus the backward through the support gradient
    assert flops["x_floor"] == pytest.approx(flops["plain"] / flops["floor"])
    assert 2.0 < flops["x_floor"] < 5.0
    assert "work (matmul/conv FLOPs): floor 2.5 M" in format_table(result)


def test_failing_engine_is_reported_not_raised():
    result = run_benchmark(
        "sinusoid", repeats=1, warmup=1, engines=["plain", "nonsense"], memory=False
    )
    bad = result["cases"][0]["engines"][1]
    assert bad["engine"] == "nonsense" and "unknown engine" in bad["error"]
    assert "failed" in format_table(result)


def test_unknown_workload_and_case():
    with pytest.raises(ValueError, match="unknown workload"):
        run_benchmark("imagenet")
    with pytest.raises(ValueError, match="no case"):
        run_benchmark("sinusoid", cases=["third_order"])


def test_parse_engine():
    assert parse_engine("vmap") == ("vmap", {})
    assert parse_engine("vmap+compile+checkpoint+chunk=4") == (
        "vmap",
        {"compile": True, "checkpoint": True, "chunk_size": 4},
    )
    assert parse_engine("loop+compile=aot_eager+bf16+channels_last") == (
        "loop",
        {"compile": {"backend": "aot_eager"}, "autocast": "bfloat16", "channels_last": True},
    )
    with pytest.raises(ValueError):
        parse_engine("vmap+turbo")


def test_protonet_engines_take_channels_last_and_bf16():
    from metaloop.bench.runner import build_engine

    case = get_workload("protonet").cases[0]
    engine = build_engine("protonet+channels_last+bf16", case, case.make_model())
    assert engine.autocast_dtype == torch.bfloat16
    assert build_engine("protonet", case, case.make_model()).autocast_dtype is None
    with pytest.raises(ValueError, match="plain ProtoNet loop runs in float32"):
        build_engine("plain+bf16", case, case.make_model())
    with pytest.raises(ValueError, match=r"only \+channels_last and \+bf16"):
        build_engine("protonet+checkpoint", case, case.make_model())


@pytest.mark.parametrize("name", sorted(WORKLOADS))
def test_workload_shapes(name):
    workload = get_workload(name)
    expected = {
        "sinusoid": ((25, 10, 1), (25, 10, 1)),
        "omniglot": ((32, 5, 1, 28, 28), (32, 75, 1, 28, 28)),
        "memory": ((4, 25, 3, 84, 84), (4, 75, 3, 84, 84)),
        "protonet": ((1, 300, 1, 28, 28), (1, 300, 1, 28, 28)),
    }[name]
    for case in workload.cases:
        batch = case.make_batch(torch.Generator().manual_seed(0))
        assert (tuple(batch.support_x.shape), tuple(batch.query_x.shape)) == expected
        assert len(batch) == case.meta_batch
    labels = [c.label for c in workload.cases]
    if name == "omniglot":
        assert labels == ["second_order", "first_order"]
    if name == "memory":
        assert [c.inner_steps for c in workload.cases] == [1, 5, 10]


def test_workload_models_have_the_published_sizes():
    omniglot = get_workload("omniglot").cases[0].make_model()
    # 4 x (conv 3x3 + batch-norm affine), a 64-feature head, 5 ways
    assert sum(p.numel() for p in omniglot.parameters()) == 112_261
    memory = get_workload("memory").cases[0].make_model()
    assert memory.embedding_dim == 32 * 5 * 5
    proto = get_workload("protonet").cases[0].make_model()
    assert proto.head is None and proto.embedding_dim == 64


def test_peak_memory_probe_sees_a_large_allocation():
    probe = PeakMemory(torch.device("cpu"))
    with probe:
        block = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
        block.add_(1)
        del block
    if probe.peak is None:  # no /proc
        pytest.skip("RSS not readable on this system")
    assert probe.peak >= 48 * 2**20


def test_module_entry_point_prints_json(capsys):
    assert (
        main(
            [
                "sinusoid",
                "--repeats",
                "1",
                "--warmup",
                "1",
                "--engines",
                "plain,vmap",
                "--json",
                "--quiet",
                "--no-memory",
                "--threads",
                "1",
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert out["workload"] == "sinusoid" and out["threads"] == 1
    assert [e["engine"] for e in out["cases"][0]["engines"]] == ["plain", "vmap"]
