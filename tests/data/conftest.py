"""Fixtures for the data layer: real Omniglot (skipped when absent) and synthetic archives.

Real data: ``$METALOOP_DATA/omniglot`` else ``<repo>/../shared/data/omniglot``.  Decoded
arrays are cached in ``$METALOOP_CACHE`` if set, else in ``<repo>/.cache/omniglot-tests``
(git-ignored), so only the first test session pays the decode; caches are validated by
source fingerprint, so a stale one is rebuilt, never used.
"""

from __future__ import annotations

import io
import os
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from metaloop.data import ClassDataset, load_omniglot_subset

REPO = Path(__file__).resolve().parents[2]


def _data_root() -> Path:
    env = os.environ.get("METALOOP_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def omniglot_root() -> Path:
    root = _data_root() / "omniglot"
    if not (root / "images_evaluation.zip").exists():
        pytest.skip(f"real Omniglot archives not found in {root} (set METALOOP_DATA)")
    return root


@pytest.fixture(scope="session")
def cache_dir() -> Path:
    env = os.environ.get("METALOOP_CACHE")
    return Path(env) if env else REPO / ".cache" / "omniglot-tests"


@pytest.fixture(scope="session")
def evaluation(omniglot_root: Path, cache_dir: Path) -> ClassDataset:
    return load_omniglot_subset(omniglot_root, "evaluation", 28, cache_dir=cache_dir)


@pytest.fixture(scope="session")
def background(omniglot_root: Path, cache_dir: Path) -> ClassDataset:
    return load_omniglot_subset(omniglot_root, "background", 28, cache_dir=cache_dir)


def png_bytes(pixels: np.ndarray) -> bytes:
    """A one-bit PNG like Omniglot's from a boolean array (True = white background)."""
    buf = io.BytesIO()
    Image.fromarray(pixels.astype(bool)).convert("1").save(buf, format="PNG")
    return buf.getvalue()


def random_glyph(rng: np.random.Generator, size: int = 105) -> np.ndarray:
    """White background with a few black strokes (rectangles)."""
    img = np.ones((size, size), dtype=bool)
    for _ in range(3):
        y, x = rng.integers(10, size - 30, size=2)
        h, w = rng.integers(3, 20, size=2)
        img[y : y + h, x : x + w] = False
    return img


ZipMaker = Callable[..., Path]


@pytest.fixture
def make_archive(tmp_path: Path) -> ZipMaker:
    """``make_archive(top, {alphabet: characters}, drawers=3, size=105, name=None,
    extra={member: bytes})`` writes a synthetic Omniglot-layout zip into ``tmp_path``."""

    def make(
        top: str = "images_background",
        layout: Mapping[str, int] | None = None,
        drawers: int = 3,
        size: int = 105,
        name: str | None = None,
        extra: Mapping[str, bytes] | None = None,
        directory: Path | None = None,
    ) -> Path:
        layout = layout or {"Alpha": 2, "Beta": 3}
        rng = np.random.default_rng(0)
        directory = directory or tmp_path
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / (name or f"{top}.zip")
        index = 1
        with zipfile.ZipFile(path, "w") as z:
            for alphabet, characters in layout.items():
                for c in range(1, characters + 1):
                    for d in range(1, drawers + 1):
                        member = f"{top}/{alphabet}/character{c:02d}/{index:04d}_{d:02d}.png"
                        z.writestr(member, png_bytes(random_glyph(rng, size)))
                    index += 1
            for member, data in (extra or {}).items():
                z.writestr(member, data)
        return path

    return make


def tagged_dataset(
    sizes: list[int], groups: list[str] | None = None, side: int = 4
) -> ClassDataset:
    """A tiny dataset whose images encode (class, item): pixel [0, 0, 0] = class id,
    pixel [0, 0, 1] = item index within its class."""
    images, labels, info = [], [], []
    for c, n in enumerate(sizes):
        for i in range(n):
            img = torch.zeros(1, side, side, dtype=torch.uint8)
            img[0, 0, 0], img[0, 0, 1] = c, i
            images.append(img)
            labels.append(c)
        info.append(
            {
                "alphabet": groups[c] if groups else "A",
                "character": f"character{c:02d}",
                "character_id": f"{groups[c] if groups else 'A'}/{c}",
            }
        )
    return ClassDataset(torch.stack(images), torch.tensor(labels), info, name="tagged")


@pytest.fixture
def tagged() -> Callable[..., ClassDataset]:
    """The ``tagged_dataset`` factory (fixtures keep test modules free of conftest imports)."""
    return tagged_dataset


@pytest.fixture
def png() -> Callable[[np.ndarray], bytes]:
    return png_bytes
