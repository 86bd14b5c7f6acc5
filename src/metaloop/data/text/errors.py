"""The error of the text family."""

from __future__ import annotations

from metaloop.tasks.base import TaskError


class TextDataError(TaskError):
    """A text data file or text episode setting is malformed (a ``TaskError``/``ValueError``)."""
