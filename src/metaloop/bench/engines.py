"""Engine names (``"vmap+compile+chunk=4"``) and the learners they build for a case (see
``metaloop.bench.runner``'s docstring for the bases and options)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from metaloop.bench.baselines import (
    HigherMAML,
    PlainLoopMAML,
    PlainLoopProtoNet,
    TorchOptMAML,
    available_libraries,
)
from metaloop.bench.workloads import Case


# -- engines ---------------------------------------------------------------------------------
def parse_engine(name: str) -> tuple[str, dict[str, Any]]:
    """``"vmap+compile+chunk=4"`` -> ``("vmap", {"compile": True, "chunk_size": 4})``."""
    base, *opts = name.split("+")
    kwargs: dict[str, Any] = {}
    for opt in opts:
        key, _, value = opt.partition("=")
        if key == "compile":
            modes = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
            kwargs["compile"] = (
                True if not value else {"mode": value} if value in modes else {"backend": value}
            )
        elif key == "checkpoint":
            kwargs["checkpoint"] = True
        elif key == "channels_last":
            kwargs["channels_last"] = True
        elif key == "bf16":
            kwargs["autocast"] = "bfloat16"
        elif key == "chunk" and value.isdigit():
            kwargs["chunk_size"] = int(value)
        else:
            raise ValueError(f"unknown engine option {opt!r} in {name!r}")
    return base, kwargs


def build_engine(name: str, case: Case, model: nn.Module) -> nn.Module:
    """The engine (a ``meta_loss`` learner) for an engine name and a case."""
    base, kwargs = parse_engine(name)
    if case.kind == "protonet":
        channels_last = bool(kwargs.pop("channels_last", False))
        autocast = kwargs.pop("autocast", None)
        if kwargs:
            raise ValueError(f"ProtoNet engines take only +channels_last and +bf16, got {name!r}")
        if base == "plain":
            if autocast:
                raise ValueError(f"the plain ProtoNet loop runs in float32, got {name!r}")
            if channels_last:  # what a user of the plain loop would do: restride the model
                model.to(memory_format=torch.channels_last)
            return PlainLoopProtoNet(model)
        if base == "protonet":
            from metaloop.algorithms.protonet import ProtoNet

            return ProtoNet(model, channels_last=channels_last, autocast=autocast)
        raise ValueError(f"unknown ProtoNet engine {name!r}; use plain or protonet")
    common = dict(
        inner_lr=case.inner_lr,
        inner_steps=case.inner_steps,
        loss=case.loss,
        first_order=case.first_order,
    )
    if base in ("plain", "higher", "torchopt"):
        if kwargs:
            raise ValueError(f"the {base} engine takes no options, got {name!r}")
        cls = {"plain": PlainLoopMAML, "higher": HigherMAML, "torchopt": TorchOptMAML}[base]
        return cls(model, **common)
    if base in ("loop", "vmap"):
        from metaloop.algorithms.maml import MAML

        return MAML(model, vectorize=base, **common, **kwargs)
    raise ValueError(f"unknown engine {name!r}; bases: plain, loop, vmap, higher, torchopt")


def default_engines(case: Case) -> tuple[str, ...]:
    engines = list(case.engines)
    if case.kind == "maml" and not case.first_order:
        engines += [lib for lib, ok in available_libraries().items() if ok]
    return tuple(engines)
