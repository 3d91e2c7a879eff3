"""Colours the graph is drawn in: per-node SQNR bands and annotation status, with legends.

Every overlay maps a node id (or a collapsed module box) to a fill colour; `workbench.drawing.dot`
draws them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from workbench.analysis.compare import badness, sqnr_by_node
from workbench.analysis.sqnr import NodeError
from workbench.drawing.dot import box_of
from workbench.graph.view import GraphView
from workbench.quantization.editing import annotation_status
from workbench.quantization.recipe import Effective

__all__ = [
    "ANNOTATION_COLOURS",
    "NO_SQNR_COLOUR",
    "SQNR_BANDS",
    "annotation_colours",
    "sqnr_colour",
    "sqnr_colours",
    "sqnr_legend",
]

# (lower bound in dB, label, fill colour): the first band whose bound the SQNR reaches.
SQNR_BANDS: tuple[tuple[float, str, str], ...] = (
    (40.0, "≥ 40 dB", "#1a9850"),
    (30.0, "30–40 dB", "#91cf60"),
    (20.0, "20–30 dB", "#fee08b"),
    (10.0, "10–20 dB", "#fc8d59"),
    (-math.inf, "< 10 dB", "#d73027"),
)
NO_SQNR_COLOUR = "#eeeeee"
# Colours for "colour by annotation": kept float, quantized by the backend's defaults,
# quantized with an override; nodes the backend does not quantize keep a neutral grey.
ANNOTATION_COLOURS = {
    "float": "#9ecae1",
    "default": "#a1d99b",
    "override": "#fdae6b",
    "not quantized": "#eeeeee",
}


def sqnr_colour(db: float) -> str:
    """Fill colour for an SQNR in dB (an exact match, +inf, counts as the best band; NaN,
    from a float reference that is itself NaN, as not measured)."""
    if math.isnan(db):
        return NO_SQNR_COLOUR
    return next(colour for bound, _, colour in SQNR_BANDS if db >= bound)


def sqnr_legend() -> dict[str, str]:
    """Legend labels to colours, best band first, then nodes without a measurement."""
    return {label: colour for _, label, colour in SQNR_BANDS} | {"not measured": NO_SQNR_COLOUR}


def sqnr_colours(
    view: GraphView, errors: Iterable[NodeError], collapse_depth: int | None = None
) -> dict[str, str]:
    """Fill colour of every op box of the exported graph drawn at `collapse_depth`.

    A box is coloured by the lowest SQNR of the nodes it stands for; op boxes without a
    measurement are light grey.
    """
    by_node = sqnr_by_node(errors)
    measured: dict[str, list[float]] = {}
    for node in view.nodes:
        if node.op == "call_function":
            dbs = measured.setdefault(box_of(node, collapse_depth), [])
            if node.name in by_node:
                dbs.append(by_node[node.name].sqnr_db)
    return {
        box: sqnr_colour(max(dbs, key=badness)) if dbs else NO_SQNR_COLOUR
        for box, dbs in measured.items()
    }


def annotation_colours(view: GraphView, effective: Mapping[str, Effective]) -> dict[str, str]:
    """Fill colour of every op node by annotation status (for the client-side recolouring)."""
    return {
        n.name: ANNOTATION_COLOURS[annotation_status(effective.get(n.name))]
        for n in view.nodes
        if n.op == "call_function"
    }
