"""Where the sampler workload finds the Omniglot archives, and the training classes it
samples from (``metaloop.bench.sampler``)."""

from __future__ import annotations

import os
from pathlib import Path

from metaloop.data.dataset import ClassDataset
from metaloop.data.omniglot import ARCHIVES, OmniglotError


def default_data_roots() -> list[Path]:
    """Where the archives are looked for without ``data_root``: ``$METALOOP_DATA`` if set,
    else ``<repo>/../shared/data/omniglot`` (as the tests do) and
    ``./../shared/data/omniglot``."""
    env = os.environ.get("METALOOP_DATA")
    if env:
        return [Path(env).expanduser()]
    roots = []
    repo = Path(__file__).resolve().parents[3]
    if (repo / "pyproject.toml").is_file():
        roots.append(repo.parent / "shared" / "data" / "omniglot")
    roots.append(Path.cwd().parent / "shared" / "data" / "omniglot")
    return roots


def _has_archives(path: Path) -> Path | None:
    for candidate in (path, path / "omniglot"):
        if all(
            (candidate / f"{ARCHIVES[s]}.zip").is_file() or (candidate / ARCHIVES[s]).is_dir()
            for s in ("background", "evaluation")
        ):
            return candidate
    return None


def find_data_root(data_root: str | os.PathLike[str] | None = None) -> Path:
    """The directory with ``images_background`` and ``images_evaluation`` (zip or
    extracted); ``OmniglotError`` naming where it looked when they are missing."""
    tried = [Path(data_root).expanduser()] if data_root is not None else default_data_roots()
    for path in tried:
        found = _has_archives(path)
        if found is not None:
            return found
    names = " and ".join(f"{ARCHIVES[s]}.zip" for s in ("background", "evaluation"))
    raise OmniglotError(
        f"the sampler benchmark needs the Omniglot archives {names}; not found in "
        + ", ".join(str(p) for p in tried)
        + ": pass --data-root DIR (data_root=...) or set METALOOP_DATA to the directory "
        "holding them"
    )


def load_train_dataset(data_root: str | os.PathLike[str] | None = None) -> ClassDataset:
    """The training classes of the presets: Vinyals split, 28x28, rotations as classes
    (decoded arrays cached in ``~/.cache/metaloop``)."""
    from metaloop.data import omniglot_split

    root = find_data_root(data_root)
    return omniglot_split(root, "vinyals", image_size=28, rotations=True)["train"]
