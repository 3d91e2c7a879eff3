"""Recipe page: every quantizable node's effective setting, bulk rules, download and upload."""

import streamlit as st

from ui.editor import adopt_recipe, bulk_editor, recipe_choices
from ui.recipe_table import recipe_table, rules_list
from ui.state import loaded_state, show_error

state = loaded_state()
view = state.view
st.title(f"Recipe · {state.spec}")
if state.notice:
    st.info(state.notice)
recipe_choices(state)

effective = state.effective()
recipe_table(state, effective)

left, right = st.columns(2)
with left:
    st.subheader("Bulk rule")
    modules = [m.path for m in view.modules.walk() if m.path]
    ops = sorted({view[n].op_name for n in effective} | {view[n].family for n in effective})
    bulk_editor(state, modules, ops)
with right:
    st.subheader("Rules")
    rules_list(state)
    st.download_button("Download recipe.json", state.recipe.to_json(), "recipe.json",
                       mime="application/json")  # fmt: skip
    upload = st.file_uploader("Upload a recipe", type=["json"], key="recipe-upload")
    if upload is not None and st.button("Use uploaded recipe"):
        error = adopt_recipe(state, upload.getvalue().decode("utf-8", "replace"), upload.name)
        if error is not None:
            show_error(error)
        else:
            st.rerun()
