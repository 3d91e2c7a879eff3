"""What one PT2E step changed in the graph: nodes of two stages matched by provenance.

Any two GraphModules derived from one captured graph can be compared (exported, prepared,
calibrated/trained, converted). Each node gets a *role* and a *matching key*; nodes with
equal keys on both sides are the same computation.

- Placeholders and the output: by name. get_attr nodes: by target (`stem.conv.weight`).
  Observer / fake-quant modules: by module name (`activation_post_process_3`).
- Ops of the exported graph: by provenance root (`workbench.graph.provenance.node_source`,
  the end of `meta["from_node"]`), compared with the stage's own exported graph id. QAT renames
  conv2d_1 to conv2d_5 (prepare) and conv2d_8 (convert); the root stays `conv2d_1`.
- batch_norm: by the BN weight it reads (`block1.bn1.weight`). QAT's train/eval switch
  re-creates the node from a torchao pattern graph, so its provenance root changes.
- Nodes from torchao pattern graphs (the QAT conv-bn fusion helpers add/sqrt/div/reshape),
  ops computed from parameters alone (the fused weight `mul`) and quantize/dequantize
  nodes: by (group, op, position within the group), since their roots collide between
  groups and do not survive every step.

Each node belongs to a *group*: an exported op's group is its own exported name; a
batch_norm's group is the conv (or linear) it normalises, found by walking back through
helper and quantization nodes; a helper computed from parameters (and a parameter) takes
the group of the op it feeds, a helper reading activations (the un-scaling `div`) the
group of its input; an observer or q/dq takes the group of the op whose output it
quantizes, or of its consumer when it quantizes an input or a weight.

Matched nodes are *unchanged*, *renamed* (name differs, same op and inputs) or
*rewritten* (another op, other inputs or arguments, new parameter values or observer
state; a rewritten node may also be renamed, which its detail says). Inputs are compared
by their keys after looking through observers and quantize/dequantize nodes: quantizing an
edge shows as the added observer or q/dq, not as a rewritten consumer; a conv whose weight
now comes from a dequantized int8 tensor or from fusion helpers is rewritten. Unmatched
nodes are *added* or *removed*.
"""

from __future__ import annotations

import difflib
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

import pandas as pd
import torch
from torch.fx import GraphModule, Node
from torch.fx.node import map_aggregate

from workbench.graph.nodes import (
    QUANT_OPS,
    call_arguments,
    get_attr_value,
    is_batch_norm,
    is_batch_norm_op,
    is_get_attr,
    is_qdq,
    param_owner,
    qdq_dtype,
    qdq_scheme,
)
from workbench.graph.provenance import exported_graph_id, node_source
from workbench.graph.view import NodeInfo, describe

__all__ = [
    "KINDS",
    "ChangeKind",
    "NodeChange",
    "Side",
    "StageDiff",
    "code_diff",
    "diff_stages",
]

ChangeKind = Literal["unchanged", "renamed", "rewritten", "added", "removed"]
Side = Literal["before", "after"]
KINDS: tuple[str, ...] = ("unchanged", "renamed", "rewritten", "added", "removed")

_Key = tuple[Any, ...]


@dataclass(frozen=True)
class NodeChange:
    """One node's fate between two stages; `before`/`after` are node names (None if absent)."""

    kind: ChangeKind
    before: str | None
    after: str | None
    origin: str | None
    group: str | None
    op: str
    module: str
    detail: str


@dataclass(frozen=True)
class StageDiff:
    """Every node change from one stage to the next, in graph order."""

    before_stage: str
    after_stage: str
    changes: tuple[NodeChange, ...]
    _by_before: dict[str, NodeChange] = field(init=False, repr=False, compare=False)
    _by_after: dict[str, NodeChange] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_before = {c.before: c for c in self.changes if c.before is not None}
        by_after = {c.after: c for c in self.changes if c.after is not None}
        object.__setattr__(self, "_by_before", by_before)
        object.__setattr__(self, "_by_after", by_after)

    def counts(self) -> dict[str, int]:
        """How many changes of each kind, every kind listed (KINDS order)."""
        counted = Counter(c.kind for c in self.changes)
        return {kind: counted.get(kind, 0) for kind in KINDS}

    def table(self) -> pd.DataFrame:
        """One row per change: kind, before, after, origin, group, op, module, detail."""
        columns = ["kind", "before", "after", "origin", "group", "op", "module", "detail"]
        rows = [[getattr(c, col) for col in columns] for c in self.changes]
        return pd.DataFrame(rows, columns=columns, dtype=object)

    def by_module(self) -> pd.DataFrame:
        """Counts per module (rows, "(model)" for none) and kind (columns, KINDS order)."""
        counted = Counter((c.module or "(model)", c.kind) for c in self.changes)
        modules = list(dict.fromkeys(c.module or "(model)" for c in self.changes))
        return pd.DataFrame(
            [[counted.get((m, k), 0) for k in KINDS] for m in modules],
            index=pd.Index(modules, name="module"),
            columns=list(KINDS),
        )

    def change(self, name: str, side: Side) -> NodeChange:
        """The change that names node `name` on `side`."""
        by_name = self._by_before if side == "before" else self._by_after
        return by_name[name]

    def counterparts(self, name: str, side: Side) -> list[str]:
        """The node(s) on the other side that stand for node `name` of `side`.

        A matched node has its partner; a removed node (a folded batch_norm, say) maps to
        the other side's members of its group, an added node likewise.
        """
        change = self.change(name, side)
        other = change.after if side == "before" else change.before
        if other is not None:
            return [other]
        if change.group is None:
            return []
        before, after = self.group_members(change.group)
        return after if side == "before" else before

    def group_members(self, group: str) -> tuple[list[str], list[str]]:
        """Before-side and after-side node names of one group (a conv and its fusion)."""
        before = [c.before for c in self.changes if c.group == group and c.before is not None]
        after = [c.after for c in self.changes if c.group == group and c.after is not None]
        return before, after

    def summary(self) -> str:
        """Plain text: the counts, then one line per group whose fusion or weights changed."""
        counts = ", ".join(f"{n} {kind}" for kind, n in self.counts().items())
        lines = [f"{self.before_stage} -> {self.after_stage}: {counts}"]
        groups: dict[str, list[NodeChange]] = {}
        for change in self.changes:
            if change.group is not None:
                groups.setdefault(change.group, []).append(change)
        for group, members in groups.items():
            notes = _group_notes(group, members)
            if notes:
                lines.append(f"{group}: {'; '.join(notes)}")
        return "\n".join(lines)


def _group_notes(group: str, members: list[NodeChange]) -> list[str]:
    """Folded batch_norms, fusion helpers added or removed, the weight's new form."""
    notes: list[str] = []
    anchor = next((c for c in members if c.origin == group and c.op not in QUANT_OPS
                   and c.kind not in ("added", "removed")), None)  # fmt: skip
    for c in members:
        if is_batch_norm_op(c.op) and c.kind == "removed":
            label = c.origin or c.before
            notes.append(f"{label} folded" if anchor is not None else f"{label} removed")
    helpers = Counter(c.kind for c in members if c.detail.startswith(_HELPER_DETAIL))
    if helpers["added"]:
        notes.append(f"{helpers['added']} fusion helper nodes added")
    if helpers["removed"]:
        notes.append(f"{helpers['removed']} fusion helper nodes removed")
    if anchor is not None:
        match = re.search(r"weight now ([^(;]+?) \(", anchor.detail)
        if match:
            notes.append(f"weight now {match[1]}")
    return notes


_HELPER_DETAIL = "fusion helper"


@dataclass
class _Entry:
    """One node of one side while the diff is built."""

    node: Node
    info: NodeInfo
    role: str  # io, param, observer, qdq, bn, helper, op
    origin: str | None
    param_derived: bool
    group: str | None = None
    key: _Key = ()
    module: str = ""


class _SideGraph:
    """Roles, groups and matching keys of the nodes of one stage."""

    def __init__(self, gm: GraphModule, stage: str) -> None:
        self.gm = gm
        self.view = describe(gm, stage=stage)
        self.exported_id = exported_graph_id(gm)
        nodes = [n for n in gm.graph.nodes if n.name in self.view]
        self.order = {n.name: i for i, n in enumerate(nodes)}
        self.entries: dict[str, _Entry] = {}
        for node in nodes:
            derived = self._param_derived(node)
            self.entries[node.name] = _Entry(
                node, self.view[node.name], self._role(node, derived), self._origin(node), derived
            )
        self._assign_groups(nodes)
        self._assign_keys(nodes)
        self._assign_modules()
        self.by_key = {e.key: e for e in self.entries.values()}

    def _param_derived(self, node: Node) -> bool:
        """Computed from parameters alone (through ops, observers and q/dq)."""
        if node.op not in ("call_function", "call_module"):
            return False
        inputs = [a for a in node.all_input_nodes if a.name in self.entries]
        return bool(inputs) and all(
            a.op == "get_attr" or self.entries[a.name].param_derived for a in inputs
        )

    def _role(self, node: Node, param_derived: bool) -> str:
        if node.op in ("placeholder", "output"):
            return "io"
        if node.op == "get_attr":
            return "param"
        if node.op == "call_module":
            return "observer"
        if is_qdq(node):
            return "qdq"
        if is_batch_norm(node):
            return "bn"
        if param_derived or node_source(node).graph_id != self.exported_id:
            return "helper"
        return "op"

    def _origin(self, node: Node) -> str | None:
        if node.op == "get_attr":
            return str(node.target)
        if node.op == "call_module":
            return None
        source = node_source(node)
        return source.name if source.graph_id == self.exported_id else None

    def _assign_groups(self, nodes: list[Node]) -> None:
        # Backward pass: ops, batch_norms and everything that reads activations.
        for node in nodes:
            entry = self.entries[node.name]
            if entry.role == "io":
                entry.group = node.name
            elif entry.role == "op":
                entry.group = entry.origin
            elif entry.role == "bn":
                entry.group = self._bn_group(entry)
            elif not entry.param_derived:
                source = next((a for a in node.all_input_nodes if a.name in self.entries
                               and not self.entries[a.name].param_derived
                               and a.op != "get_attr"), None)  # fmt: skip
                if source is not None and source.op != "placeholder":
                    entry.group = self.entries[source.name].group
        # Forward pass, last node first: parameters and what is computed from them (and the
        # quantization of graph inputs) belong to the group of the op they feed.
        for node in reversed(nodes):
            entry = self.entries[node.name]
            if entry.group is not None or node.op == "output":
                continue
            users = sorted((u for u in node.users if u.name in self.entries),
                           key=lambda u: self.order[u.name])  # fmt: skip
            entry.group = next(
                (g for u in users if u.op != "output" and (g := self.entries[u.name].group)),
                None,
            )

    def _bn_group(self, entry: _Entry) -> str | None:
        """The exported name of the conv/linear a batch_norm normalises (else its own)."""
        current = entry.node.args[0] if entry.node.args else None
        steps = 0
        while isinstance(current, Node) and current.name in self.entries and steps < 32:
            walked = self.entries[current.name]
            if walked.role == "op":
                if walked.info.family in ("conv", "linear"):
                    return walked.group
                break
            if walked.role not in ("helper", "observer", "qdq") or not current.args:
                break
            current, steps = current.args[0], steps + 1
        return entry.origin or entry.node.name

    def _assign_keys(self, nodes: list[Node]) -> None:
        seen: Counter[_Key] = Counter()
        for node in nodes:
            entry = self.entries[node.name]
            base: _Key
            if entry.role == "io":
                base = ("io", node.name)
            elif entry.role == "param":
                base = ("param", str(node.target))
            elif entry.role == "observer":
                base = ("module", str(node.target))
            elif entry.role == "bn" and len(node.args) > 1 and is_get_attr(node.args[1]):
                base = ("bn", str(node.args[1].target))  # type: ignore[union-attr]
            elif entry.role == "op":
                base = ("node", entry.origin)
            else:
                base = (entry.role, entry.group, entry.info.op_name)
            entry.key = (*base, seen[base])
            seen[base] += 1

    def _assign_modules(self) -> None:
        """Module paths; parameters by their owner, the rest by their group's op if unknown."""
        anchors = {e.origin: e.info.module for e in self.entries.values() if e.role == "op"}
        for entry in self.entries.values():
            node = entry.node
            if entry.role == "io":
                entry.module = ""
                continue
            module = param_owner(node)
            if entry.role == "bn" and len(node.args) > 1 and is_get_attr(node.args[1]):
                module = param_owner(node.args[1])
            if entry.role not in ("param", "bn"):
                module = entry.info.module
            if not module and entry.group is not None:
                module = anchors.get(entry.group, "")
            entry.module = module

    def source(self, node: Node) -> Node:
        """`node`, or what it quantizes when it is an observer or a q/dq node."""
        steps = 0
        while (
            node.name in self.entries
            and self.entries[node.name].role in ("observer", "qdq")
            and node.args
            and isinstance(node.args[0], Node)
            and steps < 8
        ):
            node, steps = node.args[0], steps + 1
        return node

    def value(self, node: Node) -> Any:
        """The tensor or module a get_attr or call_module node names (None where nothing is)."""
        try:
            return get_attr_value(self.gm, node)
        except AttributeError:
            return None


def diff_stages(
    before: GraphModule, after: GraphModule, *, before_stage: str, after_stage: str
) -> StageDiff:
    """Match the nodes of two stages by provenance and classify every one (module docstring)."""
    left = _SideGraph(before, before_stage)
    right = _SideGraph(after, after_stage)
    changes: list[tuple[float, int, NodeChange]] = []
    last_after = -1.0
    for name, entry in left.entries.items():
        partner = right.by_key.get(entry.key)
        if partner is None:
            changes.append((last_after + 0.5, left.order[name], _removed(entry, left, right)))
        else:
            last_after = right.order[partner.node.name]
    for name, entry in right.entries.items():
        partner = left.by_key.get(entry.key)
        change = _added(entry, right) if partner is None else _matched(partner, entry, left, right)
        changes.append((float(right.order[name]), -1, change))
    changes.sort(key=lambda item: (item[0], item[1]))
    return StageDiff(before_stage, after_stage, tuple(c for _, _, c in changes))


def _matched(a: _Entry, b: _Entry, left: _SideGraph, right: _SideGraph) -> NodeChange:
    notes: list[str] = []
    if a.info.op_name != b.info.op_name:
        notes.append(f"op {a.info.op_name} -> {b.info.op_name}")
    notes.extend(_input_changes(a, b, left, right))
    if a.role == "param":
        notes.extend(_tensor_change(left.value(a.node), right.value(b.node)))
    elif a.role == "observer":
        notes.extend(_state_change(left.value(a.node), right.value(b.node)))
    renamed = a.node.name != b.node.name
    if notes:
        kind: ChangeKind = "rewritten"
        if renamed:
            notes.insert(0, f"renamed {a.node.name} -> {b.node.name}")
    elif renamed:
        kind, notes = "renamed", [f"{a.node.name} -> {b.node.name}"]
    else:
        kind = "unchanged"
    return NodeChange(
        kind, a.node.name, b.node.name, b.origin or a.origin, a.group or b.group,
        b.info.op_name, b.module or a.module, "; ".join(notes),
    )  # fmt: skip


def _input_changes(a: _Entry, b: _Entry, left: _SideGraph, right: _SideGraph) -> list[str]:
    """What differs in the arguments, inputs compared by key through quantization nodes."""

    def signature(entry: _Entry, side: _SideGraph) -> tuple[list[Any], dict[str, Any]]:
        def as_key(value: Any) -> Any:
            if isinstance(value, Node):
                source = side.source(value)
                found = side.entries.get(source.name)
                return ("@", found.key if found else source.name)
            return value

        node = entry.node
        args = map_aggregate(node.args, as_key) if entry.role != "io" else ()
        kwargs = map_aggregate(dict(node.kwargs), as_key)
        return list(args), dict(kwargs)  # type: ignore[arg-type]

    args_a, kwargs_a = signature(a, left)
    args_b, kwargs_b = signature(b, right)
    notes: list[str] = []
    width = max(len(args_a), len(args_b))
    for i in range(width):
        va = args_a[i] if i < len(args_a) else None
        vb = args_b[i] if i < len(args_b) else None
        if _same(va, vb):
            continue
        na = a.node.args[i] if i < len(a.node.args) else None
        nb = b.node.args[i] if i < len(b.node.args) else None
        label = _arg_label(i, a, b)
        if label == "weight" and isinstance(na, Node) and isinstance(nb, Node):
            notes.append(f"weight now {_tensor_desc(nb, right)}, was {_tensor_desc(na, left)}")
        else:
            notes.append(f"{label}: {_show(na, left)} -> {_show(nb, right)}")
    for name in sorted(set(kwargs_a) | set(kwargs_b)):
        if not _same(kwargs_a.get(name), kwargs_b.get(name)):
            notes.append(f"{name}: {_show(a.node.kwargs.get(name), left)} -> "
                         f"{_show(b.node.kwargs.get(name), right)}")  # fmt: skip
    return notes


def _same(x: Any, y: Any) -> bool:
    try:
        return bool(x == y)
    except (RuntimeError, TypeError, ValueError):
        return x is y


def _arg_label(index: int, a: _Entry, b: _Entry) -> str:
    if a.info.family in ("conv", "linear") and index < 3:
        return ("input", "weight", "bias")[index]
    if index == 0:
        return "input"
    schema = getattr(b.node.target, "_schema", None)
    if schema is not None and index < len(schema.arguments):
        return str(schema.arguments[index].name)
    return f"arg {index}"


def _show(value: Any, side: _SideGraph) -> str:
    if isinstance(value, Node):
        source = side.source(value)
        return value.name if source is value else f"{source.name} via {value.name}"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _tensor_desc(node: Node, side: _SideGraph) -> str:
    """How a weight arrives, then where from: `int8 per-channel (quantize_per_channel_1)`."""
    source = side.source(node)
    state = _quant_state(node, side)
    found = side.entries.get(source.name)
    if found is not None and found.role == "helper":
        state = f"{state} and scaled by the BN fusion" if state != "float" else "BN-scaled"
    return f"{state} ({source.name})"


def _quant_state(node: Node, side: _SideGraph) -> str:
    """float, observed, fake-quantized, or the dtype and granularity of a dequantize."""
    entry = side.entries.get(node.name)
    if entry is None:
        return "float"
    if entry.role == "observer":
        module = side.value(node)
        return "fake-quantized" if "FakeQuant" in type(module).__name__ else "observed"
    if entry.role == "qdq":
        return qdq_scheme(node)
    return "float"


def _tensor_change(x: Any, y: Any) -> list[str]:
    if not (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor)):
        return [] if type(x) is type(y) else ["value changed"]
    if x.shape != y.shape or x.dtype != y.dtype:
        return [f"{_describe_tensor(x)} -> {_describe_tensor(y)}"]
    if torch.equal(x, y):
        return []
    if x.is_floating_point():
        delta = float((x.detach().double() - y.detach().double()).abs().max())
        return [f"values changed (max |Δ| {delta:.3g})"]
    return ["values changed"]


def _state_change(x: Any, y: Any) -> list[str]:
    if not (isinstance(x, torch.nn.Module) and isinstance(y, torch.nn.Module)):
        return []
    sx, sy = x.state_dict(), y.state_dict()
    changed = [k for k in sx if k not in sy or _tensor_change(sx[k], sy[k])]
    changed += [k for k in sy if k not in sx]
    # A fake quantizer's inner observer repeats the outer names: min_val, not a.b.min_val.
    short = dict.fromkeys(k.rpartition(".")[2] for k in changed)
    return [f"state changed: {', '.join(short)}"] if short else []


def _describe_tensor(t: torch.Tensor) -> str:
    shape = "×".join(str(d) for d in t.shape) or "scalar"
    return f"{shape} {str(t.dtype).removeprefix('torch.')}"


def _added(entry: _Entry, side: _SideGraph) -> NodeChange:
    return NodeChange("added", None, entry.node.name, entry.origin, entry.group,
                      entry.info.op_name, entry.module, _node_detail(entry, side))  # fmt: skip


def _removed(entry: _Entry, side: _SideGraph, other: _SideGraph) -> NodeChange:
    detail = _node_detail(entry, side)
    if entry.role == "bn":
        anchor = next((e for e in other.entries.values()
                       if e.role == "op" and e.origin == entry.group), None)  # fmt: skip
        detail = f"folded into {anchor.node.name}" if anchor is not None else "removed"
    elif entry.role == "param":
        detail = "no longer read by the graph"
    return NodeChange("removed", entry.node.name, None, entry.origin, entry.group,
                      entry.info.op_name, entry.module, detail)  # fmt: skip


def _node_detail(entry: _Entry, side: _SideGraph) -> str:
    node = entry.node
    if entry.role == "observer":
        module = side.value(node)
        return f"{type(module).__name__} on {side.source(node).name}"
    if entry.role == "qdq":
        params = call_arguments(node)
        dtype = qdq_dtype(node)
        scale = params.get("scale")
        where = side.source(node).name
        if isinstance(scale, float):
            return f"{dtype} scale={scale:.6g} zero_point={params.get('zero_point')} on {where}"
        if "axis" in params:
            return f"{dtype} per-channel (axis {params['axis']}) on {where}"
        return f"{dtype} on {where}"
    if entry.role == "helper":
        return f"{_HELPER_DETAIL} of {entry.group}" if entry.group else "helper"
    if entry.role == "param":
        value = side.value(node)
        return _describe_tensor(value) if isinstance(value, torch.Tensor) else ""
    return ""


def code_diff(before: GraphModule, after: GraphModule) -> str:
    """A unified diff of the two graphs' generated Python code, the plain-text fallback view."""
    lines = difflib.unified_diff(
        before.code.splitlines(keepends=True),
        after.code.splitlines(keepends=True),
        fromfile="before",
        tofile="after",
    )
    return "".join(lines)
