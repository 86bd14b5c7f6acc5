"""Algorithms: one file each, all speaking the ``MetaLearner`` protocol."""

from metaloop.algorithms.base import MetaLearner
from metaloop.algorithms.gradient import GradientMetaLearner
from metaloop.algorithms.maml import FOMAML, MAML
from metaloop.algorithms.metasgd import MetaSGD
from metaloop.algorithms.pretrain import JointTraining
from metaloop.algorithms.reptile import Reptile

__all__ = [
    "FOMAML",
    "MAML",
    "GradientMetaLearner",
    "JointTraining",
    "MetaLearner",
    "MetaSGD",
    "Reptile",
]
