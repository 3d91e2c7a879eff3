"""A Streamlit page drawing the Diff page's `linked_graphs` for a precomputed diff (benchmarks).

`WB_DIFF_PICKLE` names a pickle of (before view, after view, StageDiff) that
`benchmarks.browser_graphs` wrote itself; the page skips the app's model loading, so a
browser measurement times the Diff drawing only. Run with the repository root on PYTHONPATH.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import streamlit as st

from app_pages.diff import linked_graphs
from ui.state import AppState
from workbench.analysis.diff import StageDiff
from workbench.graph.view import GraphView


@st.cache_resource
def _load(path: str) -> tuple[GraphView, GraphView, StageDiff]:
    with Path(path).open("rb") as file:
        return cast(tuple[GraphView, GraphView, StageDiff], pickle.load(file))


@dataclass
class _DiffState:
    """The part of AppState that `linked_graphs` reads and writes."""

    views: dict[str, GraphView]
    diff_selected: tuple[str, str] | None = None
    diff_expanded: frozenset[str] = field(default_factory=frozenset)

    def stage_view(self, name: str) -> GraphView:
        return self.views[name]


st.set_page_config(page_title="Diff benchmark", layout="wide")
before, after, diff = _load(os.environ["WB_DIFF_PICKLE"])
if "bench" not in st.session_state:
    st.session_state["bench"] = _DiffState({diff.before_stage: before, diff.after_stage: after})
st.title(f"Diff · {diff.before_stage} → {diff.after_stage}")
counts = diff.counts()
for column, (kind, count) in zip(st.columns(len(counts)), counts.items(), strict=True):
    column.metric(kind, count)
state = cast(AppState, st.session_state["bench"])
linked_graphs(state, diff, (diff.before_stage, diff.after_stage), None)
