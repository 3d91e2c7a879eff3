"""Diff page: what prepare, calibration/training and convert did to the graph, node by node:
two linked graphs (or one overlay), and the tables under them."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pandas as pd
import streamlit as st
from torch.fx import GraphModule

from ui.conversion import offer_conversion
from ui.graph_view import graph_view, group_click, groups_note, legend
from ui.state import AppState, loaded_state, step
from workbench.analysis.checks import check_converted
from workbench.analysis.diff import StageDiff, code_diff, diff_stages
from workbench.analysis.folding import fold_reports
from workbench.artifacts.report import op_counts
from workbench.drawing.diff import (
    diff_opening_depth,
    diff_to_dot,
    grouped_view,
    overlay_to_dot,
    overlay_view,
)
from workbench.drawing.dot import box_of
from workbench.drawing.overlays import DIFF_COLOURS
from workbench.graph.view import GraphView
from workbench.stages.stage import QDQ_STAGE

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
    """Before and after side by side; a click on a node selects its group on both, a click
    on a module box expands that module on both (big graphs open collapsed to groups)."""
    views = [state.stage_view(n) for n in names]
    depth = None if focus else diff_opening_depth(views[0], views[1], diff)
    expanded = state.diff_expanded
    selected = state.diff_selected
    box = selected[1] if selected is not None and "/" in selected[1] else None
    group = None
    if selected is not None and box is None:
        try:
            group = diff.change(selected[1], selected[0]).group  # type: ignore[arg-type]
        except KeyError:
            selected = state.diff_selected = None
    members = diff.group_members(group) if group else ([], [])
    legend(DIFF_COLOURS)
    if depth is not None and _collapse_all(state, diff, depth):
        st.rerun()
    sides = zip(st.columns(2), SIDES, names, views, members, strict=True)
    for column, side, stage, view, group_side in sides:
        with column:
            st.markdown(f"**{side}: {stage}**")
            dot = diff_to_dot(view, diff, side=side, focus_group=focus,  # type: ignore[arg-type]
                              collapse_depth=depth, expanded=expanded)  # fmt: skip
            mine = box or (selected[1] if selected is not None and selected[0] == side else None)
            if selected is not None and box is None and selected[0] != side:
                counterparts = diff.counterparts(selected[1], selected[0])  # type: ignore[arg-type]
                # Parameters are folded into labels: select the last drawn op (the anchor).
                drawn = [n for n in counterparts if n in view and not view[n].is_param]
                mine = drawn[-1] if drawn else None
            shown = _boxes(view, diff, side, depth, expanded)
            clicked = graph_view(
                dot, key=f"diff-{side}", selected=shown(mine), center=shown(mine),
                highlight=list(dict.fromkeys(b for n in group_side if (b := shown(n)))),
                height="60vh",
            )  # fmt: skip
            if clicked and "/" in clicked and depth is not None:
                grouped = grouped_view(view, diff, side=side)  # type: ignore[arg-type]
                opened, target = group_click(grouped, clicked, expanded, depth)
                if (opened, (side, target)) != (expanded, state.diff_selected):
                    state.diff_expanded, state.diff_selected = opened, (side, target)
                    st.rerun()
                clicked = None
            if clicked and (side, clicked) != state.diff_selected:
                state.diff_selected = (side, clicked)
                st.rerun()
    if group is not None:
        before, after = members
        st.info(f"Group **{group}**: before {', '.join(before) or '—'}; "
                f"after {', '.join(after) or '—'}.")  # fmt: skip


def _boxes(
    view: GraphView, diff: StageDiff, side: str, depth: int | None, expanded: frozenset[str]
) -> Callable[[str | None], str | None]:
    """Which drawn box stands for a node of one side (a group id stands for itself)."""
    grouped = view if depth is None else grouped_view(view, diff, side=side)  # type: ignore[arg-type]

    def shown(name: str | None) -> str | None:
        if name is None or "/" in name or name not in grouped:
            return name
        return box_of(grouped[name], depth, expanded)

    return shown


def _collapse_all(state: AppState, diff: StageDiff, depth: int) -> bool:
    """The collapsed diff's note and "Collapse all"; True when pressed (the state is reset)."""
    text = (f"{len(diff.changes):,} changes: modules at depth {depth} are one box each, "
            "with their counts per kind; a box where nothing changed is plain.")  # fmt: skip
    if not groups_note(text, bool(state.diff_expanded), key="diff"):
        return False
    state.diff_expanded, state.diff_selected = frozenset(), None
    return True


def overlay_graph(state: AppState, diff: StageDiff, names: tuple[str, str]) -> None:
    """One graph: the after stage with the removed nodes of the before stage drawn in."""
    legend(DIFF_COLOURS)
    before, after = (state.stage_view(n) for n in names)
    depth = diff_opening_depth(before, after, diff)
    expanded = state.diff_expanded
    if depth is not None and _collapse_all(state, diff, depth):
        st.rerun()
    dot = overlay_to_dot(before, after, diff, collapse_depth=depth, expanded=expanded)
    box = state.diff_selected[1] if state.diff_selected and "/" in state.diff_selected[1] else None
    clicked = graph_view(dot, key="diff-overlay", selected=box or state.selected, center=box,
                         height="70vh")  # fmt: skip
    if clicked and clicked.startswith(("module/", "cluster/")) and depth is not None:
        grouped = grouped_view(overlay_view(before, after, diff), diff)
        opened, target = group_click(grouped, clicked, expanded, depth)
        if (opened, ("after", target)) != (expanded, state.diff_selected):
            state.diff_expanded, state.diff_selected = opened, ("after", target)
            st.rerun()
    elif clicked:
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


def forms_caption(qdq: GraphModule, reference: GraphModule) -> str:
    """The ops the reference representation introduced and removed, with their counts."""
    before, after = op_counts(qdq), op_counts(reference)
    moved = {op: after.get(op, 0) - before.get(op, 0) for op in {*before, *after}}
    added = ", ".join(f"{op} ×{n}" for op, n in sorted(moved.items(), key=lambda m: -m[1])
                      if n > 0)  # fmt: skip
    removed = ", ".join(f"{op} ×{-n}" for op, n in sorted(moved.items(), key=lambda m: m[1])
                        if n < 0)  # fmt: skip
    return (f"The reference representation writes the int8 arithmetic out in integer ops. "
            f"Introduced: {added or 'nothing'}. Removed: {removed or 'nothing'}.")  # fmt: skip


# --- the page ---
# st.navigation runs this file as __main__ on every rerun; benchmarks/diff_app.py imports
# `linked_graphs` from it without drawing the page.
if __name__ == "__main__":
    state = loaded_state()
    st.title(f"Diff · {state.spec}")
    st.caption(f"{state.recipe.mode.upper()} with {state.recipe.backend} (set on the Recipe page); "
               "the stages of the model converted on Train & convert.")  # fmt: skip
    if state.current() is None:
        offer_conversion(state)
        st.stop()
    stages = state.stages()
    names = list(stages)
    cols = st.columns([2, 2, 3])
    before = cols[0].selectbox("Before", names, index=names.index("prepared"))
    after = cols[1].selectbox("After", names, index=len(names) - 1)
    if names.index(before) >= names.index(after):
        st.warning("Pick an earlier stage on the left than on the right.")
        st.stop()
    with step("Matching the stages", stop=True):
        diff = stage_diff(state, before, after)
    groups = sorted({c.group for c in diff.changes if c.group and c.kind != "unchanged"})
    focus = cols[2].selectbox("Focus on one group", ["(whole graph)", *groups])
    counts = diff.counts()
    metrics = st.columns(len(counts))
    for column, (kind, count) in zip(metrics, counts.items(), strict=True):
        column.metric(kind, count)
    if {before, after} == {QDQ_STAGE, "converted"}:
        st.caption(forms_caption(stages[QDQ_STAGE].graph_module, stages["converted"].graph_module))
    with st.expander("Summary", expanded=False):
        st.text(diff.summary())
    if st.radio("View", ["side by side", "overlay"], horizontal=True) == "overlay":
        overlay_graph(state, diff, (before, after))
    else:
        linked_graphs(state, diff, (before, after), None if focus.startswith("(") else focus)
    tables(state, diff, (before, after))
