"""Graph page: the captured graph, coloured by op family or annotation; click a node to edit it."""

import streamlit as st

from ui.editor import node_editor
from ui.graph_view import graph_view, legend, node_details
from ui.state import loaded_state
from workbench.annotate import ANNOTATION_COLOURS, annotation_colours
from workbench.compare import own_sqnr, sqnr_by_node, sqnr_colours, sqnr_legend
from workbench.graph import search
from workbench.render import box_of, max_depth

state = loaded_state()
view = state.view
st.title(f"Graph · {state.spec}")

cols = st.columns([3, 2, 3])
depths = ["expanded", *range(1, max_depth(view) + 1)]
depth = cols[0].select_slider("Collapse modules at depth", depths, value="expanded")
converted = state.converted
colourings = ["op family", "annotation"] + (["SQNR"] if converted is not None else [])
colour_by = cols[1].radio("Colour by", colourings, horizontal=True, key="graph-colour",
                          help="SQNR: after Convert on the Train & convert page.")  # fmt: skip
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
errors = sqnr_by_node(converted.comparison.errors) if converted is not None else {}
own = own_sqnr(view, converted.comparison.errors) if converted is not None else {}
colours = None
if colour_by == "annotation":
    legend(ANNOTATION_COLOURS)
    colours = annotation_colours(view, effective)
elif colour_by == "SQNR" and converted is not None:
    legend(sqnr_legend())
    colours = sqnr_colours(view, converted.comparison.errors, rendered.collapse_depth)
    stale = "" if state.current() is not None else " (converted with an earlier recipe)"
    st.caption(f"int8 against the {converted.comparison.reference} per node, from Train & "
               f"convert{stale}; a collapsed module shows its worst node.")  # fmt: skip

left, right = st.columns([3, 1])
with left:
    clicked = graph_view(
        rendered.dot, key="graph", selected=state.selected,
        colors=colours,
        highlight=matches, center=matches[0] if matches else None,
    )  # fmt: skip
if clicked and clicked != state.selected:
    state.selected = clicked
    st.rerun()
with right:
    if state.selected in view:
        node_details(view[state.selected], effective.get(state.selected),
                     errors.get(state.selected), own.get(state.selected))  # fmt: skip
        if state.selected in effective:
            node_editor(state, state.selected)
        else:
            st.caption("The backend does not quantize this node.")
    elif state.selected:
        st.info(f"{state.selected} is a collapsed group: pick a deeper depth to see its nodes.")
    else:
        st.caption("Click a node to see its details and edit how it is quantized.")
