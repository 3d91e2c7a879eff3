"""Quantization Workbench: page setup and navigation. Pages hold no application logic."""

import streamlit as st

from ui.boot import cold_start

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
# A session's first run on a server still importing torch: the cached graph now, then a rerun.
cold_start(page.title)
from ui.jobs import recipe_conflict_box, show_jobs  # noqa: E402
from ui.state import get_state, start_background_work, step  # noqa: E402 (imports torch)

# Whatever fails unexpectedly is an error box naming the page, never Streamlit's traceback.
with step(f"The {page.title} page"):
    state = get_state()
    show_jobs(state)  # the sidebar's running jobs, drawn before a page can st.stop()
    recipe_conflict_box(state)
    page.run()
# Warming torchao's pattern cache competes for the CPU: start it once the page is drawn.
start_background_work()
