"""metaloop: meta-learning on PyTorch, every algorithm family behind one small protocol."""

from metaloop import algorithms, functional, models, tasks
from metaloop.algorithms import FOMAML, MAML, JointTraining, MetaLearner, MetaSGD, Reptile

__version__ = "0.1.0"

__all__ = [
    "FOMAML",
    "MAML",
    "JointTraining",
    "MetaLearner",
    "MetaSGD",
    "Reptile",
    "algorithms",
    "functional",
    "models",
    "tasks",
]
