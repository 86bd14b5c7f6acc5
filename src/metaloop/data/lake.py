"""Lake et al.'s one-shot classification benchmark: 20 runs of 20-way 1-shot.

Layout (``all_runs.zip`` from ``brendenlake/omniglot/python/one-shot-classification``, or
the folder it extracts to)::

    runNN/training/class01.png .. classWW.png   one image per class
    runNN/test/item01.png .. itemWW.png         the items to classify
    runNN/class_labels.txt                      one line per test item:
        runNN/test/itemXX.png runNN/training/classYY.png

``load_runs`` reads every run into a ``LakeRun`` with the same preprocessing as the
Omniglot training images (``metaloop.data.omniglot.preprocess_png``: 105x105 check,
antialiased resize, inversion); ``LakeRun.to_task`` gives a ``Task`` whose support is
the ``WW`` training images with labels ``0 .. WW-1`` (``classYY`` -> ``YY-1``) and whose
query is the test items with their true labels.  ``score_runs`` reports the error rate
per run (percent of test items misclassified) and its mean over runs, as in the paper.

The official file is not shipped with metaloop; ``make_fake_runs`` writes the same
layout from the Omniglot evaluation archive (for tests and dry runs; its numbers are
*not* comparable with published results).
"""

from __future__ import annotations

import os
import re
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from metaloop.data.dataset import to_float_images
from metaloop.data.omniglot import ARCHIVES, OmniglotError, _Source, preprocess_png
from metaloop.tasks.base import Task, TaskBatch

_LABELS = re.compile(r"^(?:(?P<prefix>.*/))?(?P<run>run\d+)/class_labels\.txt$")
_TRAIN = re.compile(r"^(?P<run>run\d+)/training/class(?P<num>\d+)\.png$")
_TEST = re.compile(r"^(?P<run>run\d+)/test/item(?P<num>\d+)\.png$")


@dataclass(frozen=True)
class LakeRun:
    """One run: ``ways`` training images (one per class) and the test items to classify.

    ``support_images [W, 1, S, S]`` in class order (``class01`` first), ``query_images
    [Q, 1, S, S]`` in item order, ``query_labels [Q]`` the true class (0-based) of each item.
    Images are ``uint8`` with strokes = 255, like the cached Omniglot images.
    """

    name: str
    support_images: Tensor
    query_images: Tensor
    query_labels: Tensor
    items: tuple[str, ...] = field(default=())

    @property
    def ways(self) -> int:
        return self.support_images.shape[0]

    def to_task(self, normalize: tuple[float, float] | None = None) -> Task:
        """The run as a ``Task`` (float images in ``[0, 1]`` or normalised like the
        training episodes, via ``to_float_images``)."""
        return Task(
            to_float_images(self.support_images, normalize),
            torch.arange(self.ways),
            to_float_images(self.query_images, normalize),
            self.query_labels.clone(),
            self.ways,
            {"run": self.name},
        )


def runs_to_batch(
    runs: Sequence[LakeRun], normalize: tuple[float, float] | None = None
) -> TaskBatch:
    """All runs as one ``TaskBatch`` (they must share their sizes)."""
    return TaskBatch.stack([r.to_task(normalize) for r in runs])


def load_runs(
    path: str | os.PathLike[str], image_size: int | None = 28, strict: bool = True
) -> list[LakeRun]:
    """Read Lake's runs from ``all_runs.zip`` or its extracted folder.

    The runs may sit at the root or under one folder (``all_runs/runNN/...``).  With
    ``strict`` the official shape is required: 20 runs of 20 classes and 20 test items.
    Raises ``OmniglotError`` naming the file and what was expected.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise OmniglotError(
            f"Lake runs not found at {path}: pass all_runs.zip (from brendenlake/omniglot, "
            "python/one-shot-classification/) or the folder holding run01/ .. run20/"
        )
    if path.is_dir():
        # _Source lists names relative to the folder's parent; work relative to the folder
        names = sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file())

        def read(name: str) -> bytes:
            return (path / name).read_bytes()
    else:
        source = _Source(path)
        names = source.names()
        read = source.read
    label_files = [(m["prefix"] or "", m["run"], n) for n in names if (m := _LABELS.match(n))]
    if not label_files:
        raise OmniglotError(
            f"{path}: no runNN/class_labels.txt found; expected the layout of all_runs.zip "
            "(runNN/training/classYY.png, runNN/test/itemXX.png, runNN/class_labels.txt)"
        )
    prefixes = {p for p, _, _ in label_files}
    if len(prefixes) > 1:
        raise OmniglotError(f"{path}: runs found under several folders {sorted(prefixes)}")
    prefix = prefixes.pop()
    members = {n[len(prefix) :] for n in names if n.startswith(prefix)}
    runs = [
        _load_run(path, run, prefix, members, read, image_size)
        for _, run, _ in sorted(label_files, key=lambda t: t[1])
    ]
    if strict:
        shapes = {(r.ways, r.query_images.shape[0]) for r in runs}
        if len(runs) != 20 or shapes != {(20, 20)}:
            raise OmniglotError(
                f"{path}: found {len(runs)} runs with (classes, test items) {sorted(shapes)}; "
                "Lake's benchmark has 20 runs of 20 classes and 20 test items "
                "(pass strict=False to load other run sets)"
            )
    return runs


def _load_run(
    path: Path,
    run: str,
    prefix: str,
    members: set[str],
    read: Callable[[str], bytes],
    image_size: int | None,
) -> LakeRun:
    where = f"{path}::{prefix}{run}"
    classes = sorted(int(m["num"]) for n in members if (m := _TRAIN.match(n)) and m["run"] == run)
    if not classes or classes != list(range(1, len(classes) + 1)):
        raise OmniglotError(
            f"{where}/training: expected class01.png .. classNN.png numbered from 1 without "
            f"gaps, found {classes[:25]}"
        )
    try:
        text = read(f"{prefix}{run}/class_labels.txt").decode("utf-8")
    except UnicodeDecodeError as err:
        raise OmniglotError(f"{where}/class_labels.txt is not a text file ({err})") from err
    items: list[tuple[int, str, int]] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        test = _TEST.match(parts[0]) if len(parts) == 2 else None
        train = _TRAIN.match(parts[1]) if len(parts) == 2 else None
        if test is None or train is None or test["run"] != run or train["run"] != run:
            raise OmniglotError(
                f"{where}/class_labels.txt line {lineno}: {line.strip()!r}; expected "
                f"'{run}/test/itemXX.png {run}/training/classYY.png'"
            )
        label = int(train["num"])
        if label not in classes:
            raise OmniglotError(
                f"{where}/class_labels.txt line {lineno}: class{train['num']}.png is not among "
                f"the {len(classes)} training images"
            )
        if parts[0] not in members:
            raise OmniglotError(f"{where}/class_labels.txt line {lineno}: {parts[0]} is missing")
        items.append((int(test["num"]), parts[0], label - 1))
    if not items:
        raise OmniglotError(f"{where}/class_labels.txt lists no test item")
    items.sort()
    if len({i for i, _, _ in items}) != len(items):
        raise OmniglotError(f"{where}/class_labels.txt lists a test item twice")
    listed = {n for _, n, _ in items}
    unlisted = sorted(
        n for n in members if (m := _TEST.match(n)) and m["run"] == run and n not in listed
    )
    if unlisted:
        raise OmniglotError(
            f"{where}: test images without a label in class_labels.txt: {unlisted[:5]}"
        )

    def decode(name: str) -> np.ndarray:
        return preprocess_png(read(prefix + name), image_size, f"{path}::{prefix}{name}")

    support = np.stack([decode(f"{run}/training/class{c:02d}.png") for c in classes])
    query = np.stack([decode(n) for _, n, _ in items])
    return LakeRun(
        run,
        torch.from_numpy(support[:, None].copy()),
        torch.from_numpy(query[:, None].copy()),
        torch.tensor([label for _, _, label in items], dtype=torch.long),
        tuple(n for _, n, _ in items),
    )


@dataclass(frozen=True)
class LakeScore:
    """Error rates (percent) per run and their mean, as reported by Lake et al."""

    errors: tuple[float, ...]
    mean_error: float

    @property
    def mean_accuracy(self) -> float:
        return 100.0 - self.mean_error

    def __str__(self) -> str:
        return f"{self.mean_error:.2f}% error over {len(self.errors)} runs"


def score_runs(
    predict_fn: Callable[[Task], Tensor | Sequence[int]],
    runs: Sequence[LakeRun],
    normalize: tuple[float, float] | None = None,
) -> LakeScore:
    """Score ``predict_fn(task) -> predicted labels`` (``[Q]``, or logits ``[Q, W]``) on every
    run: per-run error = 100 * (wrong predictions) / (test items), and the mean."""
    if not runs:
        raise OmniglotError("score_runs needs at least one run")
    errors = []
    for run in runs:
        task = run.to_task(normalize)
        pred = torch.as_tensor(predict_fn(task))
        if pred.dim() == 2:
            pred = pred.argmax(dim=-1)
        if pred.shape != task.query_y.shape:
            raise OmniglotError(
                f"predict_fn returned shape {tuple(pred.shape)} for {run.name}; expected labels "
                f"[{task.query_y.shape[0]}] or logits [{task.query_y.shape[0]}, {run.ways}]"
            )
        wrong = (pred.to(torch.long).cpu() != task.query_y).sum().item()
        errors.append(100.0 * wrong / task.query_y.shape[0])
    return LakeScore(tuple(errors), float(np.mean(errors)))


def make_fake_runs(
    dest: str | os.PathLike[str],
    evaluation: str | os.PathLike[str],
    runs: int = 20,
    ways: int = 20,
    seed: int = 0,
) -> Path:
    """Write runs in the layout of ``all_runs.zip`` from real Omniglot evaluation images.

    ``evaluation`` is ``images_evaluation.zip`` (or its folder, or a directory holding it).
    Runs take ``ways`` characters of one alphabet (two runs per alphabet, alphabets drawn
    with ``seed``), one drawer's image per class for ``training/`` and another drawer's for
    ``test/`` in shuffled order, with the matching ``class_labels.txt``.  Writes a zip if
    ``dest`` ends in ``.zip``, else a folder.  Original 105x105 PNG bytes are copied.
    """
    evaluation = Path(evaluation).expanduser()
    if evaluation.is_dir() and (evaluation / f"{ARCHIVES['evaluation']}.zip").exists():
        evaluation = evaluation / f"{ARCHIVES['evaluation']}.zip"
    elif evaluation.is_dir() and (evaluation / ARCHIVES["evaluation"]).is_dir():
        evaluation = evaluation / ARCHIVES["evaluation"]
    source = _Source(evaluation)
    try:
        by_alphabet: dict[str, dict[str, list[str]]] = {}
        for name in source.names():
            parts = name.split("/")
            if len(parts) == 4 and parts[3].endswith(".png"):
                by_alphabet.setdefault(parts[1], {}).setdefault(parts[2], []).append(name)
        alphabets = sorted(
            a
            for a, chars in by_alphabet.items()
            if sum(len(v) >= 2 for v in chars.values()) >= ways
        )
        needed = -(-runs // 2)
        if len(alphabets) < needed:
            raise OmniglotError(
                f"{evaluation}: {len(alphabets)} alphabets have {ways} characters with two "
                f"drawings; {runs} runs need {needed}"
            )
        g = torch.Generator().manual_seed(int(seed))
        order = torch.randperm(len(alphabets), generator=g).tolist()
        files: dict[str, bytes] = {}
        for r in range(runs):
            run = f"run{r + 1:02d}"
            chars = by_alphabet[alphabets[order[r // 2]]]
            eligible = sorted(c for c, v in chars.items() if len(v) >= 2)
            chosen = torch.randperm(len(eligible), generator=g)[:ways].tolist()
            picked = [eligible[i] for i in chosen]
            item_order = torch.randperm(ways, generator=g).tolist()
            lines = []
            test_images: list[str] = []
            for k, char in enumerate(picked):
                drawings = sorted(chars[char])
                a, b = torch.randperm(len(drawings), generator=g)[:2].tolist()
                files[f"{run}/training/class{k + 1:02d}.png"] = source.read(drawings[a])
                test_images.append(drawings[b])
            for x, k in enumerate(item_order):
                files[f"{run}/test/item{x + 1:02d}.png"] = source.read(test_images[k])
                lines.append(f"{run}/test/item{x + 1:02d}.png {run}/training/class{k + 1:02d}.png")
            files[f"{run}/class_labels.txt"] = ("\n".join(lines) + "\n").encode()
    finally:
        source.close()
    dest = Path(dest).expanduser()
    if dest.suffix == ".zip":
        dest.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as z:
            for name, data in files.items():
                z.writestr(name, data)
    else:
        for name, data in files.items():
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
    return dest
