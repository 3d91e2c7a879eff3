"""Errors the user can act on, each carrying the problem and the fix in plain words."""

from __future__ import annotations

__all__ = [
    "CaptureError",
    "InputShapeError",
    "ModelSpecError",
    "WorkbenchError",
    "describe_value",
    "first_line",
]


class WorkbenchError(Exception):
    """A failure caused by the user's input: the app shows it in an error box, the CLI exits 2.

    `problem` says what is wrong in the user's terms; `fix` says what to do about it.
    """

    def __init__(self, problem: str, fix: str) -> None:
        super().__init__(f"{problem}\nFix: {fix}")
        self.problem = problem
        self.fix = fix


class ModelSpecError(WorkbenchError):
    """The model spec does not name something that can be loaded."""


class CaptureError(WorkbenchError):
    """torch.export could not capture the model."""


class InputShapeError(WorkbenchError):
    """The example inputs do not fit the model."""


def first_line(exc: BaseException, *, limit: int = 300) -> str:
    """Return the first non-empty line of an exception message, shortened for a one-line report."""
    for line in str(exc).splitlines():
        line = line.strip()
        if line:
            return line if len(line) <= limit else line[: limit - 1] + "…"
    return type(exc).__name__


def describe_value(value: object) -> str:
    """`a tuple of 2 items`, `an int`, `None`: what a user's function returned, in messages."""
    if isinstance(value, tuple | list):
        return f"a {type(value).__name__} of {len(value)} items"
    if value is None:
        return "None"
    kind = type(value).__name__
    return f"{'an' if kind[0].lower() in 'aeiou' else 'a'} {kind}"
