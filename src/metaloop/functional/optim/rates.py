"""Learned inner learning rates: a module holding them as parameters.

``LearnedRates`` keeps one rate tensor per adapted parameter, shaped by ``granularity``
(``"element"``: like the parameter, Meta-SGD; ``"tensor"``: a scalar per tensor; ``"global"``:
one scalar shared by all) and, with ``steps = S``, a leading step axis of length ``S``
(per-step rates, MAML++'s LSLR: one rate per layer per step).  Calling it returns the dict
``name -> rate`` that ``scale_by_learning_rate`` takes (with ``per_step=True`` when ``S`` is
set).  Because the rates are parameters of a module the learner holds, they are saved in its
state dict and receive the meta-gradient like the initialisation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

GRANULARITIES = ("element", "tensor", "global")
GLOBAL = "global"


def _key(name: str) -> str:
    # ParameterDict keys may not contain dots
    return name.replace(".", "__")


class LearnedRates(nn.Module):
    """Rates for the parameters ``names`` of ``model``, all initialised to ``init``."""

    def __init__(
        self,
        model: nn.Module,
        names: Sequence[str],
        init: float,
        granularity: str = "element",
        steps: int | None = None,
    ) -> None:
        super().__init__()
        if granularity not in GRANULARITIES:
            raise ValueError(
                f"granularity must be one of {', '.join(GRANULARITIES)}, got {granularity!r}"
            )
        if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int)):
            raise ValueError(f"steps must be a positive integer or None, got {steps!r}")
        if steps is not None and steps < 1:
            raise ValueError(f"steps must be a positive integer or None, got {steps!r}")
        if isinstance(init, bool) or not isinstance(init, (int, float)) or not init > 0:
            raise ValueError(f"initial learning rate must be a positive number, got {init!r}")
        params = dict(model.named_parameters())
        missing = [n for n in names if n not in params]
        if not names or missing:
            raise ValueError(f"LearnedRates needs parameters of the model, got {list(names)!r}")
        self.names = list(names)
        self.granularity = granularity
        self.steps = steps
        lead = () if steps is None else (steps,)

        def full(ref: Tensor, shape: tuple[int, ...]) -> nn.Parameter:
            return nn.Parameter(
                torch.full(lead + shape, float(init), dtype=ref.dtype, device=ref.device)
            )

        # registered on the module itself: state-dict keys ``<prefix>.<name with __>``
        if granularity == GLOBAL:
            self.register_parameter(GLOBAL, full(params[self.names[0]], ()))
        else:
            for n in self.names:
                shape = tuple(params[n].shape) if granularity == "element" else ()
                self.register_parameter(_key(n), full(params[n], shape))

    def __getitem__(self, key: str) -> Tensor:
        """The rate tensor stored under ``key`` (a parameter name with ``.`` as ``__``); read
        by attribute, so that ``torch.func.functional_call`` substitutions are seen."""
        if key not in self._parameters:
            raise KeyError(f"no learned rate {key!r}; stored are {', '.join(self.keys())}")
        return getattr(self, key)

    def keys(self) -> list[str]:
        """The keys of the stored rate tensors."""
        return [k for k, _ in self.named_parameters(recurse=False)]

    def values(self) -> list[nn.Parameter]:
        return [p for _, p in self.named_parameters(recurse=False)]

    @property
    def per_step(self) -> bool:
        return self.steps is not None

    def forward(self) -> dict[str, Tensor]:
        """``name -> rate`` for every adapted parameter (``[S, ...]`` with per-step rates)."""
        if self.granularity == GLOBAL:
            return dict.fromkeys(self.names, self[GLOBAL])
        return {n: self[_key(n)] for n in self.names}

    def extra_repr(self) -> str:
        steps = "" if self.steps is None else f", steps={self.steps}"
        return f"granularity={self.granularity!r}{steps}"
