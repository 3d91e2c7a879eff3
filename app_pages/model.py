"""Model page: load a sample, an uploaded .pt2 or a Python factory, and see what it is."""

import pandas as pd
import streamlit as st

import sample_models
from ui.state import get_state, load_model, parse_dynamic, show_error, step
from workbench.graph.view import module_table

state = get_state()
st.title("Model")
source = st.radio("Load from", ["Sample", "Upload .pt2", "Python file"], horizontal=True)
spec, shape = None, None
if source == "Sample":
    names = sample_models.names()
    name = st.selectbox(
        "Sample model", names,
        format_func=lambda n: f"{n} — {sample_models.SAMPLES[n].accuracy:.2f} % float accuracy",
    )  # fmt: skip
    st.caption(sample_models.SAMPLES[name].description)
    spec = f"sample:{name}"
elif source == "Upload .pt2":
    st.caption("Read with torch.export.load only. A .pt2 can still carry pickled data: "
               "load files you trust.")  # fmt: skip
    upload = st.file_uploader("Exported program", type=["pt2"])
    if upload is not None:
        spec = str(state.workspace.save_upload(upload.name, upload.getvalue()))
else:
    st.warning("Loading a Python spec **runs that file's code** on this server.", icon="⚠️")
    spec = st.text_input("Spec", placeholder="path/to/file.py:FUNC") or None
    text = st.text_input("Example input shape (if FUNC returns no inputs)", placeholder="4,1,8,8")
    if text.strip():
        try:
            shape = tuple(int(p) for p in text.replace("x", ",").split(",") if p.strip())
        except ValueError:
            st.error(f"'{text}' is not a shape: write sizes separated by commas, e.g. 4,1,8,8.")
dims = "" if source == "Upload .pt2" else st.text_input(
    "Dynamic dimensions (besides the batch and the sequence)", key="model-dynamic",
    placeholder="input_ids:1, pixel_values:2,3", help="INPUT:DIM, comma or space separated; "
    "INPUT as the forward names it. Export fails if the model fixes that size.",
)  # fmt: skip
if st.button("Load", type="primary", disabled=spec is None) and spec is not None:
    with step("Load"):
        load_model(state, spec, shape, parse_dynamic(dims))

if state.error is not None:
    show_error(state.error)
if state.captured is None or state.view is None:
    st.stop()
captured, view = state.captured, state.view
if state.notice:
    st.info(state.notice)
st.subheader(f"Loaded: {captured.spec}")
cols = st.columns(4)
cols[0].metric("Parameters", f"{captured.parameter_count:,}")
cols[1].metric("Graph nodes", f"{len(view):,}")
cols[2].metric("Export time", f"{captured.export_seconds:.2f} s")
cols[3].metric("Batch", "dynamic" if captured.dynamic_batch else "fixed")
st.caption(f"Inputs {', '.join(captured.input_names())}; dynamic "
           f"{', '.join(map(str, captured.dynamic_dims)) or 'none'}; outputs "
           f"{', '.join(captured.outputs) or '(one tensor)'}.")  # fmt: skip
for note in captured.notes:
    st.warning(note)
left, right = st.columns([1, 2])
with left:
    st.markdown("**Nodes by op family**")
    counts = pd.DataFrame(view.family_counts().items(), columns=["family", "nodes"])
    st.bar_chart(counts, x="family", y="nodes", horizontal=True, height=320)
with right:
    st.markdown("**Module tree**")
    tree = pd.DataFrame(module_table(view))
    tree["module"] = ["  " * d + m for d, m in zip(tree["depth"], tree["module"], strict=True)]
    st.dataframe(tree.drop(columns="depth"), hide_index=True, height=320)
