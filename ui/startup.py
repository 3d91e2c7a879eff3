"""What the cold start (`ui.boot`) and the warm app (`ui.state`) agree on: the start-up model
and a click made on the cached graph before the model was loaded.

Apart from both so that neither imports the other (the cold start's thread imports `ui.state`);
like `ui.boot` it imports only streamlit and light library modules, never torch.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Container
from pathlib import Path

import streamlit as st

from workbench.drawing.viewcache import DEFAULT_SPEC, last_spec

__all__ = ["PENDING_KEY", "startup_spec", "take_pending_click"]

PENDING_KEY = "workbench-boot-click"  # the node clicked on the cached graph


def startup_spec(folder: Path) -> str:
    """`--model` from the command line, else the workspace's last model, else the default."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--model", default=None)
    known, _ = parser.parse_known_args(sys.argv[1:])
    return str(known.model or last_spec(folder) or DEFAULT_SPEC)


def take_pending_click(nodes: Container[str]) -> str | None:
    """What was clicked on the cached graph, once: a node of `nodes` (a GraphView) or a
    group box or frame (`module/PATH`, `cluster/PATH`), which is selected, not expanded."""
    clicked = st.session_state.pop(PENDING_KEY, None)
    if not isinstance(clicked, str):
        return None
    return clicked if clicked in nodes or clicked.startswith(("module/", "cluster/")) else None
