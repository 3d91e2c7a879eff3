"""Quantization Workbench: page setup and navigation. Pages hold no application logic."""

import streamlit as st

from ui.state import get_state, start_background_work, step

st.set_page_config(
    page_title="Quantization Workbench", page_icon=":material/biotech:", layout="wide"
)
page = st.navigation([
    st.Page("app_pages/model.py", title="Model", icon=":material/inventory_2:"),
    st.Page("app_pages/graph.py", title="Graph", icon=":material/account_tree:", default=True),
    st.Page("app_pages/recipe.py", title="Recipe", icon=":material/tune:"),
    st.Page("app_pages/train.py", title="Train & convert", icon=":material/model_training:"),
    st.Page("app_pages/diff.py", title="Diff", icon=":material/difference:"),
    st.Page("app_pages/export.py", title="Export", icon=":material/download:"),
])  # fmt: skip
# Whatever fails unexpectedly is an error box naming the page, never Streamlit's traceback.
with step(f"The {page.title} page"):
    get_state()
    page.run()
# Warming torchao's pattern cache competes for the CPU: start it once the page is drawn.
start_background_work()
