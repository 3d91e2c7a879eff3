"""DOT text for a graph view (clusters per module, collapse, overlays) and SVG through `dot`."""

from __future__ import annotations

import math
import shutil
import subprocess
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field

import graphviz

from workbench.drawing.boxes import box_of, collapsed_module, max_depth, single_node_modules
from workbench.drawing.overlays import (
    EDGE_COLOUR,
    FRAME_COLOUR,
    FRAME_TITLE_COLOUR,
    MODULE_BOX_COLOUR,
    NodeOverlay,
    family_colour,
)
from workbench.errors import WorkbenchError
from workbench.graph.view import GraphView, NodeInfo

# Per-module clusters keep `dot` near 0.5 s at this many boxes on a 2-core machine (measured
# with one cluster per layer: 1,000 nodes 0.2-0.25 s, 3,000 nodes 1.3-1.8 s).
DEFAULT_NODE_BUDGET = 1500
# Over this many graph nodes a graph opens collapsed to module groups: drawn whole, a ResNet-50
# (497 nodes) is a column too long to read at first sight.
OPEN_COLLAPSED_ABOVE = 300
GROUP_BOXES = 40  # module groups: the deepest depth drawing at most this many boxes
EXPAND_BOXES = 120  # a click opens a group as many levels down as keep it under this
REVEAL_BOXES = 400  # search opens the groups of its matches while the graph stays under this

__all__ = [
    "DEFAULT_NODE_BUDGET",
    "EXPAND_BOXES",
    "GROUP_BOXES",
    "OPEN_COLLAPSED_ABOVE",
    "REVEAL_BOXES",
    "Rendered",
    "Styles",
    "box_of",
    "collapse_group",
    "count_boxes",
    "dot_to_svg",
    "expand_group",
    "format_shape",
    "group_depth",
    "max_depth",
    "opening_depth",
    "render_for_screen",
    "reveal",
    "single_node_modules",
    "to_dot",
]

# Styling drawn into the layout, per node or box id (the colours and styles of an overlay).
Styles = Mapping[str, NodeOverlay]


@dataclass(frozen=True)
class Rendered:
    """DOT text for the screen and the view options that produced it."""

    dot: str
    collapse_depth: int | None
    chunk_size: int | None
    boxes: int
    auto_collapsed: bool
    expanded: frozenset[str] = frozenset()


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
    overlay: Styles | None = None,
    fold_params: bool = True,
    rankdir: str = "TB",
    expanded: Collection[str] = (),
) -> str:
    """DOT text for `view`.

    Node ids are FX node names; a module collapsed at `collapse_depth` (1 = top-level children
    of the model) is one box with id `module/PATH`, unless its path is in `expanded`: then its
    children are drawn (collapsed in turn unless expanded) inside a frame `cluster/PATH` whose
    label starts with "▾". With `chunk_size`, nodes outside every module are grouped into
    boxes `chunk/N` of that many consecutive nodes. A box inside a frame is labelled with its
    path relative to the frame's, and so are a frame's title and a node's module line.
    """
    opened = frozenset(expanded) | single_node_modules(view)
    items, rep = _items(view, collapse_depth, chunk_size, fold_params, opened)
    overlay = overlay or {}
    dot = graphviz.Digraph(
        view.stage,
        graph_attr={"rankdir": rankdir, "fontname": "Helvetica", "fontsize": "10"},
        node_attr={"shape": "box", "style": "rounded,filled", "fontname": "Helvetica",
                   "fontsize": "10"},
        edge_attr={"arrowsize": "0.6", "color": EDGE_COLOUR},
    )  # fmt: skip
    root = _Cluster("")
    for item in items:
        _cluster_for(root, item.clusters).entries.append(item)
    types = {m.path: m.type for m in view.modules.walk()}
    _emit_cluster(dot, root, types, overlay, collapse_depth)
    seen: set[tuple[str, str]] = set()
    for src, dst in view.edges:
        edge = (rep.get(src), rep.get(dst))
        if edge[0] is None or edge[1] is None or edge[0] == edge[1] or edge in seen:
            continue
        seen.add(edge)  # type: ignore[arg-type]
        dot.edge(edge[0], edge[1])
    return dot.source


def group_depth(view: GraphView, *, boxes: int = GROUP_BOXES, fold_params: bool = True) -> int:
    """The depth of a view's module groups: the deepest collapse depth within `boxes` boxes."""
    best = 1
    for depth in range(1, max_depth(view) + 1):
        if count_boxes(view, collapse_depth=depth, fold_params=fold_params) > boxes:
            break
        best = depth
    return best


def opening_depth(view: GraphView) -> int | None:
    """The collapse depth a view opens at: module groups over OPEN_COLLAPSED_ABOVE nodes."""
    if len(view) <= OPEN_COLLAPSED_ABOVE or max_depth(view) == 0:
        return None
    return group_depth(view)


def expand_group(
    view: GraphView,
    expanded: Collection[str],
    path: str,
    *,
    collapse_depth: int,
    boxes: int = EXPAND_BOXES,
) -> frozenset[str]:
    """`expanded` with module `path` opened: as many levels down as keep it within `boxes`.

    A ResNet bottleneck opens to its ops in one click; a 200-cell stage opens to its cells.
    The result includes the view's single-node modules (always drawn open).
    """
    opened = frozenset(expanded) | {path} | single_node_modules(view)
    below = [m for m in view.modules.walk() if m.path.startswith(path + ".")]
    for depth in sorted({m.depth for m in below}):
        wider = opened | {m.path for m in below if m.depth == depth}
        inside = {
            box_of(n, collapse_depth, wider)
            for n in view.nodes
            if path in n.module_chain and not n.is_param
        }
        if len(inside) > boxes:
            break
        opened = wider
    return opened


def collapse_group(expanded: Collection[str], path: str) -> frozenset[str]:
    """`expanded` with module `path` and every module inside it closed again."""
    return frozenset(p for p in expanded if p != path and not p.startswith(path + "."))


def reveal(
    view: GraphView,
    names: Iterable[str],
    expanded: Collection[str],
    *,
    collapse_depth: int | None,
    boxes: int = REVEAL_BOXES,
) -> frozenset[str]:
    """`expanded` with the groups of nodes `names` opened, in order, while within `boxes`.

    The result includes the view's single-node modules (always drawn open), so `box_of`
    with it names the box each node is drawn in.
    """
    opened = frozenset(expanded) | single_node_modules(view)
    if collapse_depth is None:
        return opened
    for name in names:
        chain = view[name].module_chain[collapse_depth - 1 :]
        if all(path in opened for path in chain):
            continue
        wider = opened | set(chain)
        if count_boxes(view, collapse_depth=collapse_depth, expanded=wider) > boxes:
            break
        opened = wider
    return opened


def count_boxes(
    view: GraphView,
    *,
    collapse_depth: int | None = None,
    chunk_size: int | None = None,
    fold_params: bool = True,
    expanded: Collection[str] = (),
) -> int:
    """How many boxes `to_dot` would draw with these options."""
    opened = frozenset(expanded) | single_node_modules(view)
    return len(_items(view, collapse_depth, chunk_size, fold_params, opened)[0])


def render_for_screen(
    view: GraphView,
    *,
    collapse_depth: int | None = None,
    node_budget: int = DEFAULT_NODE_BUDGET,
    overlay: Styles | None = None,
    fold_params: bool = True,
    expanded: Collection[str] = (),
) -> Rendered:
    """DOT text that stays within `node_budget` boxes, collapsing modules further if needed.

    The requested depth (and `expanded` groups) is kept when it fits; otherwise the deepest
    depth that fits is used with nothing expanded, and if even top-level modules are too many
    boxes, loose nodes are chunked as well.
    """
    opened = frozenset(expanded) | single_node_modules(view)
    if collapse_depth is not None and frozenset(expanded):
        boxes = count_boxes(view, collapse_depth=collapse_depth, fold_params=fold_params,
                            expanded=opened)  # fmt: skip
        if boxes <= node_budget:
            dot = to_dot(view, collapse_depth=collapse_depth, overlay=overlay,
                         fold_params=fold_params, expanded=opened)  # fmt: skip
            return Rendered(dot, collapse_depth, None, boxes, False, opened)
    depths = [collapse_depth] if collapse_depth is not None else [None]
    start = max_depth(view) if collapse_depth is None else collapse_depth - 1
    depths += list(range(start, 0, -1))
    for depth in depths:
        boxes = count_boxes(view, collapse_depth=depth, fold_params=fold_params)
        if boxes <= node_budget:
            dot = to_dot(view, collapse_depth=depth, overlay=overlay, fold_params=fold_params)
            return Rendered(dot, depth, None, boxes, depth != collapse_depth,
                            single_node_modules(view))  # fmt: skip
    depth = 1 if max_depth(view) else None
    loose = count_boxes(view, collapse_depth=depth, fold_params=fold_params)
    chunk = max(2, math.ceil(loose / max(1, node_budget // 2)))
    while (
        boxes := count_boxes(view, collapse_depth=depth, chunk_size=chunk, fold_params=fold_params)
    ) > node_budget:
        chunk *= 2
    dot = to_dot(view, collapse_depth=depth, chunk_size=chunk, overlay=overlay,
                 fold_params=fold_params)  # fmt: skip
    return Rendered(dot, depth, chunk, boxes, True, single_node_modules(view))


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
    view: GraphView,
    collapse_depth: int | None,
    chunk_size: int | None,
    fold_params: bool,
    expanded: frozenset[str] = frozenset(),
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
        path = collapsed_module(chain, collapse_depth, expanded)
        if chunk_size is not None and (not chain or collapse_depth == 1):
            # Consecutive top-level boxes (loose nodes and whole top-level modules) share one.
            position = top_level.setdefault(chain[0] if chain else node.name, len(top_level))
            item = _box(boxes, items, f"chunk/{position // chunk_size}", "chunk", ())
        elif path is not None:
            item = _box(boxes, items, "module/" + path, "module", chain[: chain.index(path)])
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
    dot: graphviz.Digraph,
    cluster: _Cluster,
    types: dict[str, str],
    overlay: Styles,
    collapse_depth: int | None,
    level: int = 1,
    frame: str = "",
) -> None:
    """Emit a cluster's entries; `level` is their module depth, `frame` the enclosing frame."""
    for start in cluster.entries:
        entry, depth = start, level
        # A module holding a single box (a leaf Conv2d, say) gets no frame of its own: the
        # box's label already names the module.
        while isinstance(entry, _Cluster) and len(entry.entries) == 1:
            entry, depth = entry.entries[0], depth + 1
        if isinstance(entry, _Item):
            _emit_item(dot, entry, types, overlay, frame)
            continue
        with dot.subgraph(name="cluster_" + entry.path) as sub:
            name = _relative(entry.path, frame)
            label = f"{name} ({types[entry.path]})" if types.get(entry.path) else name
            # A frame at the collapse depth or deeper is an expanded group: clicking it closes it.
            opened = collapse_depth is not None and depth >= collapse_depth
            sub.attr(id="cluster/" + entry.path, label=("▾ " if opened else "") + label,
                     style="rounded,dashed", color=FRAME_COLOUR,
                     fontcolor=FRAME_TITLE_COLOUR)  # fmt: skip
            _emit_cluster(sub, entry, types, overlay, collapse_depth, depth + 1, entry.path)


def _emit_item(
    dot: graphviz.Digraph, item: _Item, types: dict[str, str], overlay: Styles, frame: str = ""
) -> None:
    extra = overlay.get(item.id, NodeOverlay())
    if item.node is not None:
        lines = _node_lines(item.node, frame)
        fill = family_colour(item.node.family)
        tooltip = _node_tooltip(item.node)
        shape = "ellipse" if item.node.family in ("input", "output") else None
    else:
        path = item.id.split("/", 1)[1]
        if item.kind == "module":
            lines = [_relative(path, frame), types.get(path, ""), _count(item.count)]
        else:
            lines = [f"{item.first} … {item.last}", _count(item.count)]
        lines = [line for line in lines if line]
        fill, shape = MODULE_BOX_COLOUR, "box3d"
        tooltip = " / ".join([path, *lines[1:]]) + " (click to expand)" * (item.kind == "module")
    if extra.badge:
        lines[0] = f"{lines[0]}  [{extra.badge}]"
    if extra.note:
        lines.append(extra.note)
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


def _relative(path: str, frame: str) -> str:
    """A module path as read inside the frame of module `frame` (whose title names it)."""
    return path.removeprefix(frame + ".") if frame else path


def _node_lines(node: NodeInfo, frame: str = "") -> list[str]:
    head = node.name if node.op_name in (node.name, "input", "output") else (
        f"{node.name} · {node.op_name}"
    )  # fmt: skip
    lines = [head]
    # Inside its own module's frame the module line would repeat the frame's title.
    if node.module and node.family not in ("input", "output") and node.module != frame:
        lines.append(f"{node.module_type} {_relative(node.module, frame)}".strip())
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
