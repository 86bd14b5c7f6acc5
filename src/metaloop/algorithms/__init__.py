"""Algorithms: one file each, all speaking the ``MetaLearner`` protocol."""

from metaloop.algorithms.adml import ADML
from metaloop.algorithms.anil import ANIL
from metaloop.algorithms.base import MetaLearner
from metaloop.algorithms.cavia import CAVIA, ContextModel
from metaloop.algorithms.cnp import ConditionalNeuralProcess
from metaloop.algorithms.finetune import FineTuneBaseline
from metaloop.algorithms.gradient import GradientMetaLearner
from metaloop.algorithms.imaml import IMAML
from metaloop.algorithms.incontext import InContextTransformer
from metaloop.algorithms.learned_optimizer import LearnedOptimizer
from metaloop.algorithms.lslr import LSLR
from metaloop.algorithms.maml import FOMAML, MAML
from metaloop.algorithms.mann_lstm import LabelDelayLSTM
from metaloop.algorithms.matching import MatchingNet
from metaloop.algorithms.metasgd import MetaSGD
from metaloop.algorithms.metric import MetricMetaLearner
from metaloop.algorithms.pretrain import JointTraining
from metaloop.algorithms.protomaml import ProtoMAML
from metaloop.algorithms.protonet import ProtoNet
from metaloop.algorithms.relation import RelationNet
from metaloop.algorithms.reptile import Reptile
from metaloop.algorithms.siamese import SiameseNet
from metaloop.algorithms.snail import SNAIL

__all__ = [
    "ADML",
    "ANIL",
    "CAVIA",
    "FOMAML",
    "IMAML",
    "LSLR",
    "MAML",
    "SNAIL",
    "ConditionalNeuralProcess",
    "ContextModel",
    "FineTuneBaseline",
    "GradientMetaLearner",
    "InContextTransformer",
    "JointTraining",
    "LabelDelayLSTM",
    "LearnedOptimizer",
    "MatchingNet",
    "MetaLearner",
    "MetaSGD",
    "MetricMetaLearner",
    "ProtoMAML",
    "ProtoNet",
    "RelationNet",
    "Reptile",
    "SiameseNet",
]
