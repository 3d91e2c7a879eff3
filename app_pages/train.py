"""Train & Convert page: QAT with live loss, accuracy drift and observer ranges; then convert."""

import streamlit as st

from ui.state import loaded_state
from ui.training import convert_run, run_charts, run_controls

state = loaded_state()
st.title(f"Train & convert · {state.spec}")
if state.recipe.mode != "qat":
    st.info("The recipe is PTQ: set its mode to QAT on the Recipe page to train here. "
            "The Diff and Export pages show the calibrated PTQ model.")  # fmt: skip
    st.stop()
run = run_controls(state)
if run is not None:
    run_charts(state, run)
    convert_run(state, run)
