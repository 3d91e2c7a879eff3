"""Diff page: what prepare, calibration/training and convert did to the graph, node by node."""

import streamlit as st

from ui.conversion import offer_conversion
from ui.diff_view import linked_graphs, overlay_graph, stage_diff, tables
from ui.state import loaded_state, step

state = loaded_state()
st.title(f"Diff · {state.spec}")
st.caption(f"{state.recipe.mode.upper()} with {state.recipe.backend} (set on the Recipe page); "
           "the stages of the model converted on Train & convert.")  # fmt: skip
if state.current() is None:
    offer_conversion(state)
    st.stop()
stages = state.stages()
names = list(stages)
cols = st.columns([2, 2, 3])
before = cols[0].selectbox("Before", names, index=names.index("prepared"))
after = cols[1].selectbox("After", names, index=len(names) - 1)
if names.index(before) >= names.index(after):
    st.warning("Pick an earlier stage on the left than on the right.")
    st.stop()
with step("Matching the stages", stop=True):
    diff = stage_diff(state, before, after)
groups = sorted({c.group for c in diff.changes if c.group and c.kind != "unchanged"})
focus = cols[2].selectbox("Focus on one group", ["(whole graph)", *groups])
counts = diff.counts()
metrics = st.columns(len(counts))
for column, (kind, count) in zip(metrics, counts.items(), strict=True):
    column.metric(kind, count)
with st.expander("Summary", expanded=False):
    st.text(diff.summary())
if st.radio("View", ["side by side", "overlay"], horizontal=True) == "overlay":
    overlay_graph(state, diff, (before, after))
else:
    linked_graphs(state, diff, (before, after), None if focus.startswith("(") else focus)
tables(state, diff, (before, after))
