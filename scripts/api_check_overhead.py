"""Usage: OMP_NUM_THREADS=1 python scripts/api_check_overhead.py {vmap,loop}

CPU time of the API input checks against the sinusoid MAML meta-step they guard
(bench sinusoid's case: 1-40-40-1 MLP, meta-batch 25, 10 + 10 points, one inner step,
second order; meta_loss + backward), both in process CPU time (robust to a loaded
machine), interleaved."""

import statistics
import sys
import time

import torch

from metaloop.algorithms import MAML
from metaloop.algorithms.validation import check_trainable, unchecked
from metaloop.models import MLP
from metaloop.tasks import Sinusoid
from metaloop.tasks.base import validate_batch

torch.set_num_threads(1)

vectorize = sys.argv[1]
torch.manual_seed(0)
learner = MAML(MLP(1, 1, hidden=[40, 40]), inner_lr=0.01, inner_steps=1, vectorize=vectorize)
batch = Sinusoid(shots=10, queries=10).sample(25, torch.Generator().manual_seed(0))


def step():
    with unchecked():
        loss, _ = learner.meta_loss(batch)
        loss.backward()


def checks():  # exactly what the meta_loss wrapper adds
    validate_batch(batch, classification=False, check_finite=False)
    check_trainable(learner)


for _ in range(10):
    step()
    checks()
steps, costs = [], []
for _ in range(10):
    t = time.process_time()
    for _ in range(20):
        step()
    steps.append((time.process_time() - t) / 20)
    t = time.process_time()
    for _ in range(2000):
        checks()
    costs.append((time.process_time() - t) / 2000)
s, c = statistics.median(steps), statistics.median(costs)
print(
    f"vectorize={vectorize}: meta-step {s * 1e3:.2f} ms CPU, checks {c * 1e6:.1f} us CPU "
    f"= {100 * c / s:.2f}% of the step"
)
