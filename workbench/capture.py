"""Resolve a model spec and capture the model with torch.export, with a dynamic batch dimension."""

from __future__ import annotations

import contextlib
import copy
import inspect
import logging
import re
import time
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from torch.export import Dim, ExportedProgram
from torch.fx import GraphModule

from workbench.errors import CaptureError, InputShapeError, ModelSpecError, first_line
from workbench.locks import EXPORT_LOCK
from workbench.userfile import import_user_file

log = logging.getLogger(__name__)

SpecKind = Literal["sample", "python", "pt2"]
MAX_BATCH = 4096
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
        path, sep, func = text.rpartition(":")
        if sep and path.endswith(".py"):
            return cls("python", path, func)
        if text.endswith(".py"):
            return cls("python", text)
        raise ModelSpecError(f"'{text}' is not a model spec.", f"Use one of: {SPEC_FORMS}.")

    def __str__(self) -> str:
        if self.kind == "sample":
            return f"sample:{self.target}"
        return f"{self.target}:{self.func}" if self.kind == "python" else self.target


@dataclass(frozen=True)
class CapturedModel:
    """A captured model: the exported program plus how it was captured.

    The program owns its own copy of the weights: nothing here shares storage with the model
    the caller passed in, and `graph_module()` hands out a fresh copy each time.
    """

    spec: ModelSpec
    program: ExportedProgram
    example_inputs: tuple[torch.Tensor, ...]
    dynamic_batch: bool
    export_seconds: float
    notes: tuple[str, ...] = ()

    def graph_module(self) -> GraphModule:
        """Return a new GraphModule of the captured graph, without the `_guards_fn` input check."""
        with EXPORT_LOCK:  # unlifting traces the program, like torch.export
            module = self.program.module(check_guards=False)
        return copy.deepcopy(module)

    @property
    def parameter_count(self) -> int:
        return sum(int(t.numel()) for t in self.program.parameters())


def capture(
    spec: str | ModelSpec,
    *,
    input_shape: Sequence[int] | None = None,
    max_batch: int = MAX_BATCH,
) -> CapturedModel:
    """Resolve `spec` and capture it; `input_shape` replaces the example input (one tensor)."""
    spec = spec if isinstance(spec, ModelSpec) else ModelSpec.parse(spec)
    if spec.kind == "pt2":
        return _load_pt2(spec, input_shape)
    model, example_inputs = load_model(spec)
    if input_shape is not None:
        example_inputs = (_random_input(input_shape),)
    elif example_inputs is None:
        raise InputShapeError(
            f"{spec} returned a model without example inputs.",
            "Return (model, (example_input,)) from the factory, or give an input shape "
            "(--input-shape 4,1,8,8).",
        )
    start = time.perf_counter()
    program, dynamic, notes = export_model(model, example_inputs, max_batch=max_batch)
    return CapturedModel(
        spec, program, example_inputs, dynamic, time.perf_counter() - start, tuple(notes)
    )


def load_model(spec: ModelSpec) -> tuple[nn.Module, tuple[torch.Tensor, ...] | None]:
    """Build the eager model named by a sample or Python spec, with its example inputs if any."""
    if spec.kind == "sample":
        return _load_sample(spec.target)
    if spec.kind == "python":
        assert spec.func is not None
        return _call_factory(Path(spec.target), spec.func)
    raise ModelSpecError(f"{spec} is an exported program, not an eager model.", "Use capture().")


def export_model(
    model: nn.Module, example_inputs: tuple[torch.Tensor, ...], *, max_batch: int = MAX_BATCH
) -> tuple[ExportedProgram, bool, list[str]]:
    """Export a private eval-mode copy of `model`, dynamic in the batch dimension when it can be.

    Returns the program, whether the batch dimension is dynamic, and notes for the user.
    """
    model = copy.deepcopy(model)
    with contextlib.suppress(NotImplementedError):
        # Prepared/converted PT2E modules refuse eval(); they were moved to eval already.
        model.eval()
    example_inputs = tuple(example_inputs)
    export_inputs = _batch_of_two_if_one(example_inputs)
    dynamic_shapes = _batch_dynamic_shapes(export_inputs, max_batch)
    try:
        with EXPORT_LOCK:
            program = torch.export.export(model, export_inputs, dynamic_shapes=dynamic_shapes)
        return program, dynamic_shapes is not None, []
    except Exception as exc:
        if dynamic_shapes is None or _is_data_dependent(exc):
            raise _explain_export_failure(exc, model, example_inputs) from exc
        dynamic_failure = exc
    # Some models fix their batch size (a reshape with a literal batch, say): capture them
    # for the example's batch rather than not at all.
    try:
        with EXPORT_LOCK:
            program = torch.export.export(model, example_inputs)
    except Exception as exc:
        raise _explain_export_failure(exc, model, example_inputs) from exc
    note = (
        f"The batch dimension could not be made dynamic ({first_line(dynamic_failure, limit=160)}"
        f"), so the model was captured for batch {_batch_size(example_inputs)} only; a reshape "
        "or view with a literal batch size is the usual cause."
    )
    return program, False, [note]


def _load_sample(name: str) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    import sample_models

    if name not in sample_models.SAMPLES:
        raise ModelSpecError(
            f"There is no sample model '{name}'.",
            "Use one of: " + ", ".join(f"sample:{n}" for n in sample_models.names()) + ".",
        )
    return sample_models.build(name)


def _call_factory(path: Path, func: str) -> tuple[nn.Module, tuple[torch.Tensor, ...] | None]:
    module = import_user_file(path, prefix="workbench_user_", error=ModelSpecError)
    module_name = module.__name__
    factory = getattr(module, func, None)
    if not callable(factory):
        found = sorted(
            name
            for name, value in vars(module).items()
            if (inspect.isfunction(value) or _is_module_class(value))
            and value.__module__ == module_name
            and not name.startswith("_")
        )
        listed = ", ".join(found[:20]) + (f" and {len(found) - 20} more" if len(found) > 20 else "")
        raise ModelSpecError(
            f"{path} has no function '{func}'.",
            "Name one of its functions: " + (listed or "(it defines none)") + ".",
        )
    try:
        result = factory()
    except Exception as exc:
        raise ModelSpecError(
            f"{path}:{func}() raised {type(exc).__name__}: {first_line(exc)}",
            "Fix the factory so that calling it with no arguments returns (model, example_inputs).",
        ) from exc
    return _check_factory_result(f"{path}:{func}", result)


def _is_module_class(value: Any) -> bool:
    return inspect.isclass(value) and issubclass(value, nn.Module)


def _check_factory_result(
    where: str, result: Any
) -> tuple[nn.Module, tuple[torch.Tensor, ...] | None]:
    expected = "return (model, example_inputs): an nn.Module and a tuple of example tensors"
    if isinstance(result, nn.Module):
        return result, None
    if not (isinstance(result, tuple | list) and len(result) == 2):
        raise ModelSpecError(f"{where}() returned {_describe(result)}.", f"Make it {expected}.")
    model, inputs = result
    if not isinstance(model, nn.Module):
        raise ModelSpecError(
            f"{where}() returned {_describe(model)} where an nn.Module belongs.",
            f"Make it {expected}.",
        )
    if isinstance(inputs, torch.Tensor):
        inputs = (inputs,)
    if not (isinstance(inputs, tuple | list) and inputs):
        raise ModelSpecError(
            f"{where}() returned {_describe(inputs)} as example inputs.", f"Make it {expected}."
        )
    if not all(isinstance(t, torch.Tensor) for t in inputs):
        kinds = ", ".join(type(t).__name__ for t in inputs)
        raise ModelSpecError(
            f"{where}() returned example inputs of types ({kinds}); only tensors are supported.",
            f"Make it {expected}.",
        )
    return model, tuple(inputs)


def _describe(value: Any) -> str:
    if isinstance(value, tuple | list):
        return f"a {type(value).__name__} of {len(value)} items"
    if value is None:
        return "None"
    kind = type(value).__name__
    return f"{'an' if kind[0].lower() in 'aeiou' else 'a'} {kind}"


def _random_input(shape: Sequence[int]) -> torch.Tensor:
    shape = tuple(int(d) for d in shape)
    if not shape or any(d < 1 for d in shape):
        raise InputShapeError(
            f"Input shape {shape} is not a tensor shape.",
            "Give positive sizes, batch first, e.g. 4,1,8,8.",
        )
    generator = torch.Generator().manual_seed(0)
    return torch.rand(shape, generator=generator)


def _batch_size(inputs: tuple[torch.Tensor, ...]) -> int | None:
    return int(inputs[0].shape[0]) if inputs and inputs[0].dim() > 0 else None


def _batch_of_two_if_one(inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    # export specialises a dimension of size 1, so a batch of one cannot become dynamic.
    if _batch_size(inputs) != 1:
        return inputs
    return tuple(torch.cat([t, t]) if t.dim() > 0 and t.shape[0] == 1 else t for t in inputs)


def _batch_dynamic_shapes(
    inputs: tuple[torch.Tensor, ...], max_batch: int
) -> tuple[dict[int, Any] | None, ...] | None:
    batch = _batch_size(inputs)
    if batch is None:
        return None
    dim = Dim("batch", min=1, max=max(max_batch, batch))
    return tuple({0: dim} if t.dim() > 0 and t.shape[0] == batch else None for t in inputs)


def _is_data_dependent(exc: Exception) -> bool:
    return "data-dependent" in str(exc) or "DataDependent" in type(exc).__name__


_USER_FRAME = re.compile(r'File "([^"]+)", line (\d+), in (\w+)\n\s+(.+)')


def _explain_export_failure(
    exc: Exception, model: nn.Module, inputs: tuple[torch.Tensor, ...]
) -> Exception:
    text = str(exc)
    if _is_data_dependent(exc):
        where = ""
        call = text.split("The following call raised this error:", 1)
        if len(call) == 2 and (frame := _USER_FRAME.search(call[1])):
            where = f" at {frame[1]}:{frame[2]} (`{frame[4].strip()}`)"
        return CaptureError(
            "torch.export cannot capture this model: its forward() branches on tensor values "
            f"(data-dependent control flow){where}.",
            "Rewrite the branch with torch.where or torch.cond, or move it out of forward(); "
            "a Python `if` on a tensor's value cannot be traced into one graph.",
        )
    try:
        with torch.no_grad():
            model(*inputs)
    except Exception as eager_exc:
        shapes = ", ".join(str(tuple(t.shape)) for t in inputs)
        return InputShapeError(
            f"The model does not run on inputs of shape {shapes}: {first_line(eager_exc)}",
            "Give example inputs of the shape forward() expects (--input-shape, batch first).",
        )
    return CaptureError(
        f"torch.export could not capture the model: {type(exc).__name__}: {first_line(exc)}",
        "Make forward() traceable (no Python side effects or tensor-valued branches); "
        "torch.export.draft_export(model, inputs) lists every problem at once.",
    )


def _load_pt2(spec: ModelSpec, input_shape: Sequence[int] | None) -> CapturedModel:
    path = Path(spec.target)
    if not path.is_file():
        raise ModelSpecError(
            f"No such file: {path}.", "Check the path; it is relative to the current directory."
        )
    damaged = _damaged_member(path)
    if damaged is not None:
        raise ModelSpecError(
            f"{path} is corrupt: {damaged} fails its checksum (the file was damaged in transfer "
            "or on disk).",
            "Copy or download it again, or re-create it with torch.export.save.",
        )
    import torchao.quantization.pt2e  # noqa: F401  (registers the quantized_decomposed ops)

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
    if input_shape is not None:
        inputs: tuple[torch.Tensor, ...] = (_random_input(input_shape),)
        _check_program_accepts(program, inputs)
    else:
        inputs = _program_example_inputs(program)
    dynamic = any(
        not isinstance(d, int)
        for node in program.graph.nodes
        if node.op == "placeholder" and isinstance(node.meta.get("val"), torch.Tensor)
        for d in node.meta["val"].shape
    )
    return CapturedModel(spec, program, inputs, dynamic, seconds)


def _damaged_member(path: Path) -> str | None:
    """The first archive member whose CRC does not match (torch.export.load does not check)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError):
        return None  # not a readable zip at all: torch.export.load reports that below


def _check_program_accepts(program: ExportedProgram, inputs: tuple[torch.Tensor, ...]) -> None:
    expected = ", ".join(
        "(" + ", ".join(str(d) for d in shape) + ")" for shape in _user_input_shapes(program)
    )
    got = ", ".join(str(tuple(t.shape)) for t in inputs)
    try:
        with torch.no_grad():
            with EXPORT_LOCK:
                module = program.module()
            module(*inputs)
    except Exception as exc:
        raise InputShapeError(
            f"The saved program does not accept inputs of shape {got}: {first_line(exc)}",
            f"Give inputs shaped like {expected} (batch first), or omit the input shape.",
        ) from exc


def _user_input_shapes(program: ExportedProgram) -> list[tuple[int | str, ...]]:
    names = set(program.graph_signature.user_inputs)
    return [
        tuple(d if isinstance(d, int) else "batch" for d in node.meta["val"].shape)
        for node in program.graph.nodes
        if node.op == "placeholder" and node.name in names and "val" in node.meta
    ]


def _program_example_inputs(program: ExportedProgram) -> tuple[torch.Tensor, ...]:
    stored = program.example_inputs
    if stored is not None and stored[0] and not stored[1]:
        return tuple(t.clone() for t in stored[0])
    names = set(program.graph_signature.user_inputs)
    inputs = []
    for node in program.graph.nodes:
        if node.op != "placeholder" or node.name not in names:
            continue
        val = node.meta["val"]
        shape = [d if isinstance(d, int) else max(2, _lower_bound(program, d)) for d in val.shape]
        inputs.append(torch.rand(shape, generator=torch.Generator().manual_seed(0)).to(val.dtype))
    return tuple(inputs)


def _lower_bound(program: ExportedProgram, dim: torch.SymInt) -> int:
    for symbol, bounds in program.range_constraints.items():
        if str(symbol) == str(dim):
            return int(bounds.lower)
    return 2
