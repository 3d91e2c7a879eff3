"""The graph the Graph and Diff pages draw: a zoomable, pannable Graphviz graph that reports
which node was clicked, what a click on a module group does, and a colour legend.

The component itself is `ui.graph_component`, kept apart (it imports only streamlit) so a cold
start can draw a cached SVG before torch loads; this module lays graphs out through `ui.state`.
"""

from __future__ import annotations

from collections.abc import Mapping

import streamlit as st

from ui.graph_component import component
from ui.state import step, svg_for
from workbench.drawing.dot import collapse_group, expand_group, single_node_modules
from workbench.graph.view import GraphView

__all__ = [
    "graph_view",
    "group_click",
    "groups_note",
    "legend",
]


def _ignore() -> None:
    """Clicks are read from the return value; the callback only registers the key."""


def graph_view(
    dot: str,
    *,
    key: str,
    selected: str | None = None,
    colors: Mapping[str, str] | None = None,
    highlight: list[str] | None = None,
    center: str | None = None,
    height: str = "70vh",
) -> str | None:
    """Lay out `dot` and show it; returns the id of the node clicked in this rerun, if any.

    `colors` (an overlay's fills) recolours nodes in the browser (no new layout); without
    them nodes keep the colours they were drawn with. `highlight` outlines search matches
    and `center` scrolls one node (or frame `cluster/PATH`) into the middle once.
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
        "colors": dict(colors) if colors else None, "highlight": highlight or [],
        "center": center, "height": height,
    }  # fmt: skip
    result = component(data=data, key=key, on_clicked_change=_ignore)
    return getattr(result, "clicked", None)


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


def legend(colours: Mapping[str, str]) -> None:
    """A one-line colour legend (an overlay's: label to colour); nothing when it is empty."""
    if not colours:
        return
    swatches = "".join(
        f'<span style="margin-right:1.2em"><span style="display:inline-block;width:0.9em;'
        f'height:0.9em;background:{colour};border:1px solid #888;margin-right:0.35em">'
        f"</span>{label}</span>"
        for label, colour in colours.items()
    )
    st.html(f'<div style="font-size:0.85em;font-family:sans-serif">{swatches}</div>')
