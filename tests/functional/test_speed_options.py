"""Every speed/memory option gives the meta-gradient of the default path.

float64 and a relative tolerance of 1e-6 wherever the option is exact (rematerialization,
compilation, channels-last layout, fused evaluation forward, chunking); bfloat16 autocast
is compared loosely.  Compilation uses the cheap ``eager``/``aot_eager`` backends
(dynamo capture of the functorch program, the attach-gradient path and the fallback are
what is tested); one inductor test is marked ``slow``.
"""

from __future__ import annotations

import platform
import subprocess
import sys
import warnings

import pytest
import torch
from torch import nn

from metaloop.algorithms import FOMAML, MAML, MetaSGD, Reptile
from metaloop.functional.checkpoint import remat
from metaloop.functional.speed import SpeedOptions, retain_freed_memory, uses_batch_statistics
from metaloop.models import MLP
from metaloop.tasks import Sinusoid
from metaloop.tasks.base import TaskBatch

torch.set_num_threads(1)

DT = torch.float64
RTOL = 1e-6


@pytest.fixture(autouse=True)
def _float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(DT)
    yield
    torch.set_default_dtype(old)


def sine_batch(tasks: int = 4, shots: int = 5, seed: int = 0) -> TaskBatch:
    return Sinusoid(shots, shots, dtype=DT).sample(tasks, torch.Generator().manual_seed(seed))


def image_batch(
    tasks: int = 3,
    ways: int = 3,
    shots: int = 1,
    queries: int = 2,
    size: int = 16,
    channels: int = 1,
    seed: int = 0,
) -> TaskBatch:
    g = torch.Generator().manual_seed(seed)
    sx = torch.randn(tasks, ways * shots, channels, size, size, generator=g, dtype=DT)
    qx = torch.randn(tasks, ways * queries, channels, size, size, generator=g, dtype=DT)
    sy = torch.arange(ways).repeat_interleave(shots).expand(tasks, -1).contiguous()
    qy = torch.arange(ways).repeat_interleave(queries).expand(tasks, -1).contiguous()
    return TaskBatch(sx, sy, qx, qy, ways=ways)


def meta_grad(cls, make_model, batch, **kwargs) -> tuple[torch.Tensor, nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    learner = cls(make_model(), **kwargs)
    loss, _ = learner.meta_loss(batch)
    loss.backward()
    flat = torch.cat([p.grad.reshape(-1) for p in learner.parameters()])
    return flat, learner, loss


def mlp() -> nn.Module:
    return MLP(1, 1, hidden=(8, 8))


def tiny_conv() -> nn.Module:
    from metaloop.models import Conv4

    return Conv4(1, 3, hidden=4, image_size=16, norm="batch_episode")


def assert_close(a: torch.Tensor, b: torch.Tensor, rtol: float = RTOL) -> None:
    rel = float((a - b).abs().max() / b.abs().max())
    assert rel <= rtol, f"relative difference {rel:.3e} > {rtol:.0e}"


# -- remat -------------------------------------------------------------------------------
def test_remat_gradient_matches_plain_call_under_loop_and_vmap():
    w = torch.randn(3, 3, requires_grad=True)
    lr = torch.tensor(0.1, requires_grad=True)
    xs = torch.randn(4, 5, 3)

    def step(state, x):
        p, t = state["p"], state["t"]
        inner = torch.func.grad(lambda q: (torch.tanh(x @ q) ** 2).sum())(p)
        return {"p": p - lr * inner, "t": t + 1}  # an int leaf passes through

    def run(use_remat: bool, vectorized: bool) -> list[torch.Tensor]:
        def per_task(x):
            state = {"p": w, "t": 0}
            for _ in range(3):
                state = remat(step, state, x) if use_remat else step(state, x)
            assert state["t"] == 3
            return (torch.sin(x @ state["p"]) ** 2).sum()

        if vectorized:
            total = torch.func.vmap(per_task)(xs).sum()
        else:
            total = sum(per_task(x) for x in xs)
        return list(torch.autograd.grad(total, (w,)))

    # lr is captured by closure: with remat it gets no gradient by contract, so only w is
    # compared here; learned rates are passed as inputs by the learner (test below)
    ref = run(False, False)
    for use_remat, vectorized in ((True, False), (True, True), (False, True)):
        got = run(use_remat, vectorized)
        assert_close(got[0], ref[0])


# -- checkpoint ---------------------------------------------------------------------------
@pytest.mark.parametrize("vectorize", ["vmap", "loop"])
@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "adam"])
def test_checkpoint_matches_default_second_order(vectorize, optimizer):
    batch = sine_batch()
    kw = dict(inner_lr=0.05, inner_steps=3, vectorize=vectorize, inner_optimizer=optimizer)
    ref, _, ref_loss = meta_grad(MAML, mlp, batch, **kw)
    got, learner, loss = meta_grad(MAML, mlp, batch, checkpoint=True, **kw)
    assert_close(got, ref)
    assert float(loss) == pytest.approx(float(ref_loss), rel=1e-12)
    assert "checkpoint" in repr(learner)


def test_checkpoint_passes_meta_gradient_to_learned_rates_and_fixed_layers():
    batch = sine_batch()
    kw = dict(inner_lr=0.05, inner_steps=2, vectorize="vmap", adapt="layers.4")
    ref, _, _ = meta_grad(MetaSGD, mlp, batch, **kw)
    got, learner, _ = meta_grad(MetaSGD, mlp, batch, checkpoint=True, **kw)
    assert_close(got, ref)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in learner.lrs.values())


def test_checkpoint_matches_default_on_conv_with_batch_norm():
    batch = image_batch()
    kw = dict(inner_lr=0.1, inner_steps=2, loss="cross_entropy")
    ref, _, _ = meta_grad(MAML, tiny_conv, batch, vectorize="loop", **kw)
    for vectorize in ("vmap", "loop"):
        got, _, _ = meta_grad(MAML, tiny_conv, batch, checkpoint=True, vectorize=vectorize, **kw)
        assert_close(got, ref)


def test_vmap_second_order_through_batch_norm_matches_loop():
    """The engine's guard against the PyTorch vmap/batch-norm bug (see next test)."""
    batch = image_batch()
    for norm, extra in (("batch_episode", {}), ("batch_per_step", {"steps": 3})):

        def make(norm=norm, extra=extra):
            from metaloop.models import Conv4

            return Conv4(1, 3, hidden=4, image_size=16, norm=norm, **extra)

        kw = dict(inner_lr=0.1, inner_steps=2, loss="cross_entropy")
        ref, _, _ = meta_grad(MAML, make, batch, vectorize="loop", **kw)
        got, _, _ = meta_grad(MAML, make, batch, vectorize="vmap", **kw)
        assert_close(got, ref)


@pytest.mark.xfail(
    reason="PyTorch: vmapped double backward through batch norm with a batched "
    "affine weight is wrong (functorch issue 534); the engine routes around it",
    strict=False,
)
def test_pytorch_vmap_double_backward_through_batch_norm_raw():
    import torch.nn.functional as F
    from torch.func import grad, vmap

    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 2, 4, 4, generator=g)
    p0 = {
        "cw": torch.randn(2, 2, 3, 3, generator=g),
        "w": torch.randn(2, generator=g),
        "b": torch.randn(2, generator=g),
    }

    def task(cw, xi):
        def model(p):
            h = F.conv2d(xi, p["cw"], padding=1)
            return F.batch_norm(h, None, None, p["w"], p["b"], training=True)

        p = {**p0, "cw": cw}
        inner = grad(lambda q: (model(q) ** 3).sum())(p)
        return (model({k: p[k] - 0.01 * inner[k] for k in p}) ** 2).sum()

    cw = p0["cw"].clone().requires_grad_(True)
    vmapped = torch.autograd.grad(vmap(lambda xi: task(cw, xi))(x).sum(), cw)[0]
    looped = torch.autograd.grad(sum(task(cw, xi) for xi in x), cw)[0]
    assert_close(vmapped, looped)


def test_checkpoint_is_a_no_op_for_first_order():
    batch = sine_batch()
    kw = dict(inner_lr=0.05, inner_steps=2, vectorize="vmap")
    ref, _, _ = meta_grad(FOMAML, mlp, batch, **kw)
    got, _, _ = meta_grad(FOMAML, mlp, batch, checkpoint=True, **kw)
    assert torch.equal(got, ref)


def test_checkpoint_refuses_models_that_update_buffers_in_place():
    def bn_mlp() -> nn.Module:
        return nn.Sequential(nn.Linear(1, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 1))

    learner = MAML(bn_mlp(), inner_lr=0.05, inner_steps=1, vectorize="loop", checkpoint=True)
    with pytest.raises(RuntimeError, match="buffers in place"):
        learner.meta_loss(sine_batch())


# -- compile ------------------------------------------------------------------------------
def _no_fallback(learner) -> None:
    assert not learner.speed._failed, learner.speed._failed


@pytest.mark.parametrize("cls", [MetaSGD, FOMAML])
def test_compile_matches_default(cls):
    batch = sine_batch()
    kw = dict(inner_lr=0.05, inner_steps=2, vectorize="vmap")
    ref, _, ref_loss = meta_grad(cls, mlp, batch, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no silent fallback to eager
        got, learner, loss = meta_grad(cls, mlp, batch, compile={"backend": "eager"}, **kw)
    _no_fallback(learner)
    assert "AttachGradient" in type(loss.grad_fn).__name__  # the compiled meta-gradient path
    assert_close(got, ref)
    assert float(loss) == pytest.approx(float(ref_loss), rel=1e-12)
    # a second step (cached compiled function) after changing the parameters still agrees
    with torch.no_grad():
        for p in learner.parameters():
            p.add_(0.01)
    learner.zero_grad()
    loss2, metrics = learner.meta_loss(batch)
    loss2.backward()
    torch.manual_seed(0)
    twin = cls(mlp(), **kw)
    twin.load_state_dict(learner.state_dict())
    ref2, ref_metrics = twin.meta_loss(batch)
    ref2.backward()
    assert_close(
        torch.cat([p.grad.reshape(-1) for p in learner.parameters()]),
        torch.cat([p.grad.reshape(-1) for p in twin.parameters()]),
    )
    assert metrics.keys() == ref_metrics.keys()


def test_compile_loss_scales_like_an_ordinary_loss_and_respects_frozen_parameters():
    batch = sine_batch()
    torch.manual_seed(0)
    learner = MAML(mlp(), inner_lr=0.05, inner_steps=1, compile={"backend": "eager"})
    learner.model.layers[0].weight.requires_grad_(False)
    loss, _ = learner.meta_loss(batch)
    (3.0 * loss).backward()
    _no_fallback(learner)
    torch.manual_seed(0)
    ref = MAML(mlp(), inner_lr=0.05, inner_steps=1)
    ref.model.layers[0].weight.requires_grad_(False)
    ref_loss, _ = ref.meta_loss(batch)
    (3.0 * ref_loss).backward()
    assert learner.model.layers[0].weight.grad is None
    for p, q in zip(learner.parameters(), ref.parameters()):
        if q.grad is not None:
            assert_close(p.grad, q.grad)


def test_compile_falls_back_to_eager_with_a_warning():
    def broken_backend(gm, example_inputs):
        raise RuntimeError("this backend always fails")

    batch = sine_batch()
    kw = dict(inner_lr=0.05, inner_steps=1, vectorize="vmap")
    ref, _, _ = meta_grad(MAML, mlp, batch, **kw)
    with pytest.warns(RuntimeWarning, match="running eagerly"):
        got, learner, _ = meta_grad(MAML, mlp, batch, compile={"backend": broken_backend}, **kw)
    assert learner.speed._failed
    assert_close(got, ref)


def test_compile_of_query_losses_through_aot_autograd():
    batch = sine_batch()
    torch.manual_seed(0)
    learner = MAML(mlp(), inner_lr=0.05, inner_steps=2, compile={"backend": "aot_eager"})
    losses, _ = learner.query_loss_per_task(batch, "second_order")
    losses.mean().backward()
    _no_fallback(learner)
    ref, _, _ = meta_grad(MAML, mlp, batch, inner_lr=0.05, inner_steps=2)
    assert_close(torch.cat([p.grad.reshape(-1) for p in learner.parameters()]), ref)


def test_compile_is_skipped_with_a_warning_for_vmapped_batch_norm():
    batch = image_batch()
    kw = dict(inner_lr=0.1, inner_steps=1, loss="cross_entropy", vectorize="vmap")
    ref, _, _ = meta_grad(MAML, tiny_conv, batch, **kw)
    with pytest.warns(RuntimeWarning, match="batch norm"):
        got, _, _ = meta_grad(MAML, tiny_conv, batch, compile={"backend": "eager"}, **kw)
    assert_close(got, ref)


@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("channels_last", [False, True])
def test_compile_per_task_under_the_loop_policy_matches_default(first_order, channels_last):
    """With tasks run one at a time, ``compile`` compiles one task's meta-gradient (one
    graph, reused for every task) and averages: the same gradient as the eager loop."""
    batch = image_batch(tasks=3)
    kw = dict(
        inner_lr=0.1,
        inner_steps=2,
        loss="cross_entropy",
        vectorize="loop",
        first_order=first_order,
        channels_last=channels_last,
    )
    ref, _, ref_loss = meta_grad(MAML, tiny_conv, batch, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        got, learner, loss = meta_grad(MAML, tiny_conv, batch, compile={"backend": "eager"}, **kw)
    _no_fallback(learner)
    assert "AttachGradient" in type(loss.grad_fn).__name__
    assert set(learner.speed.compiled_keys(learner)) == {
        f"meta_grad/task/{'first_order' if first_order else 'second_order'}"
    }
    assert_close(got, ref)
    assert float(loss) == pytest.approx(float(ref_loss), rel=1e-12)


@pytest.mark.slow
def test_compile_with_inductor_matches_default_in_float32():
    torch.set_default_dtype(torch.float32)
    batch = Sinusoid(10, 10).sample(25, torch.Generator().manual_seed(0))
    kw = dict(inner_lr=0.01, inner_steps=1, vectorize="vmap")
    ref, _, _ = meta_grad(MAML, lambda: MLP(1, 1, hidden=(40, 40)), batch, **kw)
    got, learner, _ = meta_grad(MAML, lambda: MLP(1, 1, hidden=(40, 40)), batch, compile=True, **kw)
    _no_fallback(learner)
    assert_close(got, ref, rtol=1e-5)


# -- layout, precision, fused evaluation, chunks ------------------------------------------
@pytest.mark.parametrize("vectorize", ["vmap", "loop"])
def test_channels_last_matches_default(vectorize):
    batch = image_batch()
    kw = dict(inner_lr=0.1, inner_steps=1, loss="cross_entropy", vectorize=vectorize)
    ref, _, _ = meta_grad(MAML, tiny_conv, batch, **kw)
    got, _, _ = meta_grad(MAML, tiny_conv, batch, channels_last=True, **kw)
    assert_close(got, ref)


def test_channels_last_lays_out_the_query_pass_only():
    """Query images (one channel: ambiguous strides) and adapted weights reach the
    convolutions channels-last; the support pass keeps the default layout."""
    batch = image_batch(tasks=2, ways=3, shots=1, queries=2)
    model = tiny_conv()
    seen: list[tuple[int, bool, bool]] = []
    conv = model.features[1].conv

    def record(module, args):
        x = args[0]
        cl = torch.channels_last
        seen.append(
            (
                x.shape[0],
                x.is_contiguous(memory_format=cl) and x.stride(1) == 1,
                module.weight.stride(1) == 1,
            )
        )

    conv.register_forward_pre_hook(record)
    learner = MAML(
        model,
        inner_lr=0.1,
        inner_steps=1,
        loss="cross_entropy",
        vectorize="loop",
        channels_last=True,
    )
    learner.meta_loss(batch)
    support = [s for s in seen if s[0] == 3]
    query = [s for s in seen if s[0] == 6]
    assert support and all(not cl for _, cl, _ in support)
    assert query and all(cl and w for _, cl, w in query)


@pytest.mark.parametrize(
    "make, batch_fn, loss, vectorize",
    [
        (lambda: MLP(1, 1, hidden=(16, 16)), lambda: sine_batch(), "mse", "vmap"),
        (tiny_conv, lambda: image_batch(tasks=2), "cross_entropy", "loop"),
    ],
)
def test_bfloat16_autocast_is_close_to_float32(make, batch_fn, loss, vectorize):
    torch.set_default_dtype(torch.float32)
    b = batch_fn()
    batch = TaskBatch(
        b.support_x.float(),
        b.support_y.float() if loss == "mse" else b.support_y,
        b.query_x.float(),
        b.query_y.float() if loss == "mse" else b.query_y,
        ways=b.ways,
    )
    kw = dict(inner_lr=0.05, inner_steps=1, loss=loss, vectorize=vectorize)
    ref, _, _ = meta_grad(MAML, make, batch, **kw)
    got, learner, _ = meta_grad(MAML, make, batch, autocast="bfloat16", **kw)
    assert all(p.grad.dtype == torch.float32 for p in learner.parameters())
    cosine = float(torch.nn.functional.cosine_similarity(got, ref, dim=0))
    assert not torch.equal(got, ref)  # bf16 ran
    assert cosine > 0.98, cosine  # but the meta-gradient points the same way


def test_bfloat16_autocast_with_vmapped_batch_norm_is_refused_clearly():
    learner = MAML(
        tiny_conv(), inner_lr=0.05, loss="cross_entropy", vectorize="vmap", autocast="bfloat16"
    )
    with pytest.raises(ValueError, match="vectorize='loop'"):
        learner.meta_loss(image_batch(tasks=2))


@pytest.mark.parametrize("vectorize", ["vmap", "loop"])
def test_fused_evaluation_forward_matches_default(vectorize):
    batch = sine_batch(tasks=3)
    torch.manual_seed(0)
    model = mlp()
    plain = MAML(model, inner_lr=0.05, inner_steps=1, vectorize=vectorize)
    fused = MAML(model, inner_lr=0.05, inner_steps=1, vectorize=vectorize, fuse_forward=True)
    for steps in ((0, 1, 3), (2,), (0,)):
        ref = plain.evaluate_batch(batch, steps)
        got = fused.evaluate_batch(batch, steps)
        assert ref.keys() == got.keys()
        for s in ref:
            assert_close(got[s]["loss"], ref[s]["loss"])


def test_fuse_auto_detects_batch_statistics():
    assert not uses_batch_statistics(mlp())
    conv = tiny_conv()
    assert uses_batch_statistics(conv)
    assert SpeedOptions(fuse_forward="auto").fuse_for(mlp())
    assert not SpeedOptions(fuse_forward="auto").fuse_for(conv)


def test_chunk_size_matches_default_with_checkpoint():
    batch = sine_batch(tasks=5)
    kw = dict(inner_lr=0.05, inner_steps=2, vectorize="vmap")
    ref, _, _ = meta_grad(MAML, mlp, batch, **kw)
    got, _, _ = meta_grad(MAML, mlp, batch, chunk_size=2, checkpoint=True, **kw)
    assert_close(got, ref)


def test_reptile_accepts_the_options_unchanged():
    batch = sine_batch()
    kw = dict(inner_lr=0.05, inner_steps=2, vectorize="vmap")
    ref, _, _ = meta_grad(Reptile, mlp, batch, **kw)
    got, _, _ = meta_grad(Reptile, mlp, batch, checkpoint=True, **kw)
    assert torch.equal(got, ref)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"autocast": "int8"}, "autocast"),
        ({"autocast": torch.float32}, "autocast"),
        ({"fuse_forward": "sometimes"}, "fuse_forward"),
        ({"compile": "yes"}, "compile"),
    ],
)
def test_invalid_options_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MAML(mlp(), inner_lr=0.05, **kwargs)


def test_reptile_compiles_to_the_same_direction():
    batch = sine_batch()
    kw = dict(inner_lr=0.05, inner_steps=2, vectorize="vmap")
    ref, _, _ = meta_grad(Reptile, mlp, batch, **kw)
    got, learner, _ = meta_grad(Reptile, mlp, batch, compile={"backend": "aot_eager"}, **kw)
    _no_fallback(learner)
    assert_close(got, ref)


_ALLOCATION_PROBE = """
import resource, sys, torch
from metaloop.functional.speed import retain_freed_memory, retained_memory_threshold
if sys.argv[1] == "retain":
    assert retain_freed_memory(1 << 28) and retained_memory_threshold() == 1 << 28
else:
    assert retained_memory_threshold() is None
x = torch.ones(16 << 20); del x
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    x = torch.ones(16 << 20); del x  # 64 MB, above glibc's default mmap threshold
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="mallopt is glibc's",
)
def test_retain_freed_memory_reuses_large_blocks_instead_of_faulting_them_in():
    """Page faults of five 64 MB allocations: glibc's default unmaps each on free and the
    next one faults in all its pages again; with the retained threshold they are reused."""

    def faults(mode):
        out = subprocess.run(
            [sys.executable, "-c", _ALLOCATION_PROBE, mode],
            capture_output=True,
            text=True,
            check=True,
        )
        return int(out.stdout.strip())

    system, retained = faults("system"), faults("retain")
    assert system > 5 * 8000  # 64 MB = 16,384 4-KiB pages per allocation
    assert retained < system / 2
    with pytest.raises(ValueError, match="threshold_bytes"):
        retain_freed_memory(0)
