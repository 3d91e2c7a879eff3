"""Resolve a model spec and capture the model with torch.export, with dynamic dimensions.

The batch (dim 0 of every input that has the example's batch size) is dynamic, and so is the
sequence length (dim 1 of integer inputs of two or more dims: token ids, masks) and any dim
the user names (`input_ids:1`). The batch is one named `Dim` shared by every input; the others
are `Dim.DYNAMIC`, so torch may narrow their range (a BERT's sequence to its position
embeddings) without failing; what it kept is in `CapturedModel.dynamic_dims`. A batch or
sequence that cannot be dynamic is captured static with a note; a dim the user named that
cannot be dynamic is an error.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import importlib.util
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
import torch.utils._pytree as pytree
from torch import nn
from torch.export import Dim, ExportedProgram
from torch.fx import GraphModule

from workbench.data.datasets import InputSignature
from workbench.errors import (
    CaptureError,
    InputShapeError,
    ModelSpecError,
    describe_value,
    first_line,
)
from workbench.locks import EXPORT_LOCK
from workbench.model.signature import (
    ModelInputs,
    SignatureError,
    leaf_label,
    output_leaves,
    parameter_names,
)
from workbench.model.userfile import import_user_file

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
        """What data for this model must look like (workbench.data.datasets)."""
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
    """Resolve `spec` and capture it; `input_shape` replaces the example input (one tensor).

    `dynamic` names dims to make dynamic besides the batch and sequence (see the module
    docstring).
    """
    spec = spec if isinstance(spec, ModelSpec) else ModelSpec.parse(spec)
    if spec.kind == "pt2":
        return _load_pt2(spec, input_shape)
    # No export may run while the user's code defines its classes: transformers skips the
    # pytree registration of a ModelOutput class while torch says it is compiling, which a
    # concurrent export (another session's, the pattern-cache warm-up) makes true for every
    # thread, and torch.export then fails on the unregistered output type.
    with EXPORT_LOCK:
        model, example_inputs = load_model(spec)
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


def load_model(spec: ModelSpec) -> tuple[nn.Module, ModelInputs | None]:
    """Build the eager model named by a sample or Python spec, with its example inputs if any."""
    if spec.kind == "sample":
        return _load_sample(spec.target)
    if spec.kind == "python":
        assert spec.func is not None
        return _call_factory(Path(spec.target), spec.func)
    raise ModelSpecError(f"{spec} is an exported program, not an eager model.", "Use capture().")


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
    placeholders = _user_placeholders(program)
    names = _placeholder_names(program, parameters, len(placeholders))
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
            low, high = _symbol_range(program, size)
            found.append(DynamicDim(name, dim, kinds[symbol], low, high))
    return tuple(found)


def _user_placeholders(program: ExportedProgram) -> list[torch.fx.Node]:
    names = set(program.graph_signature.user_inputs)
    return [n for n in program.graph.nodes if n.op == "placeholder" and n.name in names]


def _placeholder_names(
    program: ExportedProgram, parameters: Sequence[str], count: int
) -> list[str]:
    """Names of the user inputs as the signature names them (from the program's in_spec)."""
    in_spec = program.call_spec.in_spec
    if in_spec is not None:
        try:
            args, kwargs = pytree.tree_unflatten([torch.zeros(())] * in_spec.num_leaves, in_spec)
            named = ModelInputs(tuple(args), dict(kwargs)).named_tensors(parameters)
            if len(named) == count:
                return [name for name, _ in named]
        except (TypeError, ValueError):
            pass
    return [n.name for n in _user_placeholders(program)]


def _symbol_range(program: ExportedProgram, size: torch.SymInt) -> tuple[int, int | None]:
    bounds = program.range_constraints.get(size.node.expr)
    if bounds is None:
        return 1, None
    upper = None if "oo" in str(bounds.upper) else int(bounds.upper)  # oo, int_oo: unbounded
    return int(bounds.lower), upper


def output_names(program: ExportedProgram) -> tuple[str, ...]:
    """The program's output leaves by label (`logits`, `0`, `output` for a bare tensor)."""
    out_spec = program.call_spec.out_spec
    if out_spec is None:
        return ()
    try:
        dummy = pytree.tree_unflatten([torch.zeros(())] * out_spec.num_leaves, out_spec)
    except (TypeError, ValueError):
        return ()
    return tuple(leaf_label(path) for path, _ in output_leaves(dummy))


def _load_sample(name: str) -> tuple[nn.Module, ModelInputs]:
    import sample_models

    if name not in sample_models.SAMPLES:
        raise ModelSpecError(
            f"There is no sample model '{name}'.",
            "Use one of: " + ", ".join(f"sample:{n}" for n in sample_models.names()) + ".",
        )
    model, inputs = sample_models.build(name)
    return model, ModelInputs.of(inputs)


def _call_factory(path: Path, func: str) -> tuple[nn.Module, ModelInputs | None]:
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


def _check_factory_result(where: str, result: Any) -> tuple[nn.Module, ModelInputs | None]:
    expected = (
        "return (model, example_inputs): an nn.Module and its example inputs (a tensor, a "
        "tuple of positional arguments, a dict of keyword arguments, or a pair (args, kwargs))"
    )
    if isinstance(result, nn.Module):
        return result, None
    if not (isinstance(result, tuple | list) and len(result) == 2):
        raise ModelSpecError(
            f"{where}() returned {describe_value(result)}.", f"Make it {expected}."
        )
    model, inputs = result
    if not isinstance(model, nn.Module):
        raise ModelSpecError(
            f"{where}() returned {describe_value(model)} where an nn.Module belongs.",
            f"Make it {expected}.",
        )
    try:
        example = ModelInputs.of(inputs)
    except SignatureError as exc:
        raise ModelSpecError(f"{where}() returned {describe_value(inputs)} as example inputs.",
                             f"Make it {expected}.") from exc  # fmt: skip
    leaves = pytree.tree_leaves((example.args, example.kwargs))
    strange = sorted({type(v).__name__ for v in leaves
                      if not isinstance(v, torch.Tensor | int | float | bool)})  # fmt: skip
    if not example.tensors():
        kinds = ", ".join(type(v).__name__ for v in (*example.args, *example.kwargs.values()))
        raise ModelSpecError(
            f"{where}() returned example inputs of types ({kinds}); only tensors are supported.",
            f"Make it {expected}.",
        )
    if strange:
        raise ModelSpecError(
            f"{where}() returned example inputs holding {', '.join(strange)}; only tensors "
            "(and plain numbers) are supported.",
            f"Make it {expected}.",
        )
    return model, example


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
    if input_shape is not None:
        inputs = ModelInputs((_random_input(input_shape),))
        _check_program_accepts(program, inputs)
    else:
        inputs = _program_example_inputs(program)
    with EXPORT_LOCK:
        parameters = parameter_names(program.module(check_guards=False))
    return CapturedModel(
        spec, program, inputs, dynamic_dims(program, parameters), seconds, (), parameters,
        output_names(program),
    )  # fmt: skip


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
        return None  # not a readable zip at all: torch.export.load reports that below


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
    names = set(program.graph_signature.user_inputs)
    return [
        tuple(d if isinstance(d, int) else "batch" for d in node.meta["val"].shape)
        for node in program.graph.nodes
        if node.op == "placeholder" and node.name in names and "val" in node.meta
    ]


def _program_example_inputs(program: ExportedProgram) -> ModelInputs:
    stored = program.example_inputs
    if stored is not None and (stored[0] or stored[1]):
        args, kwargs = pytree.tree_map(
            lambda v: v.clone() if isinstance(v, torch.Tensor) else v, stored
        )
        return ModelInputs(tuple(args), dict(kwargs))
    generator = torch.Generator().manual_seed(0)
    leaves = []
    for node in _user_placeholders(program):
        val = node.meta["val"]
        shape = [d if isinstance(d, int) else max(2, _lower_bound(program, d)) for d in val.shape]
        leaves.append(torch.rand(shape, generator=generator).to(val.dtype))
    in_spec = program.call_spec.in_spec
    if in_spec is None:
        return ModelInputs(tuple(leaves))
    args, kwargs = pytree.tree_unflatten(leaves, in_spec)
    return ModelInputs(tuple(args), dict(kwargs))


def _lower_bound(program: ExportedProgram, dim: torch.SymInt) -> int:
    for symbol, bounds in program.range_constraints.items():
        if str(symbol) == str(dim):
            return int(bounds.lower)
    return 2
