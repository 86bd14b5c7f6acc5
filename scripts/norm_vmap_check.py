"""Second-order MAML meta-gradients through normalisation layers: vmap vs loop vs
float64 central differences (docs/performance.md, "Known numerical issues").

    OMP_NUM_THREADS=1 .venv/bin/python scripts/norm_vmap_check.py            # after the fix
    OMP_NUM_THREADS=1 .venv/bin/python scripts/norm_vmap_check.py --no-guard # nn.LayerNorm
                                                 # without the engine's remat guard (before)
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

import metaloop.functional.executor as executor
from metaloop.algorithms.maml import MAML
from metaloop.models.conv import Conv4
from metaloop.models.resnet import ResNet12
from metaloop.tasks.base import TaskBatch


@torch.no_grad()
def central_differences(fn, params, eps: float = 1e-6) -> torch.Tensor:
    """``(fn(p + eps e_i) - fn(p - eps e_i)) / (2 eps)`` for every coordinate ``i``."""
    out = []
    for p in params:
        flat = p.view(-1)
        for i in range(flat.numel()):
            orig = flat[i].item()
            flat[i] = orig + eps
            plus = float(fn())
            flat[i] = orig - eps
            minus = float(fn())
            flat[i] = orig
            out.append((plus - minus) / (2 * eps))
    return torch.tensor(out, dtype=torch.float64)


def task_batch(feature: tuple[int, ...], tasks: int = 2, ways: int = 2) -> TaskBatch:
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(ways).repeat_interleave(2).expand(tasks, -1).contiguous()
    x = torch.randn(2, tasks, 2 * ways, *feature, generator=g, dtype=torch.float64)
    return TaskBatch(x[0], labels, x[1], labels.clone(), ways)


def learner(model: nn.Module, mode: str) -> MAML:
    return MAML(model, inner_lr=0.3, inner_steps=2, vectorize=mode, loss="cross_entropy")


def check(name: str, model: nn.Module, batch: TaskBatch) -> None:
    model = model.double()
    params = list(model.parameters())
    grads = {}
    for mode in ("vmap", "loop"):
        try:
            loss = learner(model, mode).meta_loss(batch)[0]
            grads[mode] = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)])
        except RuntimeError as err:
            print(f"{name}: {mode} refused ({str(err).splitlines()[0][:70]})")
    loop = learner(model, "loop")
    numeric = central_differences(lambda: loop.meta_loss(batch)[0], params)

    def rel(mode: str, ref: torch.Tensor) -> str:
        if mode not in grads:
            return "   -    "
        return f"{float((grads[mode] - ref).norm() / ref.norm()):.1e}"

    print(
        f"{name:34s} vmap-vs-loop {rel('vmap', grads['loop'])}  "
        f"loop-vs-fd {rel('loop', numeric)}  vmap-vs-fd {rel('vmap', numeric)}",
        flush=True,
    )


def mlp(norm: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), norm, nn.Tanh(), nn.Linear(6, 2))
    if getattr(norm, "weight", None) is not None:
        with torch.no_grad():
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.5, 0.5)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-guard", action="store_true", help="disable the layer-norm guard")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.no_guard:
        executor.vmap_layer_norm_hazard = lambda model: False
    vec = task_batch((5,))
    check("MLP + nn.LayerNorm(6)", mlp(nn.LayerNorm(6)), vec)
    check("MLP + nn.LayerNorm(6, no affine)", mlp(nn.LayerNorm(6, elementwise_affine=False)), vec)
    for groups in (1, 2, 6):
        check(f"MLP + nn.GroupNorm({groups}, 6)", mlp(nn.GroupNorm(groups, 6)), vec)
    img = task_batch((1, 8, 8))
    policies = ["batch_episode", "batch_running", "batch_per_step", "layer", "instance", "group"]
    for arch in ("Conv4", "ResNet12"):
        for policy in policies + (["none"] if arch == "Conv4" else []):
            kw = {"group": {"groups": 2}, "batch_per_step": {"steps": 3}}.get(policy, {})
            torch.manual_seed(0)
            if arch == "Conv4":
                model = Conv4(1, ways=2, hidden=4, image_size=8, norm=policy, blocks=2, **kw)
            else:
                model = ResNet12(1, ways=2, widths=(2, 4), image_size=8, norm=policy, **kw)
            check(f"{arch} {policy}", model, img)


if __name__ == "__main__":
    main()
