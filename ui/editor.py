"""Widgets that edit the recipe: one node's rule, a bulk rule, and recipe-level choices."""

from __future__ import annotations

import dataclasses

import streamlit as st

from ui.state import AppState
from workbench.errors import WorkbenchError
from workbench.quantization.editing import rule_setting, set_override
from workbench.quantization.recipe import (
    BACKENDS,
    DTYPES,
    GRANULARITIES,
    MODES,
    OBSERVERS,
    SCHEMES,
    MatchKind,
    QuantSetting,
    Recipe,
    validate,
)

__all__ = [
    "CHOICES",
    "INHERIT",
    "adopt_recipe",
    "bulk_editor",
    "node_editor",
    "recipe_choices",
    "setting_form",
]

INHERIT = "(inherit)"
CHOICES = {
    "weight_dtype": DTYPES,
    "activation_dtype": DTYPES,
    "weight_granularity": GRANULARITIES,
    "weight_scheme": SCHEMES,
    "activation_scheme": SCHEMES,
    "observer": OBSERVERS,
}


def setting_form(key: str, current: QuantSetting, *, submit: str) -> QuantSetting | None:
    """A form for one rule's setting; returns the new setting when submitted."""
    with st.form(key, border=True):
        keep = st.selectbox(
            "Keep float", [INHERIT, "yes", "no"],
            index=0 if current.keep_float is None else (1 if current.keep_float else 2),
            help="Leave this node's inputs, weights and output unquantized.",
        )  # fmt: skip
        values = {}
        cols = st.columns(2)
        for i, (name, options) in enumerate(CHOICES.items()):
            now = getattr(current, name)
            values[name] = cols[i % 2].selectbox(
                name.replace("_", " "), [INHERIT, *options],
                index=0 if now is None else 1 + options.index(now), key=f"{key}-{name}",
            )  # fmt: skip
        if not st.form_submit_button(submit, type="primary"):
            return None
    fields = {k: v for k, v in values.items() if v != INHERIT}
    if keep != INHERIT:
        fields["keep_float"] = keep == "yes"
    return QuantSetting(**fields)


def node_editor(state: AppState, node: str) -> None:
    """Edit the node rule of `node`; saving updates the recipe and autosaves it."""
    new = setting_form(f"edit-{node}", rule_setting(state.recipe, "node", node), submit="Apply")
    if new is not None:
        state.set_recipe(set_override(state.recipe, "node", node, new))
        st.rerun()


def bulk_editor(state: AppState, modules: list[str], ops: list[str]) -> None:
    """Set a rule for a whole module (or glob) or op type at once."""
    kind: MatchKind = st.radio("Apply to", ["module", "op"], horizontal=True)  # type: ignore[assignment]
    options = modules if kind == "module" else ops
    pattern = st.selectbox(
        kind, options, accept_new_options=True,
        help="Modules also take a dotted prefix or a glob such as block*.",
    )  # fmt: skip
    if pattern:
        current = rule_setting(state.recipe, kind, pattern)
        new = setting_form(
            f"bulk-{kind}-{pattern}", current, submit=f"Set rule for {kind} {pattern}"
        )
        if new is not None:
            state.set_recipe(set_override(state.recipe, kind, pattern, new))
            st.rerun()


def recipe_choices(state: AppState) -> None:
    """Backend and mode of the recipe."""
    cols = st.columns(2)
    backend = cols[0].selectbox("Backend", BACKENDS, index=BACKENDS.index(state.recipe.backend))
    mode = cols[1].selectbox("Mode", MODES, index=MODES.index(state.recipe.mode))
    if (backend, mode) != (state.recipe.backend, state.recipe.mode):
        state.set_recipe(dataclasses.replace(state.recipe, backend=backend, mode=mode))
        st.rerun()


def adopt_recipe(state: AppState, text: str, name: str) -> WorkbenchError | None:
    """Use an uploaded recipe if it parses and fits the model; else return why not."""
    assert state.view is not None
    try:
        recipe = Recipe.from_json(text, source=name)
        validate(recipe, state.view)
    except WorkbenchError as exc:
        return exc
    state.set_recipe(recipe)
    return None
