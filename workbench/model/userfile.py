"""Importing a user's Python file (a model factory or a data function): this runs its code."""

from __future__ import annotations

import hashlib
import importlib.util
import sys
import types
from pathlib import Path

from workbench.errors import WorkbenchError, first_line

__all__ = ["import_user_file", "split_file_spec"]


def split_file_spec(text: str) -> tuple[str, str] | None:
    """(path, FUNC) of `path/to/file.py:FUNC` (FUNC may be empty); None for any other form."""
    path, sep, func = text.rpartition(":")
    return (path, func) if sep and path.endswith(".py") else None


def import_user_file(
    path: Path, *, prefix: str, error: type[WorkbenchError], what: str = "file"
) -> types.ModuleType:
    """Import `path` as a module named after its resolved path; raise `error` when it cannot be.

    The module is registered in sys.modules (dataclasses and pickling look it up there).
    """
    if not path.is_file():
        raise error(
            f"No such {what}: {path}.", "Check the path; it is relative to the current directory."
        )
    name = prefix + hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise error(f"{path} cannot be imported as Python.", "Give a .py file.")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(name, None)
        raise error(
            f"Importing {path} failed: {type(exc).__name__}: {first_line(exc)}",
            f"Fix the error in that file (run `python {path}` to see it in full).",
        ) from exc
    return module
