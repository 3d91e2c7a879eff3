"""Graph page: the captured graph drawn by Graphviz, with module clusters and collapse."""

import streamlit as st

import sample_models
from ui.graph_view import graph_view, node_details
from ui.state import get_state, load_model, svg_for
from workbench.render import format_shape, max_depth, render_for_screen

state = get_state()

with st.sidebar:
    st.header("Model")
    samples = [f"sample:{name}" for name in sample_models.names()]
    choice = st.selectbox("Sample model", samples, index=None, placeholder="Choose a sample")
    typed = st.text_input(
        "…or a spec", placeholder="path/to/file.py:FUNC or model.pt2",
        help="A .py spec runs that file's code; a .pt2 is read with torch.export.load.",
    )  # fmt: skip
    if st.button("Load", type="primary", disabled=not (choice or typed)):
        load_model(state, typed.strip() or choice)

if state.error is not None:
    st.error(f"**{state.error.problem}**\n\n{state.error.fix}", icon="🚫")
if state.captured is None or state.view is None:
    st.info("Load a model from the sidebar to see its graph.")
    st.stop()

captured, view = state.captured, state.view
st.title(f"{captured.spec}")
inputs = ", ".join(format_shape(tuple(t.shape)) for t in captured.example_inputs)
cols = st.columns(4)
cols[0].metric("Parameters", f"{captured.parameter_count:,}")
cols[1].metric("Graph nodes", f"{len(view):,}")
cols[2].metric("Export time", f"{captured.export_seconds:.2f} s")
cols[3].metric("Batch", "dynamic" if captured.dynamic_batch else "fixed", help=f"inputs {inputs}")
for note in captured.notes:
    st.warning(note)
st.caption(" · ".join(f"{family} {count}" for family, count in view.family_counts().items()))

depths = ["expanded", *range(1, max_depth(view) + 1)]
depth = st.select_slider(
    "Collapse modules at depth", depths, value="expanded",
    help="Each module at this depth is drawn as one box with its node count.",
)  # fmt: skip
rendered = render_for_screen(view, collapse_depth=None if depth == "expanded" else int(depth))
if rendered.auto_collapsed:
    st.info(
        f"{len(view):,} nodes are more than the screen budget: drawn collapsed at depth "
        f"{rendered.collapse_depth} ({rendered.boxes:,} boxes)."
    )
left, right = st.columns([3, 1])
with left:
    clicked = graph_view(svg_for(rendered.dot), key="graph", selected=state.selected)
if clicked and clicked != state.selected:
    state.selected = clicked
    st.rerun()
with right:
    if state.selected in view:
        node_details(view[state.selected])
    elif state.selected:
        st.info(f"{state.selected} is a collapsed group: pick a deeper depth to see its nodes.")
    else:
        st.caption("Click a node to see its details.")
