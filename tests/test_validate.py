"""The shared validators (metaloop.validate)."""

from __future__ import annotations

import math
import re

import pytest

from metaloop.tasks.base import TaskError
from metaloop.validate import (
    is_int,
    is_number,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    probability,
)


def test_predicates_exclude_booleans() -> None:
    assert is_int(3) and not is_int(True) and not is_int(3.0) and not is_int("3")
    assert is_number(3) and is_number(2.5) and is_number(math.inf) and not is_number(False)


@pytest.mark.parametrize(
    ("check", "good", "bad", "message"),
    [
        (positive_int, [1, 7], [0, -1, True, 1.0, "1", None], "must be a positive integer"),
        (non_negative_int, [0, 3], [-1, False, 0.5], "must be an integer >= 0"),
        (positive_float, [1e-9, 2], [0, -1.0, math.inf, math.nan, True], "positive finite"),
        (non_negative_float, [0, 0.5], [-1e-9, math.inf, math.nan, False], "finite number >= 0"),
        (probability, [0, 0.5, 1], [-0.1, 1.5, math.nan, True], r"number in \[0, 1\]"),
    ],
)
def test_checkers_return_good_values_and_name_bad_ones(check, good, bad, message) -> None:
    for value in good:
        assert check("x", value) == value
    for value in bad:
        with pytest.raises(ValueError, match=f"^x .*{message}.*, got {re.escape(repr(value))}$"):
            check("x", value)
    with pytest.raises(TaskError, match="steps"):
        check("steps", bad[0], error=TaskError)
