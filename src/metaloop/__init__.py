"""metaloop: meta-learning on PyTorch, every algorithm family behind one small protocol."""

from metaloop import algorithms, data, diagnostics, evaluation, functional, models, tasks, train
from metaloop.algorithms import FOMAML, MAML, JointTraining, MetaLearner, MetaSGD, Reptile
from metaloop.evaluation import evaluate
from metaloop.train import Trainer

__version__ = "0.1.0"

__all__ = [
    "FOMAML",
    "MAML",
    "JointTraining",
    "MetaLearner",
    "MetaSGD",
    "Reptile",
    "Trainer",
    "algorithms",
    "data",
    "diagnostics",
    "evaluate",
    "evaluation",
    "functional",
    "models",
    "tasks",
    "train",
]
