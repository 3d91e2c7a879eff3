"""What one PT2E step changed in the graph: nodes of two stages matched by provenance.

Any two GraphModules derived from one captured graph can be compared (exported, prepared,
calibrated/trained, converted). Each node gets a *role* and a *matching key*; nodes with
equal keys on both sides are the same computation.

- Placeholders and the output: by name. get_attr nodes: by target (`stem.conv.weight`).
  Observer / fake-quant modules: by module name (`activation_post_process_3`).
- Ops of the exported graph: by provenance root, the rule of `workbench.numeric` (the end
  of `meta["from_node"]`, compared with the stage's own exported graph id). QAT renames
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

import dataclasses
import difflib
import re
from collections import Counter
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import pandas as pd
import torch
from torch.fx import GraphModule, Node
from torch.fx.node import map_aggregate

from workbench.graph import GraphView, NodeInfo, describe
from workbench.numeric import _exported_graph_id, _is_batch_norm, _is_qdq, _root
from workbench.render import (
    OPEN_COLLAPSED_ABOVE,
    NodeOverlay,
    box_of,
    group_depth,
    max_depth,
    single_node_modules,
    to_dot,
)

__all__ = [
    "DIFF_COLOURS",
    "KINDS",
    "NodeChange",
    "StageDiff",
    "code_diff",
    "diff_opening_depth",
    "diff_stages",
    "diff_to_dot",
    "group_overlays",
    "grouped_view",
    "overlay_to_dot",
    "overlay_view",
]

ChangeKind = Literal["unchanged", "renamed", "rewritten", "added", "removed"]
Side = Literal["before", "after"]
KINDS: tuple[str, ...] = ("unchanged", "renamed", "rewritten", "added", "removed")

# Fill colour per kind; "removed" is the colour of the dashed border (fill stays white).
DIFF_COLOURS: dict[str, str] = {
    "added": "#a1d99b",
    "removed": "#e6550d",
    "rewritten": "#fdae6b",
    "renamed": "#e0e0e0",
    "unchanged": "#e0e0e0",
}
_REMOVED_FILL = "#ffffff"
_BADGES = {"added": "added", "removed": "removed", "rewritten": "rewritten"}

Key = tuple[Any, ...]


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
    anchor = next((c for c in members if c.origin == group and c.op not in _QUANT_OPS
                   and c.kind not in ("added", "removed")), None)  # fmt: skip
    for c in members:
        if c.op in _BN_OPS and c.kind == "removed":
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


_QUANT_OPS = frozenset(
    {"quantize_per_tensor", "dequantize_per_tensor", "quantize_per_channel",
     "dequantize_per_channel", "choose_qparams"}
)  # fmt: skip
_BN_OPS = frozenset({"batch_norm", "_native_batch_norm_legit_no_training",
                     "_native_batch_norm_legit", "native_batch_norm"})  # fmt: skip
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
    key: Key = ()
    module: str = ""


class _SideGraph:
    """Roles, groups and matching keys of the nodes of one stage."""

    def __init__(self, gm: GraphModule, stage: str) -> None:
        self.gm = gm
        self.view = describe(gm, stage=stage)
        self.exported_id = _exported_graph_id(gm)
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
        if _is_qdq(node):
            return "qdq"
        if _is_batch_norm(node):
            return "bn"
        if param_derived or _root(node)[1] != self.exported_id:
            return "helper"
        return "op"

    def _origin(self, node: Node) -> str | None:
        if node.op == "get_attr":
            return str(node.target)
        if node.op == "call_module":
            return None
        name, graph_id = _root(node)
        return str(name) if graph_id == self.exported_id else None

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
        seen: Counter[Key] = Counter()
        for node in nodes:
            entry = self.entries[node.name]
            base: Key
            if entry.role == "io":
                base = ("io", node.name)
            elif entry.role == "param":
                base = ("param", str(node.target))
            elif entry.role == "observer":
                base = ("module", str(node.target))
            elif entry.role == "bn" and len(node.args) > 1 and _is_get_attr(node.args[1]):
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
            module = _owner(node)
            if entry.role == "bn" and len(node.args) > 1 and _is_get_attr(node.args[1]):
                module = _owner(node.args[1])  # type: ignore[arg-type]
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

    def tensor(self, target: str) -> Any:
        value: Any = self.gm
        for part in target.split("."):
            value = getattr(value, part, None)
            if value is None:
                return None
        return value


def _owner(node: Node) -> str:
    """The module that owns a get_attr's tensor (`stem.bn` for `stem.bn.weight`)."""
    if node.op != "get_attr":
        return ""
    return str(node.target).rpartition(".")[0]


def _is_get_attr(value: Any) -> bool:
    return isinstance(value, Node) and value.op == "get_attr"


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
        notes.extend(_tensor_change(left.tensor(str(a.node.target)),
                                    right.tensor(str(b.node.target))))  # fmt: skip
    elif a.role == "observer":
        notes.extend(_state_change(left.tensor(str(a.node.target)),
                                   right.tensor(str(b.node.target))))  # fmt: skip
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
        module = side.tensor(str(node.target))
        return "fake-quantized" if "FakeQuant" in type(module).__name__ else "observed"
    if entry.role == "qdq":
        params = _qdq_params(node)
        dtype = str(params.get("dtype", "")).removeprefix("torch.")
        scheme = "per-channel" if "per_channel" in entry.info.op_name else "per-tensor"
        return f"{dtype} {scheme}".strip()
    return "float"


def _qdq_params(node: Node) -> dict[str, Any]:
    """A q/dq node's arguments by schema name (scale, zero_point, quant_min, dtype, ...)."""
    schema = getattr(node.target, "_schema", None)
    names = [a.name for a in schema.arguments] if schema is not None else []
    return {**dict(zip(names, node.args, strict=False)), **node.kwargs}


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
        module = side.tensor(str(node.target))
        return f"{type(module).__name__} on {side.source(node).name}"
    if entry.role == "qdq":
        params = _qdq_params(node)
        dtype = str(params.get("dtype", "")).removeprefix("torch.")
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
        value = side.tensor(str(node.target))
        return _describe_tensor(value) if isinstance(value, torch.Tensor) else ""
    return ""


def diff_to_dot(
    view: GraphView,
    diff: StageDiff,
    *,
    side: Side,
    focus_group: str | None = None,
    collapse_depth: int | None = None,
    expanded: Collection[str] = (),
) -> str:
    """DOT text of one side of a diff, each node coloured by what happened to it.

    `view` describes that side's GraphModule. Added nodes are green, rewritten amber,
    renamed and unchanged grey; removed nodes exist only on the before side and are drawn
    there with a dashed red border. With `focus_group`, only the group's nodes and their
    direct inputs and outputs are drawn. With `collapse_depth`, modules not in `expanded` are
    one box each (see `to_dot`), placed by `grouped_view` and labelled with their counts per
    kind (`group_overlays`).
    """
    overlay: dict[str, NodeOverlay] = {}
    for change in diff.changes:
        name = change.before if side == "before" else change.after
        if name is None or name not in view:
            continue
        tooltip = f"{change.kind}: {change.detail}" if change.detail else change.kind
        if change.kind == "removed":
            overlay[name] = NodeOverlay(
                fill=_REMOVED_FILL, border=DIFF_COLOURS["removed"], badge=_BADGES["removed"],
                tooltip=tooltip, style="rounded,filled,dashed",
            )  # fmt: skip
        else:
            badge = _BADGES.get(change.kind)
            if change.kind == "renamed":
                other = change.after if side == "before" else change.before
                badge = f"now {other}" if side == "before" else f"was {other}"
            overlay[name] = NodeOverlay(fill=DIFF_COLOURS[change.kind], badge=badge,
                                        tooltip=tooltip)  # fmt: skip
    if focus_group is not None:
        before, after = diff.group_members(focus_group)
        view = _focus(view, before if side == "before" else after)
    elif collapse_depth is not None:
        view = grouped_view(view, diff, side=side)
        changes = _changes_by_node(view, diff, side)
        overlay.update(group_overlays(view, changes, collapse_depth, expanded))
    return to_dot(view, overlay=overlay, collapse_depth=collapse_depth, expanded=expanded)


def grouped_view(view: GraphView, diff: StageDiff, *, side: Side | None = None) -> GraphView:
    """`view` with nodes outside every module (q/dq, observers) put in the diff's module.

    FX gives the nodes prepare and convert insert no module stack; the diff knows the module
    of the op each one serves, so a collapsed module box counts them. `side=None` reads an
    `overlay_view` (after-side names, removed nodes behind REMOVED_PREFIX).
    """
    modules = {m.path: m.type for m in view.modules.walk() if m.path}
    nodes = []
    for node in view.nodes:
        change = _change_of(diff, node.name, side)
        if node.module_chain or change is None or not change.module:
            nodes.append(node)
            continue
        parts = change.module.split(".")
        chain = tuple(p for p in (".".join(parts[: i + 1]) for i in range(len(parts)))
                      if p in modules)  # fmt: skip
        if not chain:
            nodes.append(node)
            continue
        nodes.append(dataclasses.replace(node, module=chain[-1], module_type=modules[chain[-1]],
                                         module_chain=chain))  # fmt: skip
    return GraphView(view.stage, tuple(nodes), view.edges, view.modules)


def diff_opening_depth(before: GraphView, after: GraphView, diff: StageDiff) -> int | None:
    """The collapse depth both sides of a diff open at: module groups over
    OPEN_COLLAPSED_ABOVE nodes on the larger side, else None (drawn whole)."""
    if max(len(before), len(after)) <= OPEN_COLLAPSED_ABOVE or max_depth(before) == 0:
        return None
    return group_depth(grouped_view(before, diff, side="before"))


def group_overlays(
    view: GraphView,
    changes: dict[str, NodeChange],
    collapse_depth: int,
    expanded: Collection[str] = (),
) -> dict[str, NodeOverlay]:
    """Styling of the collapsed module boxes: counts per kind, coloured by the strongest.

    A box holding rewritten nodes is amber, else added green, else removed (dashed red);
    a box where nothing changed keeps the plain module colour and says "unchanged".
    Only drawn nodes count (parameters are folded into labels), like the box's node count.
    """
    counted: dict[str, Counter[str]] = {}
    opened = frozenset(expanded) | single_node_modules(view)
    for name, change in changes.items():
        if view[name].is_param:
            continue
        box = box_of(view[name], collapse_depth, opened)
        if box.startswith("module/"):
            counted.setdefault(box, Counter())[change.kind] += 1
    overlays: dict[str, NodeOverlay] = {}
    for box, kinds in counted.items():
        shown = [k for k in KINDS if k != "unchanged" and kinds.get(k)]
        note = " · ".join(f"{kinds[k]} {k}" for k in shown) or "unchanged"
        tooltip = f"{box.split('/', 1)[1]}: " + ", ".join(f"{kinds[k]} {k}" for k in KINDS
                                                          if kinds.get(k))  # fmt: skip
        tooltip += " (click to expand)"
        strongest = next((k for k in ("rewritten", "added", "removed") if kinds.get(k)), None)
        if strongest == "removed":
            overlays[box] = NodeOverlay(fill=_REMOVED_FILL, border=DIFF_COLOURS["removed"],
                                        tooltip=tooltip, note=note,
                                        style="rounded,filled,dashed")  # fmt: skip
        else:
            fill = DIFF_COLOURS[strongest] if strongest else None
            overlays[box] = NodeOverlay(fill=fill, tooltip=tooltip, note=note)
    return overlays


def _change_of(diff: StageDiff, name: str, side: Side | None) -> NodeChange | None:
    """The change behind node `name` of one side, or of an overlay view (side None)."""
    if side is None:
        if name.startswith(REMOVED_PREFIX):
            name, side = name.removeprefix(REMOVED_PREFIX), "before"
        else:
            side = "after"
    try:
        return diff.change(name, side)
    except KeyError:
        return None


def _changes_by_node(view: GraphView, diff: StageDiff, side: Side | None) -> dict[str, NodeChange]:
    found = {n.name: _change_of(diff, n.name, side) for n in view.nodes}
    return {name: change for name, change in found.items() if change is not None}


REMOVED_PREFIX = "before/"


def overlay_view(before: GraphView, after: GraphView, diff: StageDiff) -> GraphView:
    """Both stages in one graph: the after side, plus the removed nodes of the before side.

    Matched nodes appear once, under their after-side name; removed nodes keep their
    before-side name behind the prefix `before/` (FX names never contain a slash), with the
    edges they had, redrawn to the matched nodes' after-side names.
    """
    rename: dict[str, str] = {}
    removed = []
    for change in diff.changes:
        if change.before is None or change.before not in before:
            continue
        if change.kind == "removed":
            rename[change.before] = REMOVED_PREFIX + change.before
            removed.append(change.before)
        elif change.after is not None:
            rename[change.before] = change.after
    extra = tuple(dataclasses.replace(before[name], name=REMOVED_PREFIX + name) for name in removed)
    edges = list(after.edges)
    seen = set(edges)
    for src, dst in before.edges:
        if src not in removed and dst not in removed:
            continue
        edge = (rename.get(src, src), rename.get(dst, dst))
        drawn = all(end in after or end.startswith(REMOVED_PREFIX) for end in edge)
        if drawn and edge not in seen:
            seen.add(edge)
            edges.append(edge)
    return GraphView(f"{before.stage}+{after.stage}", after.nodes + extra, tuple(edges),
                     after.modules)  # fmt: skip


def overlay_to_dot(
    before: GraphView,
    after: GraphView,
    diff: StageDiff,
    *,
    collapse_depth: int | None = None,
    expanded: Collection[str] = (),
) -> str:
    """DOT text of `overlay_view`, coloured like `diff_to_dot` on both sides at once."""
    view = overlay_view(before, after, diff)
    overlay: dict[str, NodeOverlay] = {}
    for change in diff.changes:
        tooltip = f"{change.kind}: {change.detail}" if change.detail else change.kind
        if change.kind == "removed" and change.before is not None:
            overlay[REMOVED_PREFIX + change.before] = NodeOverlay(
                fill=_REMOVED_FILL, border=DIFF_COLOURS["removed"], badge=_BADGES["removed"],
                tooltip=tooltip, style="rounded,filled,dashed",
            )  # fmt: skip
        elif change.after is not None:
            badge = _BADGES.get(change.kind)
            if change.kind in ("renamed", "rewritten") and change.before != change.after:
                badge = f"{badge or change.kind}, was {change.before}"
            overlay[change.after] = NodeOverlay(
                fill=DIFF_COLOURS[change.kind], badge=badge, tooltip=tooltip
            )
    if collapse_depth is not None:
        view = grouped_view(view, diff)
        changes = _changes_by_node(view, diff, None)
        overlay.update(group_overlays(view, changes, collapse_depth, expanded))
    return to_dot(view, overlay=overlay, collapse_depth=collapse_depth, expanded=expanded)


def _focus(view: GraphView, members: Iterable[str]) -> GraphView:
    """The part of `view` made of `members` and their direct inputs and outputs."""
    keep = {m for m in members if m in view}
    near = {s for s, d in view.edges if d in keep} | {d for s, d in view.edges if s in keep}
    keep |= near
    nodes = tuple(n for n in view.nodes if n.name in keep)
    edges = tuple(e for e in view.edges if e[0] in keep and e[1] in keep)
    return GraphView(view.stage, nodes, edges, view.modules)


def code_diff(before: GraphModule, after: GraphModule) -> str:
    """A unified diff of the two graphs' generated Python code, the plain-text fallback view."""
    lines = difflib.unified_diff(
        before.code.splitlines(keepends=True),
        after.code.splitlines(keepends=True),
        fromfile="before",
        tofile="after",
    )
    return "".join(lines)
