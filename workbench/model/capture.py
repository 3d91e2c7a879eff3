"""Capture a model with torch.export, with dynamic dimensions.

The model comes from a source (workbench.model.sources: a sample, a Python factory or a .pt2);
a .pt2 holds a program exported already, which is taken as it is. The batch (dim 0 of every
input that has the example's batch size) is dynamic, and so is the sequence length (dim 1 of
integer inputs of two or more dims: token ids, masks) and any dim the user names
(`input_ids:1`). The batch is one named `Dim` shared by every input; the others are
`Dim.DYNAMIC`, so torch may narrow their range (a BERT's sequence to its position embeddings)
without failing; what it kept is in `CapturedModel.dynamic_dims`. A batch or sequence that
cannot be dynamic is captured static with a note; a dim the user named that cannot be dynamic
is an error.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.utils._pytree as pytree
from torch import nn
from torch.export import Dim, ExportedProgram
from torch.fx import GraphModule

from workbench.errors import CaptureError, InputShapeError, first_line
from workbench.locks import EXPORT_LOCK
from workbench.model.program import input_names, output_names, symbol_range, user_placeholders
from workbench.model.signature import InputSignature, ModelInputs, parameter_names
from workbench.model.sources import LoadedModel, ModelSpec, SavedProgram, resolve

__all__ = [
    "MAX_BATCH",
    "CapturedModel",
    "DimRequest",
    "DynamicDim",
    "ModelSpec",
    "capture",
    "dynamic_dims",
    "export_model",
    "load_model",
    "output_names",
]

MAX_BATCH = 4096


@dataclass(frozen=True)
class DynamicDim:
    """One dimension of one input that the exported program accepts at any size in a range."""

    input: str  # the tensor's name (signature.ModelInputs.named_tensors)
    dim: int
    name: str  # batch | seq | the user's
    min: int
    max: int | None  # None: unbounded

    def as_dict(self) -> dict[str, Any]:
        return {"input": self.input, "dim": self.dim, "name": self.name, "min": self.min,
                "max": self.max}  # fmt: skip

    def __str__(self) -> str:
        top = "∞" if self.max is None else str(self.max)
        return f"{self.input}:{self.dim} ({self.name}, {self.min}..{top})"


@dataclass(frozen=True)
class DimRequest:
    """A dimension the user asks to be dynamic: `NAME:DIM` (NAME as in the signature)."""

    input: str
    dim: int

    def __str__(self) -> str:
        return f"{self.input}:{self.dim}"

    @classmethod
    def parse(cls, text: str) -> tuple[DimRequest, ...]:
        """`input_ids:1` or `input_ids:1,2`."""
        name, sep, dims = text.strip().rpartition(":")
        try:
            numbers = tuple(int(d) for d in dims.split(",") if d.strip())
        except ValueError:
            numbers = ()
        if not (sep and name and numbers) or min(numbers) < 0:
            raise InputShapeError(
                f"'{text}' does not name a dynamic dimension.",
                "Write INPUT:DIM with the input's name and a dimension number, e.g. "
                "input_ids:1 (several dims: input_ids:1,2).",
            )
        return tuple(cls(name, d) for d in numbers)


@dataclass(frozen=True)
class CapturedModel:
    """A captured model: the exported program plus how it was captured.

    The program owns its own copy of the weights: nothing here shares storage with the model
    the caller passed in, and `graph_module()` hands out a fresh copy each time.
    """

    spec: ModelSpec
    program: ExportedProgram
    example_inputs: ModelInputs
    dynamic_dims: tuple[DynamicDim, ...]
    export_seconds: float
    notes: tuple[str, ...] = ()
    parameters: tuple[str, ...] = ()  # the forward's parameter names
    outputs: tuple[str, ...] = ()  # output leaves by label (signature.leaf_label)
    requested: tuple[DimRequest, ...] = ()  # the dims the user asked to be dynamic

    @property
    def dynamic_batch(self) -> bool:
        return any(d.dim == 0 for d in self.dynamic_dims)

    def input_names(self) -> list[str]:
        return [name for name, _ in self.example_inputs.named_tensors(self.parameters)]

    @property
    def signature(self) -> InputSignature:
        """What data for this model must look like: its example inputs and dynamic dims."""
        dims = {(d.input, d.dim): d.max for d in self.dynamic_dims}
        return InputSignature(self.example_inputs, self.parameters, dims)

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
    dynamic: Sequence[DimRequest] = (),
    max_batch: int = MAX_BATCH,
) -> CapturedModel:
    """Load what `spec` names and capture it; `input_shape` replaces the example input (one
    tensor).

    `dynamic` names dims to make dynamic besides the batch and sequence (see the module
    docstring). A saved program is taken as exported: `dynamic` and `max_batch` do not apply.
    """
    spec = spec if isinstance(spec, ModelSpec) else ModelSpec.parse(spec)
    loaded = load_model(spec)
    if isinstance(loaded, SavedProgram):
        return _saved_capture(spec, loaded, input_shape)
    model, example_inputs = loaded.model, loaded.example_inputs
    if input_shape is not None:
        example_inputs = ModelInputs((_random_input(input_shape),))
    elif example_inputs is None:
        raise InputShapeError(
            f"{spec} returned a model without example inputs.",
            "Return (model, (example_input,)) from the factory, or give an input shape "
            "(--input-shape 4,1,8,8).",
        )
    _register_output_types(model, example_inputs)
    start = time.perf_counter()
    parameters = parameter_names(model)
    program, notes = export_model(
        model, example_inputs, dynamic=dynamic, parameters=parameters, max_batch=max_batch
    )
    return CapturedModel(
        spec, program, example_inputs, dynamic_dims(program, parameters),
        time.perf_counter() - start, tuple(notes), parameters, output_names(program),
        tuple(dynamic),
    )  # fmt: skip


def load_model(spec: str | ModelSpec) -> LoadedModel:
    """What the spec's source gives capture: an eager model with its example inputs (if the
    source has any), or a saved program (workbench.model.sources)."""
    return resolve(spec).load()


def _saved_capture(
    spec: ModelSpec, saved: SavedProgram, input_shape: Sequence[int] | None
) -> CapturedModel:
    inputs = saved.example_inputs
    if input_shape is not None:
        inputs = ModelInputs((_random_input(input_shape),))
        _check_program_accepts(saved.program, inputs)
    program, parameters = saved.program, saved.parameters
    return CapturedModel(
        spec, program, inputs, dynamic_dims(program, parameters), saved.load_seconds, (),
        parameters, output_names(program),
    )  # fmt: skip


def _register_output_types(model: nn.Module, inputs: ModelInputs) -> None:
    """Call the model once eagerly, with no export running, so that the output classes that
    register themselves as pytree nodes when made (transformers' ModelOutput) do so.

    The call leaves the model as it was: buffers (BatchNorm statistics in train mode) and
    the random number generator's state are put back.
    """
    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
    rng = torch.random.get_rng_state()
    try:
        with EXPORT_LOCK, torch.no_grad():
            inputs.call(model)
    except Exception:  # torch.export says what is wrong with the model, next
        pass
    finally:
        torch.random.set_rng_state(rng)
        with torch.no_grad():
            for name, value in model.named_buffers():
                value.copy_(buffers[name])


def export_model(
    model: nn.Module,
    example_inputs: ModelInputs | tuple[Any, ...],
    *,
    dynamic: Sequence[DimRequest] = (),
    parameters: Sequence[str] | None = None,
    max_batch: int = MAX_BATCH,
    exactly: Sequence[DynamicDim] | None = None,
) -> tuple[ExportedProgram, list[str]]:
    """Export a private eval-mode copy of `model` with dynamic batch, sequence and `dynamic` dims.

    Returns the program and notes for the user. Auto-detected dims that cannot be dynamic are
    dropped with a note (sequence first, then batch); a requested one raises CaptureError.
    `exactly` makes those dims dynamic and no others (re-exporting a stage of a captured
    model keeps its dims; any that fails raises).
    """
    model = copy.deepcopy(model)
    with contextlib.suppress(NotImplementedError):
        # Prepared/converted PT2E modules refuse eval(); they were moved to eval already.
        model.eval()
    example_inputs = ModelInputs.of(example_inputs)
    names = tuple(parameters) if parameters is not None else parameter_names(model)
    export_inputs = _batch_of_two_if_one(example_inputs)
    if exactly is not None:
        dynamic = [DimRequest(d.input, d.dim) for d in exactly]
        wanted = _wanted_dims(export_inputs, names, dynamic, auto=False)
    else:
        wanted = _wanted_dims(export_inputs, names, dynamic)
    # (dims, the kind this attempt gives up): all of them, then without the sequence, then
    # without the batch (static).
    attempts: list[tuple[dict[tuple[int, int], str], str | None]] = [(wanted, None)]
    for kind in ("seq", "batch"):
        last = attempts[-1][0]
        if kind in last.values():
            attempts.append(({key: k for key, k in last.items() if k != kind}, kind))
    notes: list[str] = []
    failure: Exception | None = None
    for dims, dropping in attempts:
        if dropping is not None and failure is not None:
            notes.append(_dropped_note(dropping, failure, example_inputs))
        inputs = export_inputs if "batch" in dims.values() else example_inputs
        # A failed export leaves its dynamic marks on the tensors: each attempt gets copies.
        inputs = inputs.map(torch.clone)
        shapes = _dynamic_shapes(model, inputs, dims, max_batch) if dims else None
        try:
            with EXPORT_LOCK:
                program = torch.export.export(
                    model, inputs.args, inputs.kwargs or None, dynamic_shapes=shapes
                )
            return program, notes
        except Exception as exc:
            if _is_data_dependent(exc) or not dims:
                raise _explain_export_failure(exc, model, example_inputs) from exc
            if "user" in dims.values() and "seq" not in dims.values():
                asked = ", ".join(f"{r.input}:{r.dim}" for r in dynamic)
                raise CaptureError(
                    f"torch.export cannot make {asked} dynamic: {first_line(exc, limit=240)}",
                    "Leave those dims static (drop --dynamic), or change the model so that "
                    "their size is not fixed in code.",
                ) from exc
            failure = exc
    raise AssertionError("the last attempt is static and raises")  # pragma: no cover


def _wanted_dims(
    inputs: ModelInputs,
    parameters: Sequence[str],
    requested: Sequence[DimRequest],
    *,
    auto: bool = True,
) -> dict[tuple[int, int], str]:
    """{(tensor index, dim): "batch" | "seq" | "user"} for the flat tensors of `inputs`."""
    named = inputs.named_tensors(parameters)
    by_name = {name: i for i, (name, _) in enumerate(named)}
    wanted: dict[tuple[int, int], str] = {}
    batch = inputs.batch_size
    for i, (_, tensor) in enumerate(named if auto else ()):
        if batch is not None and tensor.dim() > 0 and tensor.shape[0] == batch:
            wanted[(i, 0)] = "batch"
        token_like = not tensor.is_floating_point() and tensor.dim() >= 2
        if token_like and tensor.shape[1] > 1:
            wanted[(i, 1)] = "seq"
    for request in requested:
        if request.input not in by_name:
            raise InputShapeError(
                f"The model has no input named '{request.input}' (asked to make dim "
                f"{request.dim} dynamic).",
                f"Name one of its inputs: {', '.join(by_name) or '(none)'}.",
            )
        index = by_name[request.input]
        tensor = named[index][1]
        if request.dim >= tensor.dim():
            raise InputShapeError(
                f"{request.input} has {tensor.dim()} dims, so dim {request.dim} cannot be dynamic.",
                f"Give a dim from 0 to {tensor.dim() - 1}.",
            )
        if tensor.shape[request.dim] < 2:
            raise InputShapeError(
                f"{request.input} has size {tensor.shape[request.dim]} in dim {request.dim}: "
                "torch.export fixes dims of size 0 and 1.",
                "Give example inputs with at least 2 in that dim.",
            )
        wanted[(index, request.dim)] = "user"
    return wanted


def _dynamic_shapes(
    model: nn.Module, inputs: ModelInputs, dims: dict[tuple[int, int], str], max_batch: int
) -> Any:
    """dynamic_shapes for torch.export: the inputs' structure with a dim spec per tensor."""
    counter = iter(range(len(inputs.tensors())))
    # One named Dim ties the batch of every input; other dims may be narrowed by torch.
    batch = Dim("batch", min=1, max=max(max_batch, inputs.batch_size or 1))

    def spec(value: Any) -> Any:
        if not isinstance(value, torch.Tensor):
            return None
        index = next(counter)
        own = {dim: batch if dim == 0 else Dim.DYNAMIC for i, dim in dims if i == index}
        return own or None

    args, kwargs = pytree.tree_map(spec, (inputs.args, inputs.kwargs))
    if not kwargs:
        return tuple(args)
    bound = inspect.signature(model.forward).bind(*args, **kwargs)
    return dict(bound.arguments)


def _dropped_note(kind: str, exc: Exception, inputs: ModelInputs) -> str:
    why = first_line(exc, limit=160)
    if kind == "batch":
        return (
            f"The batch dimension could not be made dynamic ({why}), so the model was "
            f"captured for batch {inputs.batch_size} only; a reshape or view with a literal "
            "batch size is the usual cause."
        )
    return (
        f"The sequence length (dim 1 of the integer inputs) could not be made dynamic ({why}), "
        "so the model was captured for the example's length only."
    )


def dynamic_dims(
    program: ExportedProgram, parameters: Sequence[str] = ()
) -> tuple[DynamicDim, ...]:
    """The dims of the program's inputs that are symbolic, with the range torch kept."""
    placeholders = user_placeholders(program)
    names = input_names(program, parameters)
    found: list[DynamicDim] = []
    kinds: dict[str, str] = {}
    for name, node in zip(names, placeholders, strict=True):
        val = node.meta.get("val")
        if not isinstance(val, torch.Tensor):
            continue
        for dim, size in enumerate(val.shape):
            if isinstance(size, int):
                continue
            symbol = str(size)
            if symbol not in kinds:
                kinds[symbol] = "batch" if dim == 0 else "seq" if dim == 1 else f"d{dim}"
            low, high = symbol_range(program, size)
            found.append(DynamicDim(name, dim, kinds[symbol], low, high))
    return tuple(found)


def _random_input(shape: Sequence[int]) -> torch.Tensor:
    shape = tuple(int(d) for d in shape)
    if not shape or any(d < 1 for d in shape):
        raise InputShapeError(
            f"Input shape {shape} is not a tensor shape.",
            "Give positive sizes, batch first, e.g. 4,1,8,8.",
        )
    generator = torch.Generator().manual_seed(0)
    return torch.rand(shape, generator=generator)


def _batch_of_two_if_one(inputs: ModelInputs) -> ModelInputs:
    # export specialises a dimension of size 1, so a batch of one cannot become dynamic.
    if inputs.batch_size != 1:
        return inputs
    return inputs.batched(lambda t: torch.cat([t, t]))


def _is_data_dependent(exc: Exception) -> bool:
    return "data-dependent" in str(exc) or "DataDependent" in type(exc).__name__


_USER_FRAME = re.compile(r'File "([^"]+)", line (\d+), in (\w+)\n\s+(.+)')


def _explain_export_failure(exc: Exception, model: nn.Module, inputs: ModelInputs) -> Exception:
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
            inputs.call(model)
    except Exception as eager_exc:
        return InputShapeError(
            f"The model does not run on its example inputs "
            f"({inputs.describe(parameter_names(model))}): "
            f"{first_line(eager_exc)}",
            "Give example inputs of the shape forward() expects (--input-shape, batch first).",
        )
    return CaptureError(
        f"torch.export could not capture the model: {type(exc).__name__}: {first_line(exc)}",
        "Make forward() traceable (no Python side effects or tensor-valued branches); "
        "torch.export.draft_export(model, inputs) lists every problem at once.",
    )


def _check_program_accepts(program: ExportedProgram, inputs: ModelInputs) -> None:
    expected = ", ".join(
        "(" + ", ".join(str(d) for d in shape) + ")" for shape in _user_input_shapes(program)
    )
    got = ", ".join(str(tuple(t.shape)) for t in inputs.tensors())
    try:
        with torch.no_grad():
            with EXPORT_LOCK:
                module = program.module()
            inputs.call(module)
    except Exception as exc:
        raise InputShapeError(
            f"The saved program does not accept inputs of shape {got}: {first_line(exc)}",
            f"Give inputs shaped like {expected} (batch first), or omit the input shape.",
        ) from exc


def _user_input_shapes(program: ExportedProgram) -> list[tuple[int | str, ...]]:
    return [
        tuple(d if isinstance(d, int) else "batch" for d in node.meta["val"].shape)
        for node in user_placeholders(program)
        if "val" in node.meta
    ]
