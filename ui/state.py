"""The app's single session-state object and the cached library calls behind it.

Caching lives here, in the UI layer, never in `workbench`. Cached objects are immutable
(frozen dataclasses, text); anything a page changes is copied first.
"""

from __future__ import annotations

import argparse
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

import streamlit as st

from sample_models import DEFAULT_SAMPLE
from workbench.capture import CapturedModel, ModelSpec
from workbench.capture import capture as _capture
from workbench.errors import WorkbenchError
from workbench.graph import GraphView, describe
from workbench.pattern_cache import install_pattern_cache, warm_pattern_cache
from workbench.render import dot_to_svg

STATE_KEY = "workbench"


@dataclass
class AppState:
    """What one browser session has loaded: the model, its graph view and the last error."""

    spec: str | None = None
    captured: CapturedModel | None = None
    view: GraphView | None = None
    error: WorkbenchError | None = None
    selected: str | None = None
    history: list[str] = field(default_factory=list)


@st.cache_resource(show_spinner=False)
def _pattern_cache_started() -> threading.Thread:
    """Install torchao's pattern cache once per server and fill it in the background."""
    install_pattern_cache()
    thread = threading.Thread(target=warm_pattern_cache, name="warm-pattern-cache", daemon=True)
    thread.start()
    return thread


def get_state() -> AppState:
    """The session's state, created on first use with the start-up model loaded."""
    _pattern_cache_started()
    if STATE_KEY not in st.session_state:
        state = AppState()
        st.session_state[STATE_KEY] = state
        load_model(state, startup_spec())
    return st.session_state[STATE_KEY]


def startup_spec() -> str:
    """The model named on the command line (`streamlit run app.py -- --model SPEC`)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--model", default=f"sample:{DEFAULT_SAMPLE}")
    known, _ = parser.parse_known_args(sys.argv[1:])
    return str(known.model)


def load_model(state: AppState, spec: str, input_shape: tuple[int, ...] | None = None) -> bool:
    """Capture `spec` into `state`; on failure keep the previous model and record the error."""
    try:
        captured, view = _cached_capture(spec, input_shape, _file_stamp(spec))
    except WorkbenchError as exc:
        state.error = exc
        return False
    state.spec, state.captured, state.view, state.error = spec, captured, view, None
    state.selected = None
    if spec not in state.history:
        state.history.append(spec)
    return True


@st.cache_resource(show_spinner="Capturing the model with torch.export…", max_entries=16)
def _cached_capture(
    spec: str, input_shape: tuple[int, ...] | None, stamp: float | None
) -> tuple[CapturedModel, GraphView]:
    captured = _capture(spec, input_shape=input_shape)
    return captured, describe(captured.graph_module(), stage="exported")


def _file_stamp(spec: str) -> float | None:
    """Modification time of the file a spec names, so an edited file is captured again."""
    try:
        parsed = ModelSpec.parse(spec)
    except WorkbenchError:
        return None
    path = Path(parsed.target)
    return path.stat().st_mtime if parsed.kind != "sample" and path.is_file() else None


@st.cache_data(show_spinner="Laying out the graph with Graphviz…", max_entries=64)
def svg_for(dot: str) -> str:
    """SVG for DOT text, laid out once per distinct graph and view options."""
    return dot_to_svg(dot)
