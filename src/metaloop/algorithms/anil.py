"""ANIL, "Almost No Inner Loop" (Raghu, Raghu, Bengio and Vinyals, 2020).

MAML whose inner loop adapts only the head (the last layer); the body is shared across
tasks and learned by the outer loop alone.  The meta-objective is MAML's,

    min_{theta_b, theta_h}  (1/T) sum_i L_query_i(theta_b, U_i^K(theta_b, theta_h)),

where ``U`` runs ``K`` inner steps on the head parameters ``theta_h`` only.  With the
second-order gradient the body still sees how it shapes the head's inner updates (the
head's inner gradients depend on the body's features); ``first_order=True`` drops that
term, as FOMAML does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from metaloop.algorithms.maml import MAML
from metaloop.algorithms.registry import register

HeadSpec = str | Sequence[str] | Callable[[str], bool]


@register("anil")
class ANIL(MAML):
    """MAML adapting only the parameters picked by ``head``.

    Args:
        model: any ``nn.Module``.
        head: which parameters form the head: a name prefix (default ``"head"``, the head
            of ``metaloop.models.Conv4``), a list of prefixes, or a predicate on parameter
            names.  For ``MLP`` the head is its last ``nn.Linear``, e.g. ``"layers.4"`` for
            two hidden layers.
        *args, **kwargs: as for ``MAML`` (``inner_lr``, ``inner_steps``, ``first_order``,
            ...), except ``adapt``, which ``head`` replaces.

    Raises ``ValueError`` naming the model's parameters when no parameter matches ``head``,
    or when the head would be the whole model (that is MAML).
    """

    def __init__(self, model: nn.Module, *args: Any, head: HeadSpec = "head", **kwargs: Any):
        if "adapt" in kwargs:
            raise TypeError("ANIL adapts the head only: pass head=..., not adapt=...")
        names = [n for n, _ in model.named_parameters()]
        try:
            super().__init__(model, *args, adapt=head, **kwargs)
        except ValueError as err:
            if "no parameter matches" not in str(err):
                raise
            last = names[-1].rsplit(".", 1)[0] if names else None
            hint = f" (the last layer here is {last!r}: try head={last!r})" if last else ""
            raise ValueError(
                f"ANIL found no head parameter: no parameter of {type(model).__name__} matches "
                f"head={head!r}{hint}; parameters are: {', '.join(names) or 'none'}"
            ) from None
        if len(self.adapt_names) == len(names):
            raise ValueError(
                f"head={head!r} picks every parameter of the model, which is MAML, not ANIL; "
                "name only the last layer(s)"
            )
        self.head = head

    def extra_repr(self) -> str:
        return f"head={self.head!r}, " + super().extra_repr()
