"""Quantization Workbench: page setup and navigation. Pages hold no application logic."""

import streamlit as st

from ui.state import get_state

st.set_page_config(page_title="Quantization Workbench", page_icon="🔬", layout="wide")
get_state()
page = st.navigation([
    st.Page("pages/model.py", title="Model", icon="📦"),
    st.Page("pages/graph.py", title="Graph", icon="🕸️", default=True),
    st.Page("pages/recipe.py", title="Recipe", icon="🧾"),
])  # fmt: skip
page.run()
