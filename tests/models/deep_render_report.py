"""Capture, describe and render the 10,002-node `render_models.py:deep_mlp`; write a JSON report.

Run as `python deep_render_report.py OUT.json`. The export of 10,000 nodes takes 10-20 s, so
the test session starts this script in a background process as soon as collection is done
(see conftest.py) and test_render.py asserts on the report it writes.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import time
import warnings
from pathlib import Path

from workbench.drawing.dot import count_boxes, dot_to_svg, max_depth, render_for_screen
from workbench.graph.view import describe
from workbench.model.capture import capture

BUDGET = 1500


def report() -> dict:
    warnings.filterwarnings("ignore")
    start = time.perf_counter()
    captured = capture(f"{Path(__file__).resolve().parent / 'render_models.py'}:deep_mlp")
    view = describe(captured.graph_module())
    capture_seconds = time.perf_counter() - start
    start = time.perf_counter()
    rendered = render_for_screen(view, node_budget=BUDGET)
    render_seconds = time.perf_counter() - start
    svg, svg_seconds = None, None
    if shutil.which("dot"):
        start = time.perf_counter()
        svg = dot_to_svg(rendered.dot)
        svg_seconds = time.perf_counter() - start
    return {
        "dynamic_batch": captured.dynamic_batch,
        "nodes": len(view),
        "edges": len(view.edges),
        "families": view.family_counts(),
        "max_depth": max_depth(view),
        "boxes_by_depth": {str(d): count_boxes(view, collapse_depth=d) for d in (None, 1, 2)},
        "top_level_modules": len(view.modules.children),
        "rendered": {
            "collapse_depth": rendered.collapse_depth,
            "chunk_size": rendered.chunk_size,
            "boxes": rendered.boxes,
            "auto_collapsed": rendered.auto_collapsed,
            "dot": rendered.dot,
        },
        "svg_node_ids": re.findall(r'<g id="([^"]+)" class="node">', svg) if svg else None,
        "capture_seconds": capture_seconds,
        "render_seconds": render_seconds,
        "svg_seconds": svg_seconds,
    }


if __name__ == "__main__":
    Path(sys.argv[1]).write_text(json.dumps(report()), encoding="utf-8")
