"""Where a model comes from, behind one interface: a bundled sample, a Python factory or a .pt2.

A model spec names one source: `sample:NAME` (sample_models), `path/to/file.py:FUNC` (FUNC()
returns `(model, example_inputs)` or a bare model; importing the file runs its code) or
`path/to/model.pt2` (read only with torch.export.load: nothing from the file is unpickled or
run). `resolve(spec)` gives the source and `source.load()` what capture needs from it: an eager
model to export (`EagerModel`) or a program exported already (`SavedProgram`).
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import logging
import re
import time
import zipfile
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.utils._pytree as pytree
from torch import nn
from torch.export import ExportedProgram

from workbench.errors import ModelSpecError, describe_value, first_line
from workbench.locks import EXPORT_LOCK
from workbench.model.program import symbol_range, user_placeholders
from workbench.model.signature import ModelInputs, SignatureError, parameter_names
from workbench.model.userfile import import_user_file, split_file_spec

__all__ = [
    "SPEC_FORMS",
    "EagerModel",
    "EagerSource",
    "LoadedModel",
    "ModelSource",
    "ModelSpec",
    "Pt2Source",
    "PythonFileSource",
    "SampleSource",
    "SavedProgram",
    "SpecKind",
    "resolve",
]

log = logging.getLogger(__name__)

SpecKind = Literal["sample", "python", "pt2"]
SPEC_FORMS = "sample:NAME, path/to/file.py:FUNC or path/to/model.pt2"


@dataclass(frozen=True)
class ModelSpec:
    """Where a model comes from: a bundled sample, a Python factory function, or a saved .pt2."""

    kind: SpecKind
    target: str
    func: str | None = None

    def __post_init__(self) -> None:
        if self.kind == "python" and not self.func:
            raise ModelSpecError(
                f"{self.target} names a Python file but no factory function.",
                "Write it as path/to/file.py:FUNC, where FUNC() returns (model, example_inputs).",
            )

    @classmethod
    def parse(cls, text: str) -> ModelSpec:
        """Parse `sample:NAME`, `path/file.py:FUNC` or `path/model.pt2`."""
        text = text.strip()
        if text.startswith("sample:"):
            return cls("sample", text.removeprefix("sample:"))
        if text.endswith(".pt2"):
            return cls("pt2", text)
        if (file_spec := split_file_spec(text)) is not None:
            return cls("python", *file_spec)
        if text.endswith(".py"):
            return cls("python", text)
        raise ModelSpecError(f"'{text}' is not a model spec.", f"Use one of: {SPEC_FORMS}.")

    def __str__(self) -> str:
        if self.kind == "sample":
            return f"sample:{self.target}"
        return f"{self.target}:{self.func}" if self.kind == "python" else self.target


@dataclass(frozen=True)
class EagerModel:
    """An nn.Module for capture to export, and the example inputs its source gave (or None)."""

    model: nn.Module
    example_inputs: ModelInputs | None


@dataclass(frozen=True)
class SavedProgram:
    """A program read from a .pt2: its example inputs, forward parameter names, load time."""

    program: ExportedProgram
    example_inputs: ModelInputs
    parameters: tuple[str, ...]
    load_seconds: float


LoadedModel = EagerModel | SavedProgram


@dataclass(frozen=True)
class ModelSource(ABC):
    """One place a model comes from; `load()` gives capture what it needs from there."""

    spec: ModelSpec

    @abstractmethod
    def load(self) -> LoadedModel:
        """Read or build the model; raises ModelSpecError naming the problem and the fix."""


class EagerSource(ModelSource):
    """A source that builds an nn.Module by running Python (the samples' or the user's)."""

    def load(self) -> EagerModel:
        # No export may run while the code defines its classes: transformers skips the pytree
        # registration of a ModelOutput class while torch says it is compiling, which a
        # concurrent export (another session's, the pattern-cache warm-up) makes true for
        # every thread, and torch.export then fails on the unregistered output type.
        with EXPORT_LOCK:
            return self.build()

    @abstractmethod
    def build(self) -> EagerModel:
        """Build the model (called under the export lock)."""


class SampleSource(EagerSource):
    """`sample:NAME`: one of sample_models' trained float models and its example images."""

    def build(self) -> EagerModel:
        import sample_models

        name = self.spec.target
        if name not in sample_models.SAMPLES:
            raise ModelSpecError(
                f"There is no sample model '{name}'.",
                "Use one of: " + ", ".join(f"sample:{n}" for n in sample_models.names()) + ".",
            )
        model, inputs = sample_models.build(name)
        return EagerModel(model, ModelInputs.of(inputs))


class PythonFileSource(EagerSource):
    """`path/to/file.py:FUNC`: the file is imported (its code runs) and FUNC() called."""

    @property
    def path(self) -> Path:
        return Path(self.spec.target)

    def build(self) -> EagerModel:
        path, func = self.path, self.spec.func
        assert func is not None  # ModelSpec refuses a python spec without one
        module = import_user_file(path, prefix="workbench_user_", error=ModelSpecError)
        factory = getattr(module, func, None)
        if not callable(factory):
            listed = _listed(_factories(module)) or "(it defines none)"
            raise ModelSpecError(
                f"{path} has no function '{func}'.", f"Name one of its functions: {listed}."
            )
        try:
            result = factory()
        except Exception as exc:
            raise ModelSpecError(
                f"{path}:{func}() raised {type(exc).__name__}: {first_line(exc)}",
                "Fix the factory so that calling it with no arguments returns "
                "(model, example_inputs).",
            ) from exc
        return _checked_factory_result(f"{path}:{func}", result)


class Pt2Source(ModelSource):
    """`path/to/model.pt2`: a program saved by torch.export.save, read by torch.export.load."""

    @property
    def path(self) -> Path:
        return Path(self.spec.target)

    def load(self) -> SavedProgram:
        path = self.path
        if not path.is_file():
            raise ModelSpecError(
                f"No such file: {path}.", "Check the path; it is relative to the current directory."
            )
        damaged = _damaged_member(path)
        if damaged is not None:
            raise ModelSpecError(
                f"{path} is corrupt: {damaged} fails its checksum (the file was damaged in "
                "transfer or on disk).",
                "Copy or download it again, or re-create it with torch.export.save.",
            )
        import torchao.quantization.pt2e  # noqa: F401  (registers the quantized_decomposed ops)

        _import_pytree_types(path)
        start = time.perf_counter()
        try:
            with EXPORT_LOCK:
                program = torch.export.load(str(path))
        except (zipfile.BadZipFile, RuntimeError, KeyError, ValueError, EOFError) as exc:
            raise ModelSpecError(
                f"{path} is not a readable .pt2 archive: it is corrupt or truncated, or was saved "
                "by another torch/torchao version "
                f"({first_line(exc).split('. Please check the warnings')[0]}).",
                "Re-create it with torch.export.save(torch.export.export(model, inputs), path).",
            ) from exc
        seconds = time.perf_counter() - start
        with EXPORT_LOCK:
            parameters = parameter_names(program.module(check_guards=False))
        return SavedProgram(program, _program_example_inputs(program), parameters, seconds)


_SOURCES: dict[SpecKind, type[SampleSource | PythonFileSource | Pt2Source]] = {
    "sample": SampleSource,
    "python": PythonFileSource,
    "pt2": Pt2Source,
}


def resolve(spec: str | ModelSpec) -> ModelSource:
    """The source a spec names (parsing it if it is text); nothing is loaded yet."""
    spec = spec if isinstance(spec, ModelSpec) else ModelSpec.parse(spec)
    return _SOURCES[spec.kind](spec)


# --- a Python factory ----------------------------------------------------------------------

FACTORY_RESULT = (
    "return (model, example_inputs): an nn.Module and its example inputs (a tensor, a "
    "tuple of positional arguments, a dict of keyword arguments, or a pair (args, kwargs))"
)


def _factories(module: Any) -> list[str]:
    """The public functions and nn.Module classes a file defines itself, sorted."""
    return sorted(
        name
        for name, value in vars(module).items()
        if (inspect.isfunction(value) or _is_module_class(value))
        and value.__module__ == module.__name__
        and not name.startswith("_")
    )


def _listed(names: list[str], most: int = 20) -> str:
    more = f" and {len(names) - most} more" if len(names) > most else ""
    return ", ".join(names[:most]) + more


def _is_module_class(value: Any) -> bool:
    return inspect.isclass(value) and issubclass(value, nn.Module)


def _checked_factory_result(where: str, result: Any) -> EagerModel:
    if isinstance(result, nn.Module):
        return EagerModel(result, None)
    if not (isinstance(result, tuple | list) and len(result) == 2):
        raise ModelSpecError(
            f"{where}() returned {describe_value(result)}.", f"Make it {FACTORY_RESULT}."
        )
    model, inputs = result
    if not isinstance(model, nn.Module):
        raise ModelSpecError(
            f"{where}() returned {describe_value(model)} where an nn.Module belongs.",
            f"Make it {FACTORY_RESULT}.",
        )
    try:
        example = ModelInputs.of(inputs)
    except SignatureError as exc:
        raise ModelSpecError(f"{where}() returned {describe_value(inputs)} as example inputs.",
                             f"Make it {FACTORY_RESULT}.") from exc  # fmt: skip
    leaves = pytree.tree_leaves((example.args, example.kwargs))
    strange = sorted({type(v).__name__ for v in leaves
                      if not isinstance(v, torch.Tensor | int | float | bool)})  # fmt: skip
    if not example.tensors():
        kinds = ", ".join(type(v).__name__ for v in (*example.args, *example.kwargs.values()))
        raise ModelSpecError(
            f"{where}() returned example inputs of types ({kinds}); only tensors are supported.",
            f"Make it {FACTORY_RESULT}.",
        )
    if strange:
        raise ModelSpecError(
            f"{where}() returned example inputs holding {', '.join(strange)}; only tensors "
            "(and plain numbers) are supported.",
            f"Make it {FACTORY_RESULT}.",
        )
    return EagerModel(model, example)


# --- a .pt2 file ---------------------------------------------------------------------------

_TREESPEC_TYPE = re.compile(r'\\"type\\": \\"([A-Za-z_][\w.]*)\\"')


def _import_pytree_types(path: Path) -> None:
    """Import the installed modules that define the pytree types of the program's inputs and
    outputs (a transformers ModelOutput, say): torch.export.load cannot rebuild them otherwise.

    Only modules already installed are imported (nothing from the file runs); a type whose
    module is not installed is left for torch.export.load to report.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if "/models/" in n and n.endswith(".json")]
            text = "".join(archive.read(n).decode("utf-8", "replace") for n in names[:4])
    except (zipfile.BadZipFile, OSError, EOFError, ValueError):
        return
    for qualified in sorted(set(_TREESPEC_TYPE.findall(text))):
        module = qualified.rpartition(".")[0]
        if not module or module.split(".")[0] in ("builtins", "collections", "torch"):
            continue
        try:
            if importlib.util.find_spec(module.split(".")[0]) is not None:
                importlib.import_module(module)
        except Exception as exc:  # a broken optional package must not stop the load
            log.warning("could not import %s for %s: %s", module, qualified, first_line(exc))


def _damaged_member(path: Path) -> str | None:
    """The first archive member whose CRC does not match (torch.export.load does not check)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError):
        return None  # not a readable zip at all: torch.export.load reports that next


def _program_example_inputs(program: ExportedProgram) -> ModelInputs:
    """The example inputs saved with the program (copies), else random ones of its input
    shapes, a dynamic dim at its lower bound (at least 2)."""
    stored = program.example_inputs
    if stored is not None and (stored[0] or stored[1]):
        args, kwargs = pytree.tree_map(
            lambda v: v.clone() if isinstance(v, torch.Tensor) else v, stored
        )
        return ModelInputs(tuple(args), dict(kwargs))
    generator = torch.Generator().manual_seed(0)
    leaves = []
    for node in user_placeholders(program):
        val = node.meta["val"]
        shape = [
            d if isinstance(d, int) else max(2, symbol_range(program, d)[0]) for d in val.shape
        ]
        leaves.append(torch.rand(shape, generator=generator).to(val.dtype))
    in_spec = program.call_spec.in_spec
    if in_spec is None:
        return ModelInputs(tuple(leaves))
    args, kwargs = pytree.tree_unflatten(leaves, in_spec)
    return ModelInputs(tuple(args), dict(kwargs))
