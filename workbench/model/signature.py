"""A model's inputs and outputs as pytrees: how to call it, name its tensors, pick its prediction.

Every consumer goes through this module: capture (which dims are dynamic), data (binding a
batch to the forward's parameters), evaluation and the QAT loss (the prediction leaf),
per-node SQNR (flat placeholders), latency and the reload check (every output leaf).

- `ModelInputs` is one call's positional and keyword arguments; tensors may sit inside
  tuples, lists and dicts. Keyword arguments keep the example's order, since the exported
  graph's placeholders follow the order they were flattened in.
- Tensors are named like the forward's parameters: `input_ids`, `pixel_values`, and for
  nested values `inputs[0]` or `batch['image']`.
- `InputSignature` is what data must look like for a model: its example inputs, the
  forward's parameter names and which dims may vary (up to what size).
- The prediction is the output leaf a recipe's `output` names (a key such as `logits`, a
  key path such as `['logits']`, or the index of a leaf in flattening order); by default
  `logits` when the output has one, else the first floating-point tensor.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.utils._pytree as pytree
from torch import nn

from workbench.errors import WorkbenchError

__all__ = [
    "TARGET_KEYS",
    "Bound",
    "InputSignature",
    "LeafCheck",
    "ModelInputs",
    "SignatureError",
    "bind",
    "compare_outputs",
    "leaf_label",
    "max_leaf_diff",
    "output_leaves",
    "parameter_names",
    "prediction",
    "prediction_label",
]


class SignatureError(WorkbenchError):
    """Inputs or outputs that do not fit the model's signature."""


@dataclass(frozen=True)
class ModelInputs:
    """One call's arguments: `model(*args, **kwargs)`."""

    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, value: Any) -> ModelInputs:
        """Inputs from what a factory or a user may write.

        A tensor is one positional argument; a tuple or list is the positional arguments; a
        dict is the keyword arguments; a pair `(tuple, dict)` is both.
        """
        if isinstance(value, ModelInputs):
            return value
        if isinstance(value, torch.Tensor):
            return cls((value,))
        if isinstance(value, Mapping):
            return cls((), dict(value))
        if (
            isinstance(value, tuple | list)
            and len(value) == 2
            and isinstance(value[0], tuple | list)
            and isinstance(value[1], Mapping)
        ):
            return cls(tuple(value[0]), dict(value[1]))
        if isinstance(value, tuple | list):
            return cls(tuple(value))
        raise SignatureError(
            f"Example inputs of type {type(value).__name__} are not model inputs.",
            "Give a tensor, a tuple of positional arguments, a dict of keyword arguments, or "
            "a pair (args, kwargs); tensors may be nested in tuples, lists and dicts.",
        )

    # --- tensors ---------------------------------------------------------------------------

    def tensors(self) -> list[torch.Tensor]:
        """Every tensor, in flattening order (the exported graph's placeholder order)."""
        return [t for t in pytree.tree_leaves((self.args, self.kwargs)) if _is_tensor(t)]

    def named_tensors(self, parameters: Sequence[str] = ()) -> list[tuple[str, torch.Tensor]]:
        """(name, tensor) in flattening order; positional arguments take `parameters`' names."""
        named: list[tuple[str, torch.Tensor]] = []
        for position, value in enumerate(self.args):
            base = parameters[position] if position < len(parameters) else f"args[{position}]"
            named.extend(_named_leaves(base, value))
        for key, value in self.kwargs.items():
            named.extend(_named_leaves(key, value))
        return named

    def map(self, fn: Callable[[torch.Tensor], Any]) -> ModelInputs:
        """The same structure with `fn` applied to every tensor."""
        args, kwargs = pytree.tree_map(
            lambda v: fn(v) if _is_tensor(v) else v, (self.args, self.kwargs)
        )
        return ModelInputs(tuple(args), dict(kwargs))

    @property
    def batch_size(self) -> int | None:
        """Dim 0 of the first tensor that has one."""
        for tensor in self.tensors():
            if tensor.dim() > 0:
                return int(tensor.shape[0])
        return None

    def batched(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> ModelInputs:
        """`fn` applied to the tensors whose dim 0 is the batch (others stay as they are)."""
        batch = self.batch_size
        return self.map(lambda t: fn(t) if t.dim() > 0 and t.shape[0] == batch else t)

    def take(self, count: int) -> ModelInputs:
        """The first `count` samples; repeated to fill when the batch is smaller."""
        batch = self.batch_size or 1
        repeats = -(-count // batch)
        return self.batched(
            lambda t: (t.repeat(repeats, *[1] * (t.dim() - 1)) if repeats > 1 else t)[:count]
        )

    def describe(self, parameters: Sequence[str] = ()) -> str:
        """`input_ids (4, 16) int64, attention_mask (4, 16) int64` for messages."""
        return ", ".join(
            f"{name} {tuple(t.shape)} {str(t.dtype).removeprefix('torch.')}"
            for name, t in self.named_tensors(parameters)
        )

    # --- calling ---------------------------------------------------------------------------

    def call(self, model: Callable[..., Any]) -> Any:
        return model(*self.args, **self.kwargs)

    def placeholders(self, gm: torch.fx.GraphModule) -> list[Any]:
        """The flat values for a GraphModule's placeholders (for `fx.Interpreter.run`)."""
        codegen = getattr(gm.graph, "_codegen", None)
        info = getattr(codegen, "pytree_info", None)
        if info is not None and info.in_spec is not None:
            import torch.fx._pytree as fx_pytree

            return list(fx_pytree.tree_flatten_spec((self.args, self.kwargs), info.in_spec))
        return list(pytree.tree_leaves((self.args, self.kwargs)))


@dataclass(frozen=True)
class InputSignature:
    """What data must look like for a model: its example inputs and which dims may vary."""

    example: ModelInputs
    parameters: tuple[str, ...] = ()
    # (input name, dim) -> the largest size the model takes there (None: unbounded)
    dynamic: Mapping[tuple[str, int], int | None] = field(default_factory=dict)


def _is_tensor(value: Any) -> bool:
    return isinstance(value, torch.Tensor)


def _named_leaves(base: str, value: Any) -> list[tuple[str, torch.Tensor]]:
    leaves, _ = pytree.tree_flatten_with_path(value)
    return [(base + pytree.keystr(path), v) for path, v in leaves if _is_tensor(v)]


def parameter_names(model: Callable[..., Any]) -> tuple[str, ...]:
    """The names of `model`'s forward parameters (what dict batches' keys are matched with)."""
    forward = model.forward if isinstance(model, nn.Module) else model
    try:
        parameters = inspect.signature(forward).parameters.values()
    except (TypeError, ValueError):
        return ()
    return tuple(p.name for p in parameters if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD))


# --- binding a batch to the model's arguments ----------------------------------------------

TARGET_KEYS = ("labels", "label", "targets", "target")


@dataclass(frozen=True)
class Bound:
    """A batch as the model takes it, its targets (if any) and the keys it ignored."""

    inputs: ModelInputs
    target: Any
    ignored: tuple[str, ...] = ()


def bind(
    value: Any, example: ModelInputs, parameters: Sequence[str], *, where: str = "the batch"
) -> Bound:
    """Arrange a batch's inputs like `example`: a dict by parameter names, else by position.

    A dict may hold the target under one of TARGET_KEYS; keys the model does not take are
    ignored (and reported). Positional values take the example's positional slots first, then
    its keyword slots in order.
    """
    slots = [
        parameters[i] if i < len(parameters) else f"args[{i}]" for i in range(len(example.args))
    ]
    keys = list(example.kwargs)
    if isinstance(value, Mapping):
        target_key = next((k for k in TARGET_KEYS if k in value), None)
        target = value[target_key] if target_key is not None else None
        wanted = slots + keys
        missing = [name for name in wanted if name not in value]
        if missing:
            raise SignatureError(
                f"{where} has no {', '.join(repr(m) for m in missing)}: it has keys "
                f"{', '.join(repr(k) for k in value)}, the model takes {', '.join(wanted)}.",
                "Name a dict batch's entries like the forward's parameters (the target as "
                "'labels', 'label', 'target' or 'targets').",
            )
        ignored = tuple(str(k) for k in value if k not in wanted and k != target_key)
        inputs = ModelInputs(tuple(value[s] for s in slots), {k: value[k] for k in keys})
        return Bound(inputs, target, ignored)
    values = ModelInputs.of(value)
    if values.kwargs:
        merged = dict(zip(slots, values.args, strict=False)) | values.kwargs
        return bind(merged, example, parameters, where=where)
    count = len(example.args) + len(keys)
    if len(values.args) != count:
        raise SignatureError(
            f"{where} has {len(values.args)} input(s); the model takes {count} "
            f"({', '.join(slots + keys)}).",
            "Yield the same inputs as the model's example inputs, or a dict keyed by the "
            "forward's parameter names.",
        )
    positional = values.args[: len(slots)]
    keyword = dict(zip(keys, values.args[len(slots) :], strict=True))
    return Bound(ModelInputs(tuple(positional), keyword), None)


# --- outputs -------------------------------------------------------------------------------


def output_leaves(output: Any) -> list[tuple[str, torch.Tensor]]:
    """(key path, tensor) of every tensor in an output pytree, flattening order.

    Key paths read like Python: `['logits']` for a ModelOutput or dict, `[0]` for a tuple, and
    `` (empty) for a bare tensor.
    """
    leaves, _ = pytree.tree_flatten_with_path(output)
    return [(pytree.keystr(path), v) for path, v in leaves if _is_tensor(v)]


def leaf_label(path: str) -> str:
    """A key path as people write it: `['logits']` -> `logits`, `` -> `output`."""
    if not path:
        return "output"
    return path.replace("['", ".").replace("']", "").removeprefix(".")


def prediction(output: Any, selector: str | None = None) -> torch.Tensor:
    """The output leaf `selector` names (a key, a key path or a leaf index; see the module
    docstring), by default `logits` or else the first floating-point tensor."""
    if isinstance(output, torch.Tensor) and selector is None:
        return output
    leaves = output_leaves(output)
    if not leaves:
        raise SignatureError(
            "The model's output holds no tensor.", "Return the prediction as a tensor."
        )
    if selector is None:
        if isinstance(output, Mapping) and _is_tensor(output.get("logits")):
            return output["logits"]
        floating = [t for _, t in leaves if t.is_floating_point()]
        return floating[0] if floating else leaves[0][1]
    index = _leaf_index(leaves, selector)
    if index is None:
        names = ", ".join(leaf_label(p) for p, _ in leaves)
        raise SignatureError(
            f"The model's output has no leaf '{selector}'.",
            f"Name one of its leaves ({names}) or give its index (0 to {len(leaves) - 1}).",
        )
    return leaves[index][1]


def prediction_label(output: Any, selector: str | None = None) -> str:
    """The label of the leaf `prediction` picks (`logits`, `0`, `output`)."""
    chosen = prediction(output, selector)
    for path, leaf in output_leaves(output):
        if leaf is chosen:
            return leaf_label(path)
    return "output"


def _leaf_index(leaves: list[tuple[str, torch.Tensor]], selector: str) -> int | None:
    text = selector.strip()
    if text.lstrip("-").isdigit():
        index = int(text)
        return index if -len(leaves) <= index < len(leaves) else None
    for i, (path, _) in enumerate(leaves):
        if text in (path, leaf_label(path)):
            return i
    return None


def compare_outputs(expected: Any, got: Any) -> list[LeafCheck]:
    """Every output leaf of two calls compared: same structure, max |diff|, bit equality."""
    want, have = output_leaves(expected), output_leaves(got)
    if [p for p, _ in want] != [p for p, _ in have]:
        raise SignatureError(
            f"The outputs differ in structure: {[leaf_label(p) for p, _ in want]} against "
            f"{[leaf_label(p) for p, _ in have]}.",
            "Compare models with the same outputs.",
        )
    checks = []
    for (path, a), (_, b) in zip(want, have, strict=True):
        same_shape = a.shape == b.shape
        if same_shape and a.numel():
            worst = float((a.double() - b.double()).abs().max())
        else:
            worst = 0.0 if same_shape else math.inf
        checks.append(LeafCheck(leaf_label(path), tuple(a.shape), worst,
                                same_shape and torch.equal(a, b)))  # fmt: skip
    return checks


def max_leaf_diff(expected: Any, got: Any) -> float:
    """The largest |difference| over every output leaf."""
    return max((c.max_abs_diff for c in compare_outputs(expected, got)), default=0.0)


@dataclass(frozen=True)
class LeafCheck:
    """One output leaf of a comparison: its label, shape, max |diff| and bit equality."""

    output: str
    shape: tuple[int, ...]
    max_abs_diff: float
    bit_equal: bool
