"""The cold start: a new session's first page before torch is imported.

On a fresh server the library (torch, torchao) takes seconds to import and the model more to
capture. `cold_start` draws what it can at once: on the Graph page the start-up model's graph
from the workspace's view cache (`workbench.drawing.viewcache`), elsewhere the page's title and a
note; a server-wide thread meanwhile imports the library, captures the model into
`ui.state`'s caches and writes the cache entry. The script waits for that thread (checking
for reruns as it waits) and then reruns into the normal app, which finds everything cached.

Clicks on the cached graph are kept (under `ui.startup.PENDING_KEY`) and applied once the
model is loaded. This module imports only streamlit and light library modules: never torch.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import streamlit as st

from ui.graph_component import component
from ui.startup import PENDING_KEY, startup_spec
from workbench.drawing.viewcache import (
    SCREEN_DEFAULT,
    CachedView,
    ViewCache,
    default_folder,
    entry_for,
    opening,
    view_key,
)

__all__ = ["GRAPH_PAGE", "PENDING_KEY", "STATE_KEY", "SWITCH", "Loader", "cold_start"]

log = logging.getLogger(__name__)
STATE_KEY = "workbench"  # ui.state.STATE_KEY: a session that has it is past its cold start
GRAPH_PAGE = "Graph"
SWITCH = "WORKBENCH_COLD_START"  # "off": every first run imports torch first (the old start)
_BEAT_S = 0.25  # how often the waiting script lets Streamlit see a rerun (a click)


@dataclass
class Loader:
    """The server's import of the library and capture of the start-up model, in a thread."""

    spec: str
    cache: ViewCache
    done: threading.Event = field(default_factory=threading.Event)
    error: str | None = None
    _started: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
        """Start the thread unless it was started (by this session or another)."""
        if self._started.acquire(blocking=False):
            threading.Thread(target=self.run, name="workbench-cold-start", daemon=True).start()

    def run(self) -> None:
        try:
            _load(self.spec, self.cache)
        except Exception as exc:  # the normal path captures again and shows the error
            self.error = f"{type(exc).__name__}: {exc}"
            log.info("the cold-start capture of %s failed: %s", self.spec, self.error)
        finally:
            self.done.set()


def _load(spec: str, cache: ViewCache) -> None:
    """Fill ui.state's capture and layout caches for `spec` as `get_state` and the Graph page
    will ask for them, and write the view cache entry."""
    from ui import state

    view = state.captured_view(spec)
    rendered = opening(view)
    svg = state.svg_for(rendered.dot)
    key = view_key(spec, SCREEN_DEFAULT)
    if key is not None:
        cache.put(key, entry_for(spec, view, rendered, svg))


@st.cache_resource(show_spinner=False)
def _loader(spec: str, folder: str) -> Loader:
    """One loader per server, start-up model and workspace (`start` it)."""
    return Loader(spec, ViewCache(Path(folder) / "views"))


def _ignore() -> None:
    """Clicks are read from the return value; the callback only registers the key."""


def _graph(entry: CachedView) -> None:
    """The Graph page as it opens, drawn from the cache entry (controls come with the app)."""
    st.title(f"Graph · {entry.spec}")
    st.columns([3, 2, 3])[0].caption("Starting torch: the controls appear in a moment.")
    if entry.auto_collapsed:
        st.info(f"{entry.nodes:,} nodes are over the screen budget: drawn collapsed at depth "
                f"{entry.collapse_depth} ({entry.boxes:,} boxes).")  # fmt: skip
    elif entry.collapse_depth is not None:
        st.caption(f"{entry.nodes:,} nodes drawn as {entry.boxes:,} boxes: modules at depth "
                   f"{entry.collapse_depth} are one box each.")  # fmt: skip
    left, right = st.columns([3, 1])
    with left:
        data = {
            "svg": entry.svg, "svg_key": f"{len(entry.svg)}:{hash(entry.svg)}",
            "selected": st.session_state.get(PENDING_KEY), "colors": None, "highlight": [],
            "center": None, "height": "70vh",
        }  # fmt: skip
        result = component(data=data, key="graph", on_clicked_change=_ignore)
    clicked = getattr(result, "clicked", None)
    if isinstance(clicked, str) and clicked != data["selected"]:
        st.session_state[PENDING_KEY] = clicked
        st.rerun()  # to outline it
    with right:
        pending = st.session_state.get(PENDING_KEY)
        if pending:
            st.subheader(pending)
            st.caption("Loading the model: its details and editor appear in a moment.")
        else:
            st.caption("Click a node to see its details and edit how it is quantized.")


def cold_start(page_title: str) -> None:
    """Before the normal app of a session's first run: draw the page from the cache and wait
    for the library, then rerun. Returns at once when the session or the server is warm."""
    if STATE_KEY in st.session_state or os.environ.get(SWITCH) == "off":
        return
    folder = default_folder()
    spec = startup_spec(folder)
    loader = _loader(spec, str(folder))
    if loader.done.is_set():
        return
    entry = None
    if page_title == GRAPH_PAGE:
        key = view_key(spec, SCREEN_DEFAULT)
        entry = loader.cache.get(key) if key is not None else None
    if entry is not None:
        _graph(entry)
    else:
        st.title(page_title)
    beat = st.empty()
    loader.start()  # after the page is drawn: importing torch competes for the CPU
    start = time.monotonic()
    while not loader.done.wait(_BEAT_S):
        # Each update is a point where Streamlit can stop the script for a rerun (a click).
        beat.caption(f"Starting torch and capturing {spec}… {time.monotonic() - start:.0f} s")
    st.rerun()
