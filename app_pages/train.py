"""Train & Convert page: calibrate (PTQ) or train (QAT) with live charts, convert, compare."""

import streamlit as st

from ui.compare_view import comparison_section
from ui.state import loaded_state
from ui.training import convert_section, data_picker, ptq_section, qat_section, task_picker

state = loaded_state()
st.title(f"Train & convert · {state.spec}")
mode = state.recipe.mode
st.caption(f"{mode.upper()} with {state.recipe.backend} (mode and backend are set on the "
           "Recipe page).")  # fmt: skip
data_picker(state)
task_picker(state)
tuned = qat_section(state) if mode == "qat" else ptq_section(state)
if tuned is not None:
    convert_section(state, tuned)
if state.converted is not None:
    st.divider()
    st.subheader("int8 against float")
    comparison_section(state, state.converted)
