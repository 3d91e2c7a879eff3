"""Recipe page: every quantizable node's effective setting, bulk rules, download and upload."""

from __future__ import annotations

import hashlib

import streamlit as st

from ui.editor import CHOICES, adopt_recipe, bulk_editor, recipe_choices
from ui.state import AppState, loaded_state, show_error
from workbench.quantization.editing import apply_table_edits, effective_table, set_override
from workbench.quantization.recipe import Effective, QuantSetting, Recipe, module_matches


def table_key(recipe: Recipe) -> str:
    """The editor's widget key: a new one per recipe, so edits never apply twice."""
    return "table-" + hashlib.sha1(recipe.to_json().encode()).hexdigest()[:12]


def recipe_table(state: AppState, effective: dict[str, Effective]) -> None:
    """Filterable table of effective settings; edited cells become node rules."""
    assert state.view is not None
    table = effective_table(effective, state.view)
    cols = st.columns([2, 2, 1])
    module = cols[0].text_input("Filter by module", placeholder="block1 or block*")
    ops = cols[1].multiselect("Filter by op", sorted(table["op"].unique()))
    only_overridden = cols[2].checkbox("Only overridden")
    shown = table
    if module.strip():
        shown = shown[[module_matches(module.strip(), m) for m in shown["module"]]]
    if ops:
        shown = shown[shown["op"].isin(ops)]
    if only_overridden:
        shown = shown[shown["rule"] != "default"]
    config = {
        name: st.column_config.SelectboxColumn(name.replace("_", " "), options=list(options))
        for name, options in CHOICES.items()
    }
    config["keep_float"] = st.column_config.CheckboxColumn("keep float")
    config["rule"] = st.column_config.TextColumn("decided by")
    edited = st.data_editor(
        shown, key=table_key(state.recipe), hide_index=True,
        column_config=config, disabled=["node", "op", "module", "module_type", "rule"],
        width="stretch",
    )  # fmt: skip
    st.caption(f"{len(shown)} of {len(table)} quantizable nodes. Edit a cell to give that node "
               "its own rule; clear it to fall back to broader rules.")  # fmt: skip
    recipe = apply_table_edits(state.recipe, shown, edited)
    if recipe != state.recipe:
        state.set_recipe(recipe)
        st.rerun()


def rules_list(state: AppState) -> None:
    """The recipe's rules in precedence order within each level, each with a remove button."""
    if not state.recipe.overrides:
        st.caption("No rules yet: every node follows the backend's defaults.")
    for i, rule in enumerate(state.recipe.overrides):
        cols = st.columns([4, 1])
        fields = ", ".join(f"{k}={v}" for k, v in rule.setting.fields_set().items())
        cols[0].markdown(f"`{rule.label}` → {fields}")
        if cols[1].button("Remove", key=f"remove-{i}-{rule.label}"):
            state.set_recipe(set_override(state.recipe, rule.kind, rule.pattern, QuantSetting()))
            st.rerun()


# --- the page ---
# st.navigation runs this file as __main__ on every rerun; tests import `table_key` from it
# without drawing the page.
if __name__ == "__main__":
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
