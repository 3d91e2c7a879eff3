"""Graph page: the captured graph, coloured by op family or annotation; click a node to edit it."""

import streamlit as st

import ui.graph_view as gv
from ui.editor import node_editor
from ui.state import loaded_state
from workbench.analysis.compare import own_sqnr, sqnr_by_node
from workbench.drawing.dot import box_of, reveal, single_node_modules
from workbench.drawing.overlays import ANNOTATION_COLOURS, annotation_colours, sqnr_legend
from workbench.graph.view import search

state = loaded_state()
view = state.view
st.title(f"Graph · {state.spec}")

cols = st.columns([3, 2, 3])
choice = cols[0].select_slider("Collapse modules at depth", gv.depth_options(view), value="auto",
                               help=gv.DEPTH_HELP)  # fmt: skip
converted = state.converted
colourings = ["op family", "annotation"] + (["SQNR"] if converted is not None else [])
colour_by = cols[1].radio("Colour by", colourings, horizontal=True, key="graph-colour",
                          help="SQNR: after Convert on the Train & convert page.")  # fmt: skip
query = cols[2].text_input("Search", placeholder="node, op or module", key="graph-search")

depth = gv.chosen_depth(view, choice)
hits = search(view, query)
# Search opens the groups holding its matches (as many as stay legible), for this query only.
rendered = state.rendered(depth, reveal(view, hits, state.expanded, collapse_depth=depth))
if rendered.auto_collapsed:
    st.info(f"{len(view):,} nodes are over the screen budget: drawn collapsed at depth "
            f"{rendered.collapse_depth} ({rendered.boxes:,} boxes).")  # fmt: skip
elif rendered.collapse_depth is not None:
    text = (f"{len(view):,} nodes drawn as {rendered.boxes:,} boxes: modules at depth "
            f"{rendered.collapse_depth} are one box each.")  # fmt: skip
    if gv.groups_note(text, bool(state.expanded - single_node_modules(view)), key="graph"):
        state.expanded, state.selected = frozenset(), None
        st.rerun()
# Annotation status needs an annotate pass: only when shown (colours, or a selected node).
effective = state.effective() if colour_by == "annotation" or state.selected in view else {}
boxes = (box_of(view[n], rendered.collapse_depth, rendered.expanded) for n in hits)
matches = list(dict.fromkeys(boxes))
if query:
    st.caption(f"{len(matches)} match(es)" + (f": {', '.join(matches[:8])}…" if matches else ""))
errors = sqnr_by_node(converted.comparison.errors) if converted is not None else {}
own = own_sqnr(view, converted.comparison.errors) if converted is not None else {}
colours = None
if colour_by == "annotation":
    gv.legend(ANNOTATION_COLOURS)
    colours = annotation_colours(view, effective)
elif colour_by == "SQNR" and converted is not None:
    gv.legend(sqnr_legend())
    colours = gv.sqnr_box_colours(view, converted.comparison.errors, rendered.collapse_depth)
    stale = "" if state.current() is not None else " (converted with an earlier recipe)"
    st.caption(f"int8 against the {converted.comparison.reference} per node, from Train & "
               f"convert{stale}; a collapsed module shows its worst node.")  # fmt: skip

left, right = st.columns([3, 1])
grouped = state.selected is not None and state.selected.startswith(("module/", "cluster/"))
with left:
    clicked = gv.graph_view(
        rendered.dot, key="graph", selected=state.selected, colors=colours, highlight=matches,
        center=matches[0] if matches else (state.selected if grouped else None),
    )  # fmt: skip
if clicked and (now := gv.group_click(view, clicked, rendered.expanded, depth)) != (
    rendered.expanded,
    state.selected,
):  # a node selected, or a group box or frame title clicked
    state.expanded, state.selected = now
    st.rerun()
with right:
    if state.selected in view:
        gv.node_details(view[state.selected], effective.get(state.selected),
                        errors.get(state.selected), own.get(state.selected))  # fmt: skip
        if state.selected in effective:
            node_editor(state, state.selected)
        else:
            st.caption("The backend does not quantize this node.")
    elif state.selected:
        gv.group_details(view, state.selected)
    else:
        st.caption("Click a node to see its details and edit how it is quantized.")
