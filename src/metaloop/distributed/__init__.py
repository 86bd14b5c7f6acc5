"""Scale: the same meta-training on ``torch.distributed``."""

from metaloop.distributed.ddp import (
    DistributedTrainer,
    init_from_env,
    launched_by_torchrun,
    shard,
    shutdown,
    world,
)

__all__ = [
    "DistributedTrainer",
    "init_from_env",
    "launched_by_torchrun",
    "shard",
    "shutdown",
    "world",
]
