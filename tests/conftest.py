"""Helpers shared by the test modules, as pytest fixtures."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest
import torch

from metaloop.tasks.base import TaskBatch


@torch.no_grad()
def central_differences(
    fn: Callable[[], torch.Tensor | float], params: Sequence[torch.Tensor], eps: float = 1e-6
) -> torch.Tensor:
    """The gradient of the scalar ``fn()`` with respect to ``params`` by central differences,

        d fn / d p_i ~ (fn(p + eps e_i) - fn(p - eps e_i)) / (2 eps),

    one coordinate at a time, perturbing the tensors in place and restoring them; the
    coordinates of all ``params`` flattened in order, float64.  Use float64 parameters."""
    out = []
    for p in params:
        view = p.view(-1)
        for i in range(view.numel()):
            orig = view[i].item()
            view[i] = orig + eps
            plus = float(fn())
            view[i] = orig - eps
            minus = float(fn())
            view[i] = orig
            out.append((plus - minus) / (2 * eps))
    return torch.tensor(out, dtype=torch.float64)


@pytest.fixture
def numeric_gradient() -> Callable[..., torch.Tensor]:
    """``central_differences(fn, params, eps=1e-6)``: the independent truth of the gradient
    tests."""
    return central_differences


#: a sinusoid MAML run that trains in a fraction of a second (4 iterations, checkpoints at
#: 2 and 4), for tests of what the CLI does around a run (faults, malicious files)
TINY_CONFIG = """
name = "tiny"
seed = 3
[task]
family = "sinusoid"
shots = 4
queries = 4
[model]
name = "mlp"
hidden = [8]
[algorithm]
name = "maml"
inner_lr = 0.01
inner_steps = 1
[train]
iterations = 4
meta_batch_size = 2
validate_every = 2
validation_tasks = 2
checkpoint_every = 2
log_every = 2
threads = 1
progress = false
[eval]
episodes = 4
steps = [0, 1]
"""


@pytest.fixture(scope="session")
def tiny_config() -> str:
    """The TOML text of ``TINY_CONFIG``."""
    return TINY_CONFIG


def _token_episodes(
    vocab: int, length: int, ways: int, shots: int, queries: int, tasks: int, seed: int = 0
) -> TaskBatch:
    """``tasks`` text episodes of token ids: [CLS] (id 2) first, ids from 3 to ``vocab``,
    right padding (id 0) after a random length of 2 to ``length``; labels class by class."""
    g = torch.Generator().manual_seed(seed)

    def ids(rows: int) -> torch.Tensor:
        x = torch.randint(3, vocab, (tasks, rows, length), generator=g)
        x[..., 0] = 2
        lengths = torch.randint(2, length + 1, (tasks, rows, 1), generator=g)
        return x.masked_fill(torch.arange(length) >= lengths, 0)

    labels = torch.arange(ways)
    sy = labels.repeat_interleave(shots).repeat(tasks, 1)
    qy = labels.repeat_interleave(queries).repeat(tasks, 1)
    return TaskBatch(ids(ways * shots), sy, ids(ways * queries), qy)


@pytest.fixture(scope="session")
def token_episodes() -> Callable[..., TaskBatch]:
    """``token_episodes(vocab, length, ways, shots, queries, tasks, seed=0)``: random
    padded token-id episodes for the text encoders' tests."""
    return _token_episodes
