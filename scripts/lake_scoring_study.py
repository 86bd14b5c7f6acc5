"""Inductive scoring rules on a trained ProtoNet's within-alphabet embeddings.

Embeds the evaluation episodes of ``metaloop eval RUN --protocol within-alphabet``
(20-way 1-shot, one query per class, seed 12345), each image as itself and as ``views - 1``
random affine distortions (Koch et al.'s ranges, every component applied), then scores
the queries with rules that use nothing but the episode's support set and the query at
hand (no other query: all inductive):

* squared Euclidean and cosine to the prototypes (ProtoNet's own rule, and its variant);
* hubness corrections from the support set: CSLS-style ``d(q, c) - a * r_k(c)``, with
  ``r_k(c)`` the mean distance from prototype ``c`` to its ``k`` nearest other prototypes,
  and local scaling ``d(q, c) / r_k(c)``;
* test-time augmentation: prototypes (and queries) averaged over affine views;
* alignment: the query's distance to a prototype as the minimum (or a soft minimum) over
  the query's views, ``min_v ||f(T_v q) - f(c)||^2``, or over pairs of views of both
  images, instead of the distance of the averaged embeddings;
* an episode-specific Mahalanobis metric from the within-class scatter of the support
  views (shrunk towards the identity by ``lambda`` times the mean variance);
* a logistic-regression head fitted on the support views, started from the prototype
  head ``(2 c_k, -||c_k||^2)``.

    python scripts/lake_scoring_study.py runs/pn-c12-bf-s12 --episodes 300 --views 16
    python scripts/lake_scoring_study.py runs/pn-c12-bf-s12 --episodes 300 --shift 2

``--shift s`` replaces the random affine views by the ``(2s + 1)^2`` translations of
``metaloop eval --tta-shift s``.

Results: docs/results.md, "Inductive scoring rules".
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from metaloop.algorithms.metric import cosine_similarity, squared_euclidean
from metaloop.cli.build import build_within_alphabet
from metaloop.cli.runs import load_run
from metaloop.data.transforms import RandomAffine, shift_views, translate
from metaloop.evaluation.evaluate import evaluation_batches


def embed_views(
    run: str, episodes: int, views: int, seed: int, shift: int = 0
) -> dict[str, torch.Tensor]:
    """``zs, zq [T, ways, views, D]`` (view 0: the image itself) and labels ``ys, yq``;
    ``shift > 0``: the views are every translation by up to ``shift`` pixels."""
    cfg, learner, _ = load_run(run, "latest")
    family = build_within_alphabet(cfg, ways=20, shots=1, queries=1, part="test")
    distort = RandomAffine(p=1.0)
    g = torch.Generator().manual_seed(seed)
    offsets = shift_views(shift)[1:] if shift else [None] * (views - 1)

    def view(x: torch.Tensor, offset: tuple[int, int] | None) -> torch.Tensor:
        return distort(x, g) if offset is None else translate(x, *offset)

    zs, zq, ys, yq = [], [], [], []
    with torch.no_grad():
        for batch in evaluation_batches(learner, family, episodes, 12345, 25):
            for sx, qx in zip(batch.support_x, batch.query_x):
                x = torch.cat([sx, qx])  # one episode: batch statistics of its own images
                z = [learner.encoder(x)] + [learner.encoder(view(x, o)) for o in offsets]
                z = torch.stack(z, 1).double()
                zs.append(z[: len(sx)])
                zq.append(z[len(sx) :])
            ys.append(batch.support_y)
            yq.append(batch.query_y)
    ys_, yq_ = torch.cat(ys), torch.cat(yq)
    order = ys_.argsort(-1)  # support rows in label order, one per class (1-shot)
    zs_ = torch.stack([z[o] for z, o in zip(zs, order)])
    return {"zs": zs_, "zq": torch.stack(zq), "yq": yq_}


def error(scores: torch.Tensor, yq: torch.Tensor) -> float:
    return 100 * float((scores.argmax(-1) != yq).double().mean())


def study(zs: torch.Tensor, zq: torch.Tensor, yq: torch.Tensor) -> dict[str, float]:
    tasks, ways, views, dim = zs.shape
    out: dict[str, float] = {}
    p, q = zs[:, :, 0], zq[:, :, 0]
    d = squared_euclidean(q, p)
    out["squared Euclidean"] = error(-d, yq)
    out["cosine"] = error(cosine_similarity(q, p), yq)
    between = squared_euclidean(p, p).masked_fill(torch.eye(ways, dtype=torch.bool), float("inf"))
    for k in (1, 3, 5, 10):
        r = between.topk(k, -1, largest=False).values.mean(-1).unsqueeze(1)
        for a in (0.25, 0.5, 1.0):
            out[f"CSLS from the support, k={k}, a={a}"] = error(-(d - a * r), yq)
        out[f"local scaling, k={k}"] = error(-(d / r), yq)
    for v in sorted({min(4, views), min(8, views), views}):
        pv, qv = zs[:, :, :v].mean(2), zq[:, :, :v].mean(2)
        out[f"{v} views averaged, support and query"] = error(-squared_euclidean(qv, pv), yq)
        out[f"{v} views averaged, support only"] = error(-squared_euclidean(q, pv), yq)
    # alignment: d[t, query, class, query view, support view]
    pairs = torch.stack(
        [
            torch.stack([squared_euclidean(zq[:, :, i], zs[:, :, j]) for j in range(views)], -1)
            for i in range(views)
        ],
        -2,
    )
    out["min over query views"] = error(-pairs[..., 0].amin(-1), yq)
    out["min over pairs of views"] = error(-pairs.flatten(-2).amin(-1), yq)
    out["mean over pairs of views"] = error(-pairs.flatten(-2).mean(-1), yq)
    scale = d.mean((-1, -2), keepdim=True)  # the episode's typical distance
    for tau in (0.01, 0.03, 0.1):
        soft = -tau * scale * torch.logsumexp(-pairs.flatten(-2) / (tau * scale.unsqueeze(-1)), -1)
        out[f"soft min over pairs, tau={tau}"] = error(-soft, yq)
    pv, qv = zs.mean(2), zq.mean(2)
    residual = (zs - pv.unsqueeze(2)).reshape(tasks, ways * views, dim)
    scatter = residual.transpose(1, 2) @ residual / (ways * views)
    scale = scatter.diagonal(dim1=1, dim2=2).mean(-1)[:, None, None]
    for lam in (0.1, 0.3, 1.0, 3.0):
        root = torch.linalg.cholesky(
            torch.linalg.inv(scatter + lam * scale * torch.eye(dim, dtype=zs.dtype))
        )
        out[f"Mahalanobis from support views, lambda={lam}"] = error(
            -squared_euclidean(qv @ root, pv @ root), yq
        )
    for lr in (0.01, 0.1):
        weight = (2 * pv).clone().requires_grad_(True)
        bias = (-(pv * pv).sum(-1)).clone().requires_grad_(True)
        x = zs.reshape(tasks, ways * views, dim)
        y = torch.arange(ways).repeat_interleave(views).expand(tasks, -1)
        opt = torch.optim.SGD([weight, bias], lr=lr)
        for _ in range(100):
            logits = x @ weight.transpose(1, 2) + bias.unsqueeze(1)
            loss = F.cross_entropy(logits.reshape(-1, ways), y.reshape(-1))
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            scores = qv @ weight.transpose(1, 2) + bias.unsqueeze(1)
        out[f"logistic head on support views, lr={lr}, 100 steps"] = error(scores, yq)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run")
    parser.add_argument("--episodes", type=int, default=300)
    parser.add_argument("--views", type=int, default=16)
    parser.add_argument("--seed", type=int, default=7, help="seed of the affine distortions")
    parser.add_argument("--shift", type=int, default=0, help="translation views instead")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.shift:
        args.views = (2 * args.shift + 1) ** 2
    data = embed_views(args.run, args.episodes, args.views, args.seed, args.shift)
    for name, value in study(data["zs"], data["zq"], data["yq"]).items():
        print(f"{value:6.2f}%  {name}")
    print(f"({args.episodes} episodes of 20-way 1-shot, {args.views} views per image)")


if __name__ == "__main__":
    main()
