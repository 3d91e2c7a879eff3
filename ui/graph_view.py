"""A zoomable, pannable Graphviz graph that reports which node was clicked (components v2)."""

from __future__ import annotations

import math
from collections.abc import Iterable

import streamlit as st

from ui.graph_component import component
from ui.state import step, svg_for
from workbench.analysis.sqnr import NodeError
from workbench.drawing.dot import (
    OPEN_COLLAPSED_ABOVE,
    collapse_group,
    expand_group,
    format_shape,
    max_depth,
    opening_depth,
    single_node_modules,
)
from workbench.drawing.overlays import sqnr_colours
from workbench.graph.view import GraphView, NodeInfo
from workbench.quantization.recipe import Effective

AUTO, EXPANDED = "auto", "expanded"
DEPTH_HELP = (
    f"auto: the whole graph up to {OPEN_COLLAPSED_ABOVE} nodes, else module groups (one box "
    "each, with its node count; click one to expand it). A number: modules at that depth."
)


def _ignore() -> None:
    """Clicks are read from the return value; the callback only registers the key."""


def graph_view(
    dot: str,
    *,
    key: str,
    selected: str | None = None,
    colors: dict[str, str] | None = None,
    highlight: list[str] | None = None,
    center: str | None = None,
    height: str = "70vh",
) -> str | None:
    """Lay out `dot` and show it; returns the id of the node clicked in this rerun, if any.

    `colors` recolours nodes in the browser (no new layout), `highlight` outlines search
    matches and `center` scrolls one node (or frame `cluster/PATH`) into the middle once.
    A click on a frame's title returns `cluster/PATH`. A failed layout (no Graphviz) is an
    error box in the graph's place.
    """
    svg: str | None = None
    with step("Graph layout"):
        svg = svg_for(dot)
    if svg is None:
        return None
    data = {
        "svg": svg, "svg_key": f"{len(svg)}:{hash(svg)}", "selected": selected,
        "colors": colors, "highlight": highlight or [], "center": center, "height": height,
    }  # fmt: skip
    result = component(data=data, key=key, on_clicked_change=_ignore)
    return getattr(result, "clicked", None)


def depth_options(view: GraphView) -> list[str | int]:
    """The choices of the "Collapse modules at depth" slider."""
    return [AUTO, EXPANDED, *range(1, max_depth(view) + 1)]


def chosen_depth(view: GraphView, choice: str | int) -> int | None:
    """The collapse depth a slider choice stands for (None: nothing collapsed)."""
    if choice == AUTO:
        return opening_depth(view)
    return None if choice == EXPANDED else int(choice)


def group_click(
    view: GraphView, clicked: str, expanded: frozenset[str], depth: int | None
) -> tuple[frozenset[str], str]:
    """What a click does to the expansion: (expanded groups, id to select and centre on).

    A collapsed group box opens (selecting its frame), a frame title closes its group
    (selecting its box again); a node click selects the node and expands nothing.
    """
    kind, _, path = clicked.partition("/")
    if kind == "module" and depth is not None and path:
        return expand_group(view, expanded, path, collapse_depth=depth), f"cluster/{path}"
    if kind == "cluster" and path:
        # Single-node modules stay open (they are drawn as their node), as expand_group keeps.
        return collapse_group(expanded, path) | single_node_modules(view), f"module/{path}"
    return expanded, clicked


def groups_note(text: str, expanded: bool, *, key: str) -> bool:
    """How a collapsed graph reads, and a "Collapse all" button; True when it was pressed."""
    note, reset = st.columns([5, 1])
    note.caption(f"{text} Click a box to expand it, an expanded group's title (▾) to collapse it.")
    return reset.button("Collapse all", disabled=not expanded, key=f"{key}-collapse-all")


def sqnr_box_colours(
    view: GraphView, errors: Iterable[NodeError], depth: int | None
) -> dict[str, str]:
    """SQNR colours of every box an expansion can show: groups at each depth, single nodes."""
    depths = [None] if depth is None else [*range(depth, max_depth(view) + 1), None]
    return {box: colour for d in depths for box, colour in sqnr_colours(view, errors, d).items()}


def group_details(view: GraphView, box: str) -> None:
    """The detail panel for a module group box (`module/PATH`) or frame (`cluster/PATH`)."""
    kind, _, path = box.partition("/")
    try:
        module = view.module(path)
    except KeyError:
        st.caption("Click a node to see its details and edit how it is quantized.")
        return
    st.subheader(path)
    st.markdown(f"**{module.type}** · {module.total_nodes:,} nodes")
    if kind == "module":
        st.caption("Collapsed: click the box to expand it.")
    else:
        st.caption("Expanded: click its frame's title (▾) to collapse it again.")


def legend(colours: dict[str, str]) -> None:
    """A one-line colour legend."""
    swatches = "".join(
        f'<span style="margin-right:1.2em"><span style="display:inline-block;width:0.9em;'
        f'height:0.9em;background:{colour};border:1px solid #888;margin-right:0.35em">'
        f"</span>{label}</span>"
        for label, colour in colours.items()
    )
    st.html(f'<div style="font-size:0.85em;font-family:sans-serif">{swatches}</div>')


def node_details(
    node: NodeInfo,
    effective: Effective | None = None,
    error: NodeError | None = None,
    own_db: float | None = None,
) -> None:
    """The detail panel for one node: op, module, shapes, parameters, source, annotation,
    and its int8 error once a model is converted."""
    st.subheader(node.name)
    st.markdown(f"**{node.op_name}** · `{node.target}` · family *{node.family}*")
    if node.module:
        st.markdown(f"Module `{node.module}` ({node.module_type})")
    if node.shape is not None:
        st.markdown(f"Output `{format_shape(node.shape)}` {node.dtype}")
    for param in node.params:
        st.markdown(f"- `{param.target}` {format_shape(param.shape)} {param.dtype}")
    if node.inputs:
        st.caption("Inputs: " + ", ".join(node.inputs))
    if node.source:
        st.caption(node.source)
        if node.source_code:
            st.code(node.source_code, language="python")
    if effective is not None:
        fields = effective.setting.fields_set()
        summary = "keep float" if fields.get("keep_float") else (
            ", ".join(f"{k} {v}" for k, v in fields.items()) or "backend defaults"
        )  # fmt: skip
        st.markdown(f"**Annotation:** {summary}  \n*from* `{effective.rule}`")
    if error is not None:
        db = f"{error.sqnr_db:.1f} dB" if math.isfinite(error.sqnr_db) else "exact"
        against = f"`{error.reference}`" + (" (BatchNorm folded in)" if error.bn_folded else "")
        output = "its quantized output" if error.quantized else "its output"
        own = "" if own_db is None else (
            f" · own {own_db:.1f} dB" if math.isfinite(own_db) else " · adds no error"
        )  # fmt: skip
        st.markdown(f"**SQNR {db}**{own} · max |error| {error.max_abs_error:.4g}  \n"
                    f"{output} (`{error.compared}`) against float {against}")  # fmt: skip
