"""Graph page: the captured graph, coloured by op family or annotation; click a node to edit it."""

import streamlit as st

from ui.editor import node_editor
from ui.graph_view import graph_view, legend, node_details
from ui.state import loaded_state, svg_for
from workbench.annotate import ANNOTATION_COLOURS, annotation_colours
from workbench.graph import search
from workbench.render import box_of, max_depth

state = loaded_state()
view = state.view
st.title(f"Graph · {state.spec}")

cols = st.columns([3, 2, 3])
depths = ["expanded", *range(1, max_depth(view) + 1)]
depth = cols[0].select_slider("Collapse modules at depth", depths, value="expanded")
colour_by = cols[1].radio("Colour by", ["op family", "annotation"], horizontal=True)
query = cols[2].text_input("Search", placeholder="node, op or module", key="graph-search")

rendered = state.rendered(None if depth == "expanded" else int(depth))
if rendered.auto_collapsed:
    st.info(f"{len(view):,} nodes are over the screen budget: drawn collapsed at depth "
            f"{rendered.collapse_depth} ({rendered.boxes:,} boxes).")  # fmt: skip
# Annotation status needs an annotate pass: only when shown (colours, or a selected node).
effective = state.effective() if colour_by == "annotation" or state.selected else {}
matches = list(dict.fromkeys(box_of(view[n], rendered.collapse_depth) for n in search(view, query)))
if query:
    st.caption(f"{len(matches)} match(es)" + (f": {', '.join(matches[:8])}…" if matches else ""))
if colour_by == "annotation":
    legend(ANNOTATION_COLOURS)

left, right = st.columns([3, 1])
with left:
    clicked = graph_view(
        svg_for(rendered.dot), key="graph", selected=state.selected,
        colors=annotation_colours(view, effective) if colour_by == "annotation" else None,
        highlight=matches, center=matches[0] if matches else None,
    )  # fmt: skip
if clicked and clicked != state.selected:
    state.selected = clicked
    st.rerun()
with right:
    if state.selected in view:
        node_details(view[state.selected], effective.get(state.selected))
        if state.selected in effective:
            node_editor(state, state.selected)
        else:
            st.caption("The backend does not quantize this node.")
    elif state.selected:
        st.info(f"{state.selected} is a collapsed group: pick a deeper depth to see its nodes.")
    else:
        st.caption("Click a node to see its details and edit how it is quantized.")
