"""Deployable artifacts: the converted model as a .pt2 (pruned, reload-checked), recipe, report."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.export import ExportedProgram
from torch.fx import GraphModule

from workbench.errors import WorkbenchError
from workbench.locks import EXPORT_LOCK
from workbench.model.capture import CapturedModel, DynamicDim, dynamic_dims, export_model
from workbench.model.signature import LeafCheck, ModelInputs, compare_outputs

__all__ = [
    "DEBUG_METADATA",
    "SavedModel",
    "check_writable",
    "loading_lines",
    "program_for",
    "program_size",
    "prune",
    "save_program",
    "temporary_beside",
    "tensor_expression",
    "write_text",
]


@dataclass(frozen=True)
class SavedModel:
    """A .pt2 written and checked: reloaded outputs compared with the in-memory model."""

    path: Path
    bytes: int
    export_seconds: float
    reload_seconds: float
    max_abs_diff: float
    bit_equal: bool
    batches_checked: int
    dynamic_dims: tuple[DynamicDim, ...]
    outputs: tuple[LeafCheck, ...] = ()  # every output leaf, worst over the batches checked

    @property
    def dynamic_batch(self) -> bool:
        return any(d.dim == 0 for d in self.dynamic_dims)


def prune(gm: GraphModule) -> GraphModule:
    """A GraphModule holding only the parameters and buffers its graph still uses.

    After convert, the float weights that folding and quantization replaced are still
    attributes of the module; exported as they are, the int8 file is larger than the float.
    """
    return GraphModule(gm, gm.graph)


# Per-node history the workbench uses for views and diffs; a deployed model does not need it
# (on the digits CNN it is 40 % of the file: 96 KB with it, 66 KB without).
DEBUG_METADATA = ("from_node", "stack_trace", "nn_module_stack", "torch_fn", "source_fn_stack")


def program_for(
    gm: GraphModule,
    example_inputs: ModelInputs,
    *,
    dims: Sequence[DynamicDim] | None = None,
    parameters: Sequence[str] | None = None,
    keep_debug: bool = False,
) -> ExportedProgram:
    """Re-export a stage's module for saving, dynamic in `dims` (those of the capture; None:
    batch and sequence where possible).

    Unless `keep_debug`, per-node debug metadata is left out of the program.
    """
    program, _ = export_model(
        prune(gm), ModelInputs.of(example_inputs), parameters=parameters, exactly=dims
    )
    if not keep_debug:
        for node in program.graph.nodes:
            for key in DEBUG_METADATA:
                node.meta.pop(key, None)
    return program


def save_program(
    program: ExportedProgram,
    path: Path,
    *,
    reference: torch.nn.Module,
    check_inputs: Iterable[ModelInputs],
    atol: float = 1e-5,
    parameters: Sequence[str] = (),
) -> SavedModel:
    """Save atomically, reload, and compare with `reference` before the file appears at `path`.

    Every output leaf is compared on every input of `check_inputs`. Nothing is left at
    `path` when anything fails.
    """
    path = Path(path)
    check_writable(path)
    with temporary_beside(path) as tmp:
        start = time.perf_counter()
        with EXPORT_LOCK:  # deserializing traces the graph: not thread-safe either
            torch.export.save(program, str(tmp))
            saved = time.perf_counter()
            reloaded = torch.export.load(str(tmp)).module()
        reload_seconds = time.perf_counter() - saved
        leaves: dict[str, LeafCheck] = {}
        count = 0
        with torch.no_grad():
            for inputs in check_inputs:
                inputs = ModelInputs.of(inputs)
                try:
                    got = inputs.call(reloaded)
                except Exception as exc:
                    raise RuntimeError(
                        f"the reloaded {path.name} fails on inputs {inputs.describe(parameters)}"
                        f": {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                        "; the file was not written"
                    ) from exc
                for check in compare_outputs(inputs.call(reference), got):
                    kept = leaves.get(check.output)
                    leaves[check.output] = LeafCheck(
                        check.output, check.shape,
                        max(check.max_abs_diff, kept.max_abs_diff if kept else 0.0),
                        check.bit_equal and (kept.bit_equal if kept else True),
                    )  # fmt: skip
                count += 1
        worst = max((c.max_abs_diff for c in leaves.values()), default=0.0)
        equal = all(c.bit_equal for c in leaves.values())
        if worst > atol:
            raise RuntimeError(
                f"the reloaded {path.name} differs from the in-memory model by {worst:.3g} "
                f"(tolerance {atol}); the file was not written"
            )
        os.replace(tmp, path)
    return SavedModel(
        path, path.stat().st_size, saved - start, reload_seconds, worst, equal, count,
        dynamic_dims(program, parameters), tuple(leaves.values()),
    )  # fmt: skip


def program_size(program: ExportedProgram) -> int:
    """Bytes the program takes as a .pt2 file."""
    with tempfile.TemporaryDirectory() as folder:
        target = Path(folder) / "model.pt2"
        with EXPORT_LOCK:
            torch.export.save(program, str(target))
        return target.stat().st_size


# --- loading instructions -------------------------------------------------------------------

# Modules whose pytree types torch itself knows; any other module defining an input or output
# type (transformers.modeling_outputs for a ModelOutput) must be imported before loading.
_BUILTIN_TREE_MODULES = ("builtins", "collections", "torch")
_LINE_LENGTH = 88


def loading_lines(captured: CapturedModel, path: str | Path = "model.pt2") -> str:
    """Python lines that load the model's saved .pt2 in a fresh interpreter and call it once.

    `import torchao` registers the quantized_decomposed ops an int8 program calls; without it
    `torch.export.load` fails ("We ran into an error when deserializing the saved file"). The
    module defining each input/output pytree type is imported too: `import transformers`
    alone does not define ModelOutput classes, `import transformers.modeling_outputs` does.
    The call takes inputs of the example's shapes and dtypes; its result is `output`.
    """
    spec = captured.program.call_spec
    trees = [tree for tree in (spec.in_spec, spec.out_spec) if tree is not None]
    modules = sorted({m for tree in trees for m in _tree_modules(tree)})
    lines = [
        "import torch",
        "import torchao  # registers the quantized_decomposed ops the int8 program calls",
    ]
    lines += [f"import {m}  # defines the model's input/output types (pytrees)" for m in modules]
    lines += [
        "",
        "# torch.export.load may unpickle parts of the file: load only files you trust.",
        f"program = torch.export.load({json.dumps(str(path))})",
        "model = program.module()",
    ]
    if captured.dynamic_dims:
        lines.append("# dynamic: " + ", ".join(str(d) for d in captured.dynamic_dims))
    inputs = captured.example_inputs
    arguments = [_expression(v) for v in inputs.args]
    arguments += [f"{k}={_expression(v)}" for k, v in inputs.kwargs.items()]
    call = f"output = model({', '.join(arguments)})"
    if len(call) > _LINE_LENGTH:
        call = "output = model(\n" + "".join(f"    {a},\n" for a in arguments) + ")"
    lines.append(call)
    return "\n".join(lines) + "\n"


def _tree_modules(tree: Any) -> set[str]:
    """Modules defining the non-builtin container types of a pytree spec."""
    found: set[str] = set()
    if tree.type is not None:
        module = tree.type.__module__
        if module.split(".")[0] not in _BUILTIN_TREE_MODULES and module != "__main__":
            found.add(module)
    for child in tree.children():
        found |= _tree_modules(child)
    return found


def _expression(value: Any) -> str:
    """Python source for a value like `value`: random tensors of its shape and dtype."""
    if isinstance(value, torch.Tensor):
        return tensor_expression(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k!r}: {_expression(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_expression(v) for v in value) + "]"
    if isinstance(value, tuple):
        items = [_expression(v) for v in value]
        return "(" + ", ".join(items) + ("," if len(items) == 1 else "") + ")"
    return repr(value)


def tensor_expression(t: torch.Tensor) -> str:
    """Python source for a tensor of `t`'s shape and dtype: random values in its range."""
    shape = ", ".join(str(int(s)) for s in t.shape)
    dtype = str(t.dtype).removeprefix("torch.")
    if t.dtype.is_floating_point:
        return f"torch.randn({shape}{'' if t.dtype == torch.float32 else f', dtype=torch.{dtype}'})"
    size = f"({shape}{',' if t.dim() == 1 else ''})"
    if t.dtype == torch.bool or t.numel() == 0:
        return f"torch.ones({size}, dtype=torch.{dtype})"
    low, high = int(t.min()), int(t.max())
    return f"torch.randint({low}, {high + 1}, {size}, dtype=torch.{dtype})"


def check_writable(path: Path) -> None:
    """Raise WorkbenchError unless a file can be written at `path` (checked before long work)."""
    path = Path(path)
    if path.is_dir():
        raise WorkbenchError(f"Cannot write {path}: it is a folder.", "Give a file name.")
    if not path.parent.is_dir():
        raise WorkbenchError(
            f"Cannot write {path}: the folder {path.parent} does not exist.", "Create it first."
        )
    if not os.access(path.parent, os.W_OK):
        raise WorkbenchError(
            f"Cannot write {path}: no permission to write in {path.parent}.",
            "Choose a folder you can write to.",
        )


def write_text(path: Path, text: str) -> None:
    """Write a text file atomically (a failure leaves any previous file as it was)."""
    path = Path(path)
    with temporary_beside(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)


@contextlib.contextmanager
def temporary_beside(path: Path) -> Iterator[Path]:
    """A path with the same name in a private folder beside `path` (same filesystem, so the
    final os.replace is atomic; same name, since torch.export.save names the archive's root
    folder after the file)."""
    folder = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    try:
        yield folder / path.name
    finally:
        shutil.rmtree(folder, ignore_errors=True)
