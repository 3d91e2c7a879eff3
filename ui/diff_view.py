"""The Diff page's parts: two linked graphs, and the tables under them."""

from __future__ import annotations

import dataclasses

import pandas as pd
import streamlit as st

from ui.graph_view import graph_view, legend
from ui.state import AppState
from workbench.checks import check_converted
from workbench.diff import (
    DIFF_COLOURS,
    StageDiff,
    code_diff,
    diff_stages,
    diff_to_dot,
    overlay_to_dot,
)
from workbench.folding import fold_reports

SIDES = ("before", "after")


@st.cache_resource(show_spinner="Matching nodes across the stages…", max_entries=16)
def _cached_diff(_state: AppState, key: str, before: str, after: str) -> StageDiff:
    stages = _state.stages()
    return diff_stages(stages[before].graph_module, stages[after].graph_module,
                       before_stage=before, after_stage=after)  # fmt: skip


def stage_diff(state: AppState, before: str, after: str) -> StageDiff:
    """The diff of two stages, computed once per set of stages and pair."""
    return _cached_diff(state, state.stages_key(), before, after)


def linked_graphs(
    state: AppState, diff: StageDiff, names: tuple[str, str], focus: str | None
) -> None:
    """Before and after side by side; a click on either selects its group on both."""
    selected = state.diff_selected
    group = None
    if selected is not None:
        try:
            group = diff.change(selected[1], selected[0]).group  # type: ignore[arg-type]
        except KeyError:
            selected = state.diff_selected = None
    members = diff.group_members(group) if group else ([], [])
    legend(DIFF_COLOURS)
    for column, side, stage, group_side in zip(st.columns(2), SIDES, names, members, strict=True):
        with column:
            st.markdown(f"**{side}: {stage}**")
            view = state.stage_view(stage)
            dot = diff_to_dot(view, diff, side=side, focus_group=focus)  # type: ignore[arg-type]
            mine = selected[1] if selected is not None and selected[0] == side else None
            if selected is not None and selected[0] != side:
                counterparts = diff.counterparts(selected[1], selected[0])  # type: ignore[arg-type]
                # Parameters are folded into labels: select the last drawn op (the anchor).
                drawn = [n for n in counterparts if n in view and not view[n].is_param]
                mine = drawn[-1] if drawn else None
            clicked = graph_view(
                dot, key=f"diff-{side}", selected=mine, highlight=group_side,
                center=mine, height="60vh",
            )  # fmt: skip
            if clicked and (side, clicked) != state.diff_selected:
                state.diff_selected = (side, clicked)
                st.rerun()
    if group is not None:
        before, after = members
        st.info(f"Group **{group}**: before {', '.join(before) or '—'}; "
                f"after {', '.join(after) or '—'}.")  # fmt: skip


def overlay_graph(state: AppState, diff: StageDiff, names: tuple[str, str]) -> None:
    """One graph: the after stage with the removed nodes of the before stage drawn in."""
    legend(DIFF_COLOURS)
    before, after = (state.stage_view(n) for n in names)
    clicked = graph_view(overlay_to_dot(before, after, diff), key="diff-overlay",
                         selected=state.selected, height="70vh")  # fmt: skip
    if clicked:
        st.caption(f"{clicked}: {_describe(diff, clicked)}")


def _describe(diff: StageDiff, name: str) -> str:
    side, node = ("before", name.split("/", 1)[1]) if "/" in name else ("after", name)
    try:
        change = diff.change(node, side)  # type: ignore[arg-type]
    except KeyError:
        return "not part of this diff"
    return f"{change.kind}" + (f" — {change.detail}" if change.detail else "")


def tables(state: AppState, diff: StageDiff, names: tuple[str, str]) -> None:
    """Changes, per-module counts, the folding check, converted-model checks and the code diff."""
    stages = state.stages()
    tabs = st.tabs(["Changes", "By module", "Folding", "Checks", "Code diff"])
    with tabs[0]:
        st.dataframe(diff.table(), hide_index=True, width="stretch")
    with tabs[1]:
        st.dataframe(diff.by_module(), width="stretch")
    with tabs[2]:
        if "converted" not in names:
            st.caption("Choose the converted stage to check BN folding.")
        else:
            source = stages["trained"] if "trained" in stages else stages["exported"]
            assert state.captured is not None
            reports = fold_reports(source.graph_module, stages["converted"].graph_module,
                                   state.captured.example_inputs)  # fmt: skip
            rows = [dataclasses.asdict(r) | {"within bound": r.within_bound} for r in reports]
            st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")
            st.caption("Bound per output channel: half the weight's quantization step (plus the "
                       "distance outside the int range where QAT clipped a weight).")  # fmt: skip
    with tabs[3]:
        assert state.view is not None
        findings = check_converted(stages["converted"].graph_module, state.view, state.effective())
        if not findings:
            st.success("No findings on the converted model.")
        for finding in findings:
            icon = "ℹ️" if finding.severity == "info" else "⚠️"
            st.markdown(f"{icon} **{finding.kind}** · `{finding.node}` — {finding.message}")
    with tabs[4]:
        before, after = (stages[n].graph_module for n in names)
        st.code(code_diff(before, after) or "(no difference)", language="diff")
