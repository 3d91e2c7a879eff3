"""Reading an exported program's user inputs and outputs: placeholders, names and dim ranges.

Shared by capture (which dims came out dynamic, and how far) and the .pt2 source (example
inputs for a program saved without them).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.utils._pytree as pytree
from torch.export import ExportedProgram

from workbench.model.signature import ModelInputs, leaf_label, output_leaves

__all__ = ["input_names", "output_names", "symbol_range", "user_placeholders"]


def user_placeholders(program: ExportedProgram) -> list[torch.fx.Node]:
    """The placeholders of the user's inputs (not the lifted parameters and buffers), in order."""
    names = set(program.graph_signature.user_inputs)
    return [n for n in program.graph.nodes if n.op == "placeholder" and n.name in names]


def symbol_range(program: ExportedProgram, size: torch.SymInt) -> tuple[int, int | None]:
    """The (min, max) torch kept for a symbolic size; max None: unbounded."""
    bounds = program.range_constraints.get(size.node.expr)
    if bounds is None:
        return 1, None
    upper = None if "oo" in str(bounds.upper) else int(bounds.upper)  # oo, int_oo: unbounded
    return int(bounds.lower), upper


def input_names(program: ExportedProgram, parameters: Sequence[str]) -> list[str]:
    """Names of the user inputs as the signature names them (from the program's in_spec);
    the placeholders' own names when the in_spec does not give one per placeholder."""
    placeholders = user_placeholders(program)
    dummy = _zeros_in(program.call_spec.in_spec)
    if dummy is not None:
        try:
            args, kwargs = dummy
            named = ModelInputs(tuple(args), dict(kwargs)).named_tensors(parameters)
            if len(named) == len(placeholders):
                return [name for name, _ in named]
        except (TypeError, ValueError):
            pass
    return [n.name for n in placeholders]


def output_names(program: ExportedProgram) -> tuple[str, ...]:
    """The program's output leaves by label (`logits`, `0`, `output` for a bare tensor)."""
    dummy = _zeros_in(program.call_spec.out_spec)
    if dummy is None:
        return ()
    return tuple(leaf_label(path) for path, _ in output_leaves(dummy))


def _zeros_in(spec: pytree.TreeSpec | None) -> Any | None:
    """The structure `spec` describes with a 0-dim zero at every leaf; None if it has none."""
    if spec is None:
        return None
    try:
        return pytree.tree_unflatten([torch.zeros(())] * spec.num_leaves, spec)
    except (TypeError, ValueError):
        return None
