"""ExecuTorch .pte programs: lowering with the XNNPACK delegate, where each node runs, running
the program in the ExecuTorch runtime, comparing it with the model, and saving it.

- `lower` takes a re-exported stage (`program_for(..., keep_debug=True)`: the placement is
  read from `from_node`) through `to_edge_transform_and_lower` with `XnnpackPartitioner` and
  `to_executorch`. The digits CNN (PTQ, xnnpack recipe) lowers in about 5 s to two delegate
  calls around one portable `view_copy` (the flatten), 21,800 bytes.
- Every op node of the source graph (the converted GraphModule, or the program's own graph)
  gets a placement: "xnnpack" (inside a delegate), "portable" (an ExecuTorch portable kernel
  outside every delegate; a node split between both counts as portable) or "not in program"
  (removed or folded by lowering, such as the dequantize of a constant weight).
- Memory is planned with ExecuTorch's constraint-based pass (its default plans for the
  traced size, and a larger batch then fails in `set_inputs`). The planned batch is read back
  from the program (`Lowered.max_batch`: 4096, the capture's bound, for the digits CNN without
  the pattern cache; 15 with it, where the bound is lost in tracing); `PteProgram` runs a
  larger batch in chunks of it.
- A quantize/dequantize XNNPACK leaves outside its delegate (uint8 activations on one node, a
  requantization it does not take) runs on ExecuTorch's quantized portable kernels: importing
  `executorch.kernels.quantized` registers their out variants for `to_executorch` and their
  kernels in the runtime (259 operators instead of 240). An operator the runtime still has no
  kernel for stops `lower` with a `LoweringError` naming the nodes, before anything is written.
- `source_placement` carries the placement back to the nodes of the exported graph the Graph
  page draws: each exported node gets the ops made from it (its own op, its output's q/dq,
  and the q/dq and weight dequantize feeding it).
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.utils._pytree as pytree
from torch.export import ExportedProgram
from torch.fx import GraphModule, Node

from workbench.analysis.sqnr import sqnr
from workbench.artifacts.export import check_writable, temporary_beside, tensor_expression
from workbench.data.datasets import Dataset
from workbench.errors import WorkbenchError, first_line
from workbench.graph.nodes import is_qdq, readable_op
from workbench.graph.provenance import node_source
from workbench.locks import EXPORT_LOCK
from workbench.model.signature import ModelInputs, compare_outputs, prediction

__all__ = [
    "PLACEMENTS",
    "QUANTIZED_KERNELS_LINE",
    "SOURCE_PLACEMENTS",
    "Lowered",
    "LoweringError",
    "OutsideNode",
    "Placement",
    "PteCheck",
    "PteProgram",
    "SavedPte",
    "SourcePlacement",
    "check",
    "check_kernels",
    "load_pte",
    "lower",
    "planned_batch",
    "program_to_source",
    "pte_loading_lines",
    "register_quantized_kernels",
    "run",
    "save_pte",
    "source_placement",
]

log = logging.getLogger(__name__)

Placement = Literal["xnnpack", "portable", "not in program"]
PLACEMENTS: tuple[Placement, ...] = ("xnnpack", "portable", "not in program")
# Where the ops made from one node of the exported graph run: "partly portable" when some
# are in the delegate and some are not.
SourceWhere = Literal["xnnpack", "partly portable", "portable", "not in program"]
SOURCE_PLACEMENTS: tuple[SourceWhere, ...] = ("xnnpack", "partly portable", "portable",
                                              "not in program")  # fmt: skip

_FIX = (
    'Quantize with the xnnpack backend (--backend xnnpack, or "backend": "xnnpack" in '
    "the recipe), keep those nodes float in the recipe, or export the .pt2 instead."
)

# Nodes of the lowered graph that are plumbing, not computation of the model.
_PLUMBING = ("executorch_call_delegate", "getitem")


class LoweringError(WorkbenchError):
    """A program XNNPACK and the ExecuTorch runtime cannot take as it is."""


@dataclass(frozen=True)
class OutsideNode:
    """A node of the source graph that runs outside every delegate: its name, its op there
    (`view`, `dequantize_per_tensor`) and the ExecuTorch kernel that runs it."""

    node: str
    op: str
    kernel: str

    def as_dict(self) -> dict[str, str]:
        return {"node": self.node, "op": self.op, "kernel": self.kernel}


@dataclass(frozen=True)
class Lowered:
    """A program lowered to ExecuTorch with XNNPACK: the .pte bytes and where each node runs.

    `placement` maps every op node (call_function) of the source graph, by name, to its
    Placement; `outside` lists the ones on portable kernels, in graph order.
    """

    what: str
    buffer: bytes = field(repr=False)
    placement: Mapping[str, Placement]
    outside: tuple[OutsideNode, ...]
    delegates: int
    seconds: float
    max_batch: int | None
    in_spec: pytree.TreeSpec | None = field(default=None, repr=False)
    out_spec: pytree.TreeSpec | None = field(default=None, repr=False)

    @property
    def bytes(self) -> int:
        return len(self.buffer)

    @property
    def counts(self) -> dict[Placement, int]:
        """How many of the source graph's op nodes have each placement (all three keys)."""
        counts = dict.fromkeys(PLACEMENTS, 0)
        for where in self.placement.values():
            counts[where] += 1
        return counts

    def program(self) -> PteProgram:
        """The program loaded in the ExecuTorch runtime from the bytes in memory."""
        return load_pte(self.buffer, in_spec=self.in_spec, out_spec=self.out_spec,
                        max_batch=self.max_batch)  # fmt: skip

    def as_dict(self) -> dict[str, Any]:
        return {
            "bytes": self.bytes,
            "delegates": self.delegates,
            "placement_counts": self.counts,
            "outside_delegate": [n.as_dict() for n in self.outside],
            "max_batch": self.max_batch,
            "lower_seconds": round(self.seconds, 4),
        }


def lower(program: ExportedProgram, *, what: str, source: GraphModule | None = None) -> Lowered:
    """Lower `program` to an ExecuTorch .pte with the XNNPACK partitioner.

    `what` names the model in messages ("the converted model"). `source` is the GraphModule
    the program was exported from (`program_for(source, ..., keep_debug=True)`); placements
    are keyed by its node names, else by the program's own. Raises LoweringError when
    lowering fails or when nodes outside the delegate need kernels the runtime lacks. The
    lowering mutates nothing of `program` that a caller reads afterwards but runs passes on
    it: give it a program made for it.
    """
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import ExecutorchBackendConfig, to_edge_transform_and_lower
    from executorch.exir.passes.sym_shape_eval_pass import ConstraintBasedSymShapeEvalPass

    register_quantized_kernels()
    names = _op_nodes(source if source is not None else program.graph_module)
    renamed = program_to_source(program, source)
    graph_id = id(program.graph)
    start = time.perf_counter()
    with EXPORT_LOCK:  # lowering re-traces the program: not thread-safe (locks.py)
        try:
            edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
        except Exception as exc:
            raise LoweringError(
                f"ExecuTorch cannot lower {what}: {first_line(exc)}",
                "Export the .pt2 instead, or keep the failing part float in the recipe.",
            ) from exc
        lowered_program = edge.exported_program()
        placement, outside, delegates = _placement(lowered_program, graph_id, names, renamed)
        try:
            executorch = edge.to_executorch(
                ExecutorchBackendConfig(sym_shape_eval_pass=ConstraintBasedSymShapeEvalPass())
            )
        except Exception as exc:
            named = [n for n in outside if n.kernel in str(exc)] or list(outside)
            stuck = ", ".join(f"{n.node} ({n.op})" for n in named) or "none"
            raise LoweringError(
                f"ExecuTorch cannot make a program of {what}: {first_line(exc)}; nodes XNNPACK "
                f"left outside its delegate that stop it: {stuck}.",
                _FIX,
            ) from exc
        buffer = bytes(executorch.buffer)
    seconds = time.perf_counter() - start
    check_kernels(executorch, outside, what)
    call_spec = lowered_program.call_spec
    return Lowered(
        what, buffer, placement, outside, delegates, seconds, planned_batch(executorch),
        call_spec.in_spec, call_spec.out_spec,
    )  # fmt: skip


@dataclass
class PteProgram:
    """A .pte loaded in the ExecuTorch runtime, callable like the model on ModelInputs.

    Inputs are flattened as `in_spec` says (else every tensor in flattening order), outputs
    rebuilt with `out_spec` (else the tensor, or a tuple of them). A batch larger than the
    planned `max_batch` runs in chunks of it.
    """

    method: Any = field(repr=False)
    max_batch: int | None
    in_spec: pytree.TreeSpec | None = field(default=None, repr=False)
    out_spec: pytree.TreeSpec | None = field(default=None, repr=False)

    def __call__(self, inputs: ModelInputs) -> Any:
        inputs = ModelInputs.of(inputs)
        batch = inputs.batch_size
        if self.max_batch is None or batch is None or batch <= self.max_batch:
            return self._unflatten(self._execute(inputs))
        chunks = [
            self._execute(inputs.batched(lambda t, s=s: t[s : s + self.max_batch]))
            for s in range(0, batch, self.max_batch)
        ]
        return self._unflatten([torch.cat(parts) for parts in zip(*chunks, strict=True)])

    def _execute(self, inputs: ModelInputs) -> list[torch.Tensor]:
        flat = _flat_inputs(inputs, self.in_spec)
        values = [v.contiguous() if isinstance(v, torch.Tensor) else v for v in flat]
        try:
            return [t.clone() for t in self.method.execute(values)]
        except RuntimeError as exc:
            raise LoweringError(
                f"The ExecuTorch program fails on inputs {inputs.describe()}: {first_line(exc)}",
                "Give inputs shaped like the model's example inputs, with a batch within "
                "the exported range.",
            ) from exc

    def _unflatten(self, flat: list[torch.Tensor]) -> Any:
        if self.out_spec is not None:
            return pytree.tree_unflatten(flat, self.out_spec)
        return flat[0] if len(flat) == 1 else tuple(flat)


def load_pte(
    source: bytes | Path | str,
    *,
    in_spec: pytree.TreeSpec | None = None,
    out_spec: pytree.TreeSpec | None = None,
    max_batch: int | None = None,
) -> PteProgram:
    """Load a .pte (its bytes, or a file read from disk) and its `forward` in the runtime.

    `max_batch` is the largest batch memory was planned for (`Lowered.max_batch`; the
    runtime's MethodMeta reports the example's traced size instead); larger batches run in
    chunks. None: every batch in one call.
    """
    from executorch.runtime import Runtime

    register_quantized_kernels()
    data = str(source) if isinstance(source, Path) else source
    try:
        loaded = Runtime.get().load_program(data)
        method = loaded.load_method("forward")
    except (RuntimeError, ValueError) as exc:
        raise LoweringError(
            f"The ExecuTorch runtime cannot load the program: {first_line(exc)}",
            "Lower it again with this executorch version, or export the .pt2 instead.",
        ) from exc
    return PteProgram(method, max_batch, in_spec, out_spec)


def run(source: Lowered | bytes | Path | str, inputs: ModelInputs) -> Any:
    """Run a .pte on `inputs` in the ExecuTorch runtime; outputs shaped like the model's
    when `source` is a Lowered (its output spec), else the flat tensor(s)."""
    if isinstance(source, Lowered):
        return source.program()(inputs)
    return load_pte(source)(inputs)


QUANTIZED_KERNELS_LINE = (
    "import executorch.kernels.quantized  # kernels of the q/dq ops outside the XNNPACK delegate"
)


def pte_loading_lines(lowered: Lowered, inputs: ModelInputs, path: str | Path = "model.pte") -> str:
    """Python lines that run the saved .pte in a fresh interpreter (executorch installed,
    nothing of the workbench): load it, call `forward` once on inputs shaped like `inputs`
    (flattened as the program takes them), the list of output tensors as `output`.

    When a quantize/dequantize runs outside the delegate, `import executorch.kernels.quantized`
    comes first: without it the runtime has no kernel for it and `load_method` fails.
    """
    lines = []
    if any(n.kernel.startswith("quantized_decomposed") for n in lowered.outside):
        lines.append(QUANTIZED_KERNELS_LINE)
    lines += [
        "import torch",
        "from executorch.runtime import Runtime",
        "",
        f"program = Runtime.get().load_program({json.dumps(str(path))})",
        'method = program.load_method("forward")',
    ]
    flat = _flat_inputs(ModelInputs.of(inputs), lowered.in_spec)
    if lowered.max_batch is not None:
        lines.append(f"# inputs in the program's order, a batch of {lowered.max_batch} at most")
    lines.append(f"output = method.execute([{', '.join(tensor_expression(t) for t in flat)}])")
    return "\n".join(lines) + "\n"


def _flat_inputs(inputs: ModelInputs, in_spec: pytree.TreeSpec | None) -> list[Any]:
    if in_spec is None:
        return list(inputs.tensors())
    import torch.fx._pytree as fx_pytree

    return list(fx_pytree.tree_flatten_spec((inputs.args, inputs.kwargs), in_spec))


@dataclass(frozen=True)
class PteCheck:
    """The .pte's outputs against a reference model: worst |diff| over every output leaf,
    SQNR of the prediction (dB) and agreement % of predicted classes (argmax), on `batches`
    calls of `samples` samples in all."""

    max_abs_diff: float
    sqnr_db: float
    agreement: float
    batches: int
    samples: int
    batch_sizes: tuple[int, ...]

    def as_dict(self) -> dict[str, Any]:
        return {
            "max_abs_diff": self.max_abs_diff,
            "sqnr_db": None if self.sqnr_db == float("inf") else round(self.sqnr_db, 3),
            "agreement": round(self.agreement, 3),
            "batches": self.batches,
            "samples": self.samples,
            "batch_sizes": list(self.batch_sizes),
        }


def check(
    lowered: Lowered | PteProgram,
    reference_gm: torch.nn.Module,
    dataset: Dataset | None,
    *,
    example_inputs: ModelInputs | None = None,
    batches: int = 4,
    batch_size: int = 128,
) -> PteCheck:
    """Run the .pte on up to `batches` evaluation batches (and the example inputs) and
    compare with `reference_gm`: max |diff| over all output leaves, SQNR and agreement of
    the prediction leaf the dataset's task picks (argmax over the last dim; equality of
    values for one value per sample)."""
    program = lowered.program() if isinstance(lowered, Lowered) else lowered
    selector = dataset.task.output if dataset is not None else None
    calls: list[ModelInputs] = []
    if dataset is not None:
        calls += [b.inputs for b in itertools.islice(dataset.eval_batches(batch_size), batches)]
    if example_inputs is not None:
        calls.append(ModelInputs.of(example_inputs))
    if not calls:
        raise ValueError("check needs a dataset or example inputs")
    worst, agree, count = 0.0, 0, 0
    wanted, got_all, sizes = [], [], []
    for inputs in calls:
        with torch.no_grad(), EXPORT_LOCK:
            expected = inputs.call(reference_gm)
        got = program(inputs)
        worst = max([worst, *(c.max_abs_diff for c in compare_outputs(expected, got))])
        want, have = prediction(expected, selector), prediction(got, selector)
        wanted.append(want.detach().flatten(0, 0) if want.dim() else want.reshape(1))
        got_all.append(have.detach() if have.dim() else have.reshape(1))
        same = _same_prediction(want, have)
        agree += int(same.sum())
        count += same.numel()
        sizes.append(inputs.batch_size or 1)
    reference = torch.cat([w.reshape(len(w), -1).double() for w in wanted])
    actual = torch.cat([g.reshape(len(g), -1).double() for g in got_all])
    return PteCheck(worst, sqnr(reference, actual), 100.0 * agree / max(count, 1), len(calls),
                    sum(sizes), tuple(sizes))  # fmt: skip


@dataclass(frozen=True)
class SavedPte:
    """A .pte written after its runtime check, and reloaded from the file to be sure."""

    path: Path
    bytes: int
    check: PteCheck


def save_pte(
    lowered: Lowered,
    path: Path,
    *,
    checked: PteCheck,
    example_inputs: ModelInputs,
) -> SavedPte:
    """Write the .pte atomically once its runtime check (`checked`, from `check`) ran.

    The written file is loaded from disk and run on `example_inputs` before it is renamed
    into place: it must give the same outputs as the bytes in memory. Nothing is left at
    `path` when anything fails.
    """
    path = Path(path)
    check_writable(path)
    with temporary_beside(path) as tmp:
        tmp.write_bytes(lowered.buffer)
        from_disk = load_pte(tmp, in_spec=lowered.in_spec, out_spec=lowered.out_spec,
                             max_batch=lowered.max_batch)  # fmt: skip
        inputs = ModelInputs.of(example_inputs)
        diff = max(c.max_abs_diff for c in compare_outputs(lowered.program()(inputs),
                                                             from_disk(inputs)))  # fmt: skip
        if diff != 0.0:
            raise RuntimeError(
                f"the .pte read back from {tmp} differs from the one in memory by {diff:.3g}; "
                "the file was not written"
            )
        os.replace(tmp, path)
    return SavedPte(path, path.stat().st_size, checked)


# --- where each node runs ------------------------------------------------------------------


def register_quantized_kernels() -> None:
    """The quantized_decomposed out variants (for to_executorch) and their runtime kernels."""
    import executorch.kernels.quantized  # noqa: F401  (registers on import)


@dataclass(frozen=True)
class SourcePlacement:
    """Where the ops made from one node of the exported graph run: `where` sums them up;
    `nodes` maps each placement to those ops (converted-graph names, graph order).

    `where` follows the node's own ops (not its quantize/dequantize): "portable" when they
    run outside every delegate, "xnnpack" when they and their q/dq all run inside one,
    "partly portable" when they run inside but a q/dq of theirs does not (a requantization
    XNNPACK does not take); a node with only q/dq ops left follows those.
    """

    where: SourceWhere
    nodes: Mapping[Placement, tuple[str, ...]]


def source_placement(
    converted: GraphModule, placement: Mapping[str, Placement]
) -> dict[str, SourcePlacement]:
    """`Lowered.placement` (keyed by the converted graph's op nodes) per exported node.

    An op node of `converted` belongs to its source in the exported graph
    (`workbench.graph.provenance.node_source`). Nodes convert made from observers (an input's
    quantize, a requantization, a weight's dequantize) have no such source: they belong to
    the first op they feed that has one. An exported node with no op left in the converted
    graph (a batch norm folded into its conv) is missing here: it is not in the program.
    """
    from workbench.graph.provenance import exported_graph_id

    exported_id = exported_graph_id(converted)
    owner: dict[Node, str | None] = {}

    def owner_of(node: Node) -> str | None:
        if node not in owner:
            source = node_source(node)
            if source.graph_id == exported_id:
                owner[node] = source.name
            else:
                owner[node] = next((o for u in node.users if (o := owner_of(u)) is not None),
                                   None)  # fmt: skip
        return owner[node]

    grouped: dict[str, dict[Placement, list[str]]] = {}
    own: dict[str, set[Placement]] = {}
    for node in converted.graph.nodes:
        where = placement.get(node.name) if node.op == "call_function" else None
        name = owner_of(node) if where is not None else None
        if where is None or name is None:
            continue
        grouped.setdefault(name, {}).setdefault(where, []).append(node.name)
        if not is_qdq(node):
            own.setdefault(name, set()).add(where)
    placed = {}
    for name, nodes in grouped.items():
        where = _summed(own.get(name) or set(nodes), set(nodes))
        placed[name] = SourcePlacement(where, {k: tuple(v) for k, v in nodes.items()})
    return placed


def _summed(own: set[Placement], every: set[Placement]) -> SourceWhere:
    running = own - {"not in program"}
    if not running:
        return "not in program"
    if running == {"xnnpack"}:
        return "partly portable" if "portable" in every else "xnnpack"
    return "portable" if running == {"portable"} else "partly portable"


def _op_nodes(gm: GraphModule) -> dict[str, Node]:
    return {n.name: n for n in gm.graph.nodes if n.op == "call_function"}


def _sources_in(node: Node, graph_id: int) -> set[str]:
    """Names of the nodes of the graph `graph_id` that `node` was made from (any branch of
    its `from_node` history)."""
    found: set[str] = set()
    stack = list(node.meta.get("from_node") or [])
    while stack:
        entry = stack.pop()
        if entry.graph_id == graph_id:
            found.add(str(entry.name))
        else:
            stack.extend(entry.from_node or [])
    return found


def program_to_source(program: ExportedProgram, source: GraphModule | None) -> dict[str, str]:
    """Program op node name -> the source's node it was traced from.

    Re-exporting a GraphModule traces its ops in graph order, so the two lists of targets
    match one to one; where they do not, nodes are paired in order per (op, history).
    """
    ops = list(_op_nodes(program.graph_module).values())
    if source is None:
        return {n.name: n.name for n in ops}
    wanted = list(_op_nodes(source).values())
    if [n.target for n in ops] == [n.target for n in wanted]:
        return {a.name: b.name for a, b in zip(ops, wanted, strict=True)}
    queues: dict[tuple[Any, ...], list[str]] = {}
    for node in wanted:
        queues.setdefault(_history_key(node), []).append(node.name)
    return {n.name: queues[key].pop(0) for n in ops if queues.get(key := _history_key(n))}


def _history_key(node: Node) -> tuple[Any, ...]:
    root = node_source(node)
    return (str(node.target), root.name, root.graph_id)


def _placement(
    lowered: ExportedProgram, graph_id: int, names: dict[str, Node], renamed: dict[str, str]
) -> tuple[dict[str, Placement], tuple[OutsideNode, ...], int]:
    delegated: set[str] = set()
    portable: dict[str, str] = {}
    delegates = 0
    for node in lowered.graph.nodes:
        if node.op != "call_function":
            continue
        if node.name.startswith("executorch_call_delegate"):
            delegates += 1
            module = getattr(lowered.graph_module, str(node.args[0].target))
            for inner in module.original_module.graph.nodes:
                if inner.op == "call_function":
                    delegated |= {renamed.get(s, s) for s in _sources_in(inner, graph_id)}
        elif not node.name.startswith(_PLUMBING):
            kernel = _kernel_name(node)
            for name in _sources_in(node, graph_id):
                portable.setdefault(renamed.get(name, name), kernel)
    if names and not (delegated or portable):
        raise ValueError(
            "the program carries no from_node history; export it with "
            "program_for(..., keep_debug=True) before lowering"
        )
    placement: dict[str, Placement] = {}
    outside = []
    for name, node in names.items():
        if name in portable:
            placement[name] = "portable"
            outside.append(OutsideNode(name, readable_op(node), portable[name]))
        elif name in delegated:
            placement[name] = "xnnpack"
        else:
            placement[name] = "not in program"
    return placement, tuple(outside), delegates


def _kernel_name(node: Node) -> str:
    target = node.target
    name = getattr(target, "__name__", None) or str(target)
    schema = getattr(getattr(target, "_op", target), "_schema", None)
    return str(schema.name) if schema is not None else name


def check_kernels(executorch: Any, outside: Sequence[OutsideNode], what: str) -> None:
    """Raise LoweringError when the program calls operators the runtime has no kernel for."""
    from executorch.extension.pybindings.portable_lib import _get_operator_names

    registered = set(_get_operator_names())
    missing = []
    for plan in executorch.executorch_program.execution_plan:
        for op in plan.operators:
            name = f"{op.name}.{op.overload}" if op.overload else op.name
            if name not in registered:
                missing.append(name)
    if not missing:
        return
    bases = {m.split(".")[0] for m in missing}
    stuck = [n for n in outside if n.kernel.split(".")[0] in bases] or list(outside)
    listed = ", ".join(f"{n.node} ({n.op})" for n in stuck) or "none found"
    raise LoweringError(
        f"The ExecuTorch program of {what} needs kernels the runtime lacks "
        f"({', '.join(sorted(set(missing)))}), for nodes XNNPACK left outside its delegate: "
        f"{listed}.",
        _FIX,
    )


def planned_batch(executorch: Any) -> int | None:
    """Dim 0 of the first input as memory was planned for it (the largest batch one call
    takes), None without a tensor input."""
    plan = executorch.executorch_program.execution_plan[0]
    if not plan.inputs:
        return None
    sizes = getattr(plan.values[plan.inputs[0]].val, "sizes", None)
    return int(sizes[0]) if sizes else None


def _same_prediction(want: torch.Tensor, have: torch.Tensor) -> torch.Tensor:
    if want.dim() >= 2 and want.shape[-1] > 1:
        return want.argmax(-1) == have.argmax(-1)
    return torch.isclose(want.float(), have.float(), rtol=1e-2, atol=1e-2).reshape(-1)
