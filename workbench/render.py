"""DOT text for a graph view (clusters per module, collapse, overlays) and SVG through `dot`."""

from __future__ import annotations

import math
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field

import graphviz

from workbench.errors import WorkbenchError
from workbench.graph import GraphView, NodeInfo

# Per-module clusters keep `dot` near 0.5 s at this many boxes on a 2-core machine
# (STREAMLIT_NOTES.md: 1,000 nodes 0.2-0.25 s, 3,000 nodes 1.3-1.8 s).
DEFAULT_NODE_BUDGET = 1500

FAMILY_COLOURS: dict[str, str] = {
    "input": "#e0e0e0",
    "output": "#e0e0e0",
    "param": "#f5f5f5",
    "conv": "#8ecae6",
    "linear": "#a8dadc",
    "matmul": "#b5ead7",
    "norm": "#ffd6a5",
    "activation": "#fdffb6",
    "pool": "#cdb4db",
    "elementwise": "#ffc8dd",
    "reduction": "#e2c2ff",
    "shape": "#f1f1f1",
    "quant": "#ff9f9f",
    "observer": "#ffadad",
    "other": "#ffffff",
}
MODULE_BOX_COLOUR = "#dbe4ee"


@dataclass(frozen=True)
class NodeOverlay:
    """Extra styling for one node or module box: later features' annotations, diffs, SQNR."""

    fill: str | None = None
    border: str | None = None
    badge: str | None = None
    tooltip: str | None = None
    style: str | None = None  # Graphviz node style, e.g. "rounded,filled,dashed"


Overlay = Mapping[str, NodeOverlay]


@dataclass(frozen=True)
class Rendered:
    """DOT text for the screen and the view options that produced it."""

    dot: str
    collapse_depth: int | None
    chunk_size: int | None
    boxes: int
    auto_collapsed: bool


@dataclass
class _Item:
    id: str
    kind: str  # "node", "module" or "chunk"
    clusters: tuple[str, ...]
    node: NodeInfo | None = None
    count: int = 0
    first: str = ""
    last: str = ""


@dataclass
class _Cluster:
    path: str
    entries: list[_Item | _Cluster] = field(default_factory=list)
    children: dict[str, _Cluster] = field(default_factory=dict)


def to_dot(
    view: GraphView,
    *,
    collapse_depth: int | None = None,
    chunk_size: int | None = None,
    overlay: Overlay | None = None,
    fold_params: bool = True,
    rankdir: str = "TB",
) -> str:
    """DOT text for `view`.

    Node ids are FX node names; a module collapsed at `collapse_depth` (1 = top-level children
    of the model) is one box with id `module/PATH`; with `chunk_size`, nodes outside every
    module are grouped into boxes `chunk/N` of that many consecutive nodes.
    """
    items, rep = _items(view, collapse_depth, chunk_size, fold_params)
    overlay = overlay or {}
    dot = graphviz.Digraph(
        view.stage,
        graph_attr={"rankdir": rankdir, "fontname": "Helvetica", "fontsize": "10"},
        node_attr={"shape": "box", "style": "rounded,filled", "fontname": "Helvetica",
                   "fontsize": "10"},
        edge_attr={"arrowsize": "0.6", "color": "#555555"},
    )  # fmt: skip
    root = _Cluster("")
    for item in items:
        _cluster_for(root, item.clusters).entries.append(item)
    types = {m.path: m.type for m in view.modules.walk()}
    _emit_cluster(dot, root, types, overlay)
    seen: set[tuple[str, str]] = set()
    for src, dst in view.edges:
        edge = (rep.get(src), rep.get(dst))
        if edge[0] is None or edge[1] is None or edge[0] == edge[1] or edge in seen:
            continue
        seen.add(edge)  # type: ignore[arg-type]
        dot.edge(edge[0], edge[1])
    return dot.source


def box_of(node: NodeInfo, collapse_depth: int | None) -> str:
    """The id of the box that stands for `node` when drawn at `collapse_depth` (no chunking)."""
    chain = node.module_chain
    if collapse_depth is not None and len(chain) >= collapse_depth:
        return "module/" + chain[collapse_depth - 1]
    return node.name


def count_boxes(
    view: GraphView,
    *,
    collapse_depth: int | None = None,
    chunk_size: int | None = None,
    fold_params: bool = True,
) -> int:
    """How many boxes `to_dot` would draw with these options."""
    return len(_items(view, collapse_depth, chunk_size, fold_params)[0])


def max_depth(view: GraphView) -> int:
    """The deepest module nesting in the view (0 for a model without submodules)."""
    return max((len(n.module_chain) for n in view.nodes), default=0)


def render_for_screen(
    view: GraphView,
    *,
    collapse_depth: int | None = None,
    node_budget: int = DEFAULT_NODE_BUDGET,
    overlay: Overlay | None = None,
    fold_params: bool = True,
) -> Rendered:
    """DOT text that stays within `node_budget` boxes, collapsing modules further if needed.

    The requested depth is kept when it fits; otherwise the deepest depth that fits is used,
    and if even top-level modules are too many boxes, loose nodes are chunked as well.
    """
    depths = [collapse_depth] if collapse_depth is not None else [None]
    start = max_depth(view) if collapse_depth is None else collapse_depth - 1
    depths += list(range(start, 0, -1))
    for depth in depths:
        boxes = count_boxes(view, collapse_depth=depth, fold_params=fold_params)
        if boxes <= node_budget:
            dot = to_dot(view, collapse_depth=depth, overlay=overlay, fold_params=fold_params)
            return Rendered(dot, depth, None, boxes, depth != collapse_depth)
    depth = 1 if max_depth(view) else None
    loose = count_boxes(view, collapse_depth=depth, fold_params=fold_params)
    chunk = max(2, math.ceil(loose / max(1, node_budget // 2)))
    while (
        boxes := count_boxes(view, collapse_depth=depth, chunk_size=chunk, fold_params=fold_params)
    ) > node_budget:
        chunk *= 2
    dot = to_dot(view, collapse_depth=depth, chunk_size=chunk, overlay=overlay,
                 fold_params=fold_params)  # fmt: skip
    return Rendered(dot, depth, chunk, boxes, True)


def dot_to_svg(dot_source: str, *, timeout: float = 120.0) -> str:
    """Lay out DOT text with Graphviz `dot` and return the SVG text."""
    exe = shutil.which("dot")
    if exe is None:
        raise WorkbenchError(
            "Graphviz 'dot' is not installed, so the graph cannot be laid out.",
            "Install it: apt-get install graphviz (Debian/Ubuntu) or brew install graphviz.",
        )
    try:
        done = subprocess.run(
            [exe, "-Tsvg"], input=dot_source, capture_output=True, text=True, timeout=timeout,
            check=False,
        )  # fmt: skip
    except subprocess.TimeoutExpired as exc:
        raise WorkbenchError(
            f"Graphviz took more than {timeout:.0f} s to lay out the graph.",
            "Collapse modules (a smaller collapse depth) or lower the node budget.",
        ) from exc
    if done.returncode != 0:
        raise RuntimeError(f"dot failed: {done.stderr.strip()[:500]}")
    return done.stdout


def _items(
    view: GraphView, collapse_depth: int | None, chunk_size: int | None, fold_params: bool
) -> tuple[list[_Item], dict[str, str]]:
    """The boxes to draw, in graph order, and which box stands for each node."""
    items: list[_Item] = []
    boxes: dict[str, _Item] = {}
    rep: dict[str, str] = {}
    top_level: dict[str, int] = {}  # with chunking: top-level module or node -> its position
    for node in view.nodes:
        if fold_params and node.is_param:
            continue
        chain = node.module_chain
        if chunk_size is not None and (not chain or collapse_depth == 1):
            # Consecutive top-level boxes (loose nodes and whole top-level modules) share one.
            position = top_level.setdefault(chain[0] if chain else node.name, len(top_level))
            item = _box(boxes, items, f"chunk/{position // chunk_size}", "chunk", ())
        elif collapse_depth is not None and len(chain) >= collapse_depth:
            path = chain[collapse_depth - 1]
            item = _box(boxes, items, "module/" + path, "module", chain[: collapse_depth - 1])
        else:
            item = _Item(node.name, "node", chain, node)
            items.append(item)
        item.count += 1
        item.first = item.first or node.name
        item.last = node.name
        rep[node.name] = item.id
    return items, rep


def _box(
    boxes: dict[str, _Item], items: list[_Item], box_id: str, kind: str, clusters: tuple[str, ...]
) -> _Item:
    if box_id not in boxes:
        boxes[box_id] = _Item(box_id, kind, clusters)
        items.append(boxes[box_id])
    return boxes[box_id]


def _cluster_for(root: _Cluster, chain: tuple[str, ...]) -> _Cluster:
    cluster = root
    for path in chain:
        if path not in cluster.children:
            cluster.children[path] = _Cluster(path)
            cluster.entries.append(cluster.children[path])
        cluster = cluster.children[path]
    return cluster


def _emit_cluster(
    dot: graphviz.Digraph, cluster: _Cluster, types: dict[str, str], overlay: Overlay
) -> None:
    for entry in cluster.entries:
        # A module holding a single box (a leaf Conv2d, say) gets no frame of its own: the
        # box's label already names the module.
        while isinstance(entry, _Cluster) and len(entry.entries) == 1:
            entry = entry.entries[0]
        if isinstance(entry, _Item):
            _emit_item(dot, entry, types, overlay)
            continue
        with dot.subgraph(name="cluster_" + entry.path) as sub:
            label = f"{entry.path} ({types[entry.path]})" if types.get(entry.path) else entry.path
            sub.attr(id="cluster/" + entry.path, label=label, style="rounded,dashed",
                     color="#8899aa", fontcolor="#445566")  # fmt: skip
            _emit_cluster(sub, entry, types, overlay)


def _emit_item(dot: graphviz.Digraph, item: _Item, types: dict[str, str], overlay: Overlay) -> None:
    extra = overlay.get(item.id, NodeOverlay())
    if item.node is not None:
        lines = _node_lines(item.node)
        fill = FAMILY_COLOURS.get(item.node.family, "#ffffff")
        tooltip = _node_tooltip(item.node)
        shape = "ellipse" if item.node.family in ("input", "output") else None
    else:
        path = item.id.split("/", 1)[1]
        if item.kind == "module":
            lines = [path, types.get(path, ""), _count(item.count)]
        else:
            lines = [f"{item.first} … {item.last}", _count(item.count)]
        lines = [line for line in lines if line]
        fill, tooltip, shape = MODULE_BOX_COLOUR, " / ".join(lines), "box3d"
    if extra.badge:
        lines[0] = f"{lines[0]}  [{extra.badge}]"
    attrs = {"label": "\\n".join(_escape(line) for line in lines), "fillcolor": extra.fill or fill,
             "tooltip": _escape(extra.tooltip or tooltip)}  # fmt: skip
    if extra.border:
        attrs.update(color=extra.border, penwidth="2")
    if extra.style:
        attrs["style"] = extra.style
    if shape:
        attrs["shape"] = shape
    dot.node(item.id, id=item.id, **attrs)


def _count(count: int) -> str:
    return f"{count} node" if count == 1 else f"{count} nodes"


def _node_lines(node: NodeInfo) -> list[str]:
    head = node.name if node.op_name in (node.name, "input", "output") else (
        f"{node.name} · {node.op_name}"
    )  # fmt: skip
    lines = [head]
    if node.module and node.family not in ("input", "output"):
        lines.append(f"{node.module_type} {node.module}".strip())
    if node.shape is not None:
        lines.append(
            format_shape(node.shape) + (f" {_short_dtype(node.dtype)}" if node.dtype else "")
        )
    if node.params:
        lines.append(", ".join(f"{p.target.rsplit('.', 1)[-1]} {format_shape(p.shape)}"
                               for p in node.params))  # fmt: skip
    return lines


def _node_tooltip(node: NodeInfo) -> str:
    parts = [f"{node.name}: {node.target}"]
    if node.module:
        parts.append(f"module {node.module} ({node.module_type})")
    if node.source:
        parts.append(node.source + (f": {node.source_code}" if node.source_code else ""))
    return " | ".join(parts)


def format_shape(shape: tuple[int | str, ...]) -> str:
    """`(batch, 16, 8, 8)` as `batch×16×8×8`; a scalar as `scalar`."""
    return "×".join(str(d) for d in shape) if shape else "scalar"


_DTYPE_SHORT = {
    "float32": "f32", "float16": "f16", "bfloat16": "bf16", "float64": "f64",
    "int8": "i8", "uint8": "u8", "int32": "i32", "int64": "i64", "bool": "bool",
}  # fmt: skip


def _short_dtype(dtype: str | None) -> str:
    return _DTYPE_SHORT.get(dtype or "", dtype or "")


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')
