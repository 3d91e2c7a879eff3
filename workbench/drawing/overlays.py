"""Every colour the graph is drawn in, and the overlays that colour it by a result.

An overlay is keyed by node id or box id (`module/PATH` for a collapsed module), never stored
in the graph itself. Two kinds:

- `Overlay`: one colouring (op family, annotation status, SQNR, where the .pte runs each
  node): a legend and a fill per node
  or box. The Graph page shows the legend and hands the fills to its graph component, which
  recolours the laid-out SVG without a new layout. Op family is the drawing's own colouring:
  `workbench.drawing.dot` fills every node with `family_colour`.
- `NodeOverlay`: styling `workbench.drawing.dot` draws into the layout itself (a fill, a
  border, a badge, a note, a dashed outline), as the stage diff needs (`diff_style`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from workbench.analysis.sqnr import NodeError, badness, sqnr_by_node
from workbench.drawing.boxes import box_of, max_depth
from workbench.graph.view import GraphView
from workbench.quantization.recipe import Effective, annotation_status

__all__ = [
    "ANNOTATION_COLOURS",
    "DIFF_BADGES",
    "DIFF_COLOURS",
    "EDGE_COLOUR",
    "FAMILY_COLOURS",
    "FRAME_COLOUR",
    "FRAME_TITLE_COLOUR",
    "MODULE_BOX_COLOUR",
    "NO_SQNR_COLOUR",
    "PLACEMENT_COLOURS",
    "PLACEMENT_LABELS",
    "REMOVED_FILL",
    "SQNR_BANDS",
    "NodeOverlay",
    "Overlay",
    "annotation_colours",
    "annotation_overlay",
    "db_colours",
    "db_overlay",
    "diff_style",
    "family_colour",
    "family_overlay",
    "placement_overlay",
    "sqnr_colour",
    "sqnr_colours",
    "sqnr_legend",
    "sqnr_overlay",
]

# --- the colour tables ---------------------------------------------------------------------

# The graph as drawn: op nodes by family, collapsed module boxes, edges and module frames.
FAMILY_COLOURS: dict[str, str] = {
    "input": "#e0e0e0",
    "output": "#e0e0e0",
    "param": "#f5f5f5",
    "conv": "#8ecae6",
    "linear": "#a8dadc",
    "matmul": "#b5ead7",
    "norm": "#ffd6a5",
    "activation": "#fdffb6",
    "pool": "#cdb4db",
    "elementwise": "#ffc8dd",
    "reduction": "#e2c2ff",
    "shape": "#f1f1f1",
    "quant": "#ff9f9f",
    "observer": "#ffadad",
    "other": "#ffffff",
}
MODULE_BOX_COLOUR = "#dbe4ee"
EDGE_COLOUR = "#555555"
FRAME_COLOUR = "#8899aa"  # the dashed outline of an expanded module
FRAME_TITLE_COLOUR = "#445566"

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
# Fill colour per kind of diff change; "removed" is the colour of the dashed border (the fill
# of a removed node stays REMOVED_FILL).
DIFF_COLOURS: dict[str, str] = {
    "added": "#a1d99b",
    "removed": "#e6550d",
    "rewritten": "#fdae6b",
    "renamed": "#e0e0e0",
    "unchanged": "#e0e0e0",
}
REMOVED_FILL = "#ffffff"
# Where the ExecuTorch program runs a node (`workbench.artifacts.pte.SOURCE_PLACEMENTS`):
# inside the XNNPACK delegate, partly outside it, wholly on portable kernels, or nowhere.
PLACEMENT_COLOURS: dict[str, str] = {
    "xnnpack": "#74c476",
    "partly portable": "#fdae6b",
    "portable": "#e6550d",
    "not in program": "#eeeeee",
}
PLACEMENT_LABELS = {
    "xnnpack": "XNNPACK delegate",
    "partly portable": "partly on portable kernels",
    "portable": "portable kernels",
    "not in program": "not in the program",
}
DIFF_BADGES = {"added": "added", "removed": "removed", "rewritten": "rewritten"}


# --- the overlay model ---------------------------------------------------------------------


@dataclass(frozen=True)
class Overlay:
    """One colouring of the graph: what its colours mean, and the fill of each node or box.

    `legend` maps labels to colours, in the order shown. `fills` maps node ids and box ids to
    colours; an id it leaves out keeps the fill it was drawn with (so an empty `fills` leaves
    the drawing as it is).
    """

    legend: Mapping[str, str] = field(default_factory=dict)
    fills: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class NodeOverlay:
    """Styling for one node or module box drawn into the layout: diffs' fills, borders, badges."""

    fill: str | None = None
    border: str | None = None
    badge: str | None = None
    tooltip: str | None = None
    style: str | None = None  # Graphviz node style, e.g. "rounded,filled,dashed"
    note: str | None = None  # an extra last label line, e.g. a collapsed group's diff counts


# --- colouring by op family (the drawing's own colours) ------------------------------------


def family_colour(family: str) -> str:
    """Fill colour of an op node of `family` (an unknown family is drawn as "other")."""
    return FAMILY_COLOURS.get(family, FAMILY_COLOURS["other"])


def family_overlay() -> Overlay:
    """Colour by op family: the fills `to_dot` draws every graph with, so nothing to recolour
    (and no legend: the Model page charts the families)."""
    return Overlay()


# --- colouring by annotation status --------------------------------------------------------


def annotation_colours(view: GraphView, effective: Mapping[str, Effective]) -> dict[str, str]:
    """Fill colour of every op node by annotation status (for the client-side recolouring)."""
    return {
        n.name: ANNOTATION_COLOURS[annotation_status(effective.get(n.name))]
        for n in view.nodes
        if n.op == "call_function"
    }


def annotation_overlay(view: GraphView, effective: Mapping[str, Effective]) -> Overlay:
    """Colour by annotation status: kept float, backend defaults, an override, not quantized."""
    return Overlay(dict(ANNOTATION_COLOURS), annotation_colours(view, effective))


# --- colouring by SQNR ---------------------------------------------------------------------


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
    return db_colours(view, _dbs(errors), collapse_depth)


def db_colours(
    view: GraphView, dbs: Mapping[str, float], collapse_depth: int | None = None
) -> dict[str, str]:
    """`sqnr_colours` for SQNRs given per exported node name (dB)."""
    measured: dict[str, list[float]] = {}
    for node in view.nodes:
        if node.op == "call_function":
            found = measured.setdefault(box_of(node, collapse_depth), [])
            if node.name in dbs:
                found.append(dbs[node.name])
    return {
        box: sqnr_colour(max(found, key=badness)) if found else NO_SQNR_COLOUR
        for box, found in measured.items()
    }


def sqnr_overlay(
    view: GraphView, errors: Iterable[NodeError], collapse_depth: int | None = None
) -> Overlay:
    """Colour by SQNR, for every box an expansion of the graph drawn at `collapse_depth` can
    show: module groups at each depth from it down, and single nodes (a collapsed module
    shows its worst node), so expanding a group needs no new overlay."""
    return db_overlay(view, _dbs(errors), collapse_depth)


def db_overlay(
    view: GraphView, dbs: Mapping[str, float], collapse_depth: int | None = None
) -> Overlay:
    """`sqnr_overlay` for SQNRs given per exported node name (dB), such as a stage gap."""
    deepest = max_depth(view)
    depths = [None] if collapse_depth is None else [*range(collapse_depth, deepest + 1), None]
    fills = {box: c for d in depths for box, c in db_colours(view, dbs, d).items()}
    return Overlay(sqnr_legend(), fills)


def _dbs(errors: Iterable[NodeError]) -> dict[str, float]:
    return {name: error.sqnr_db for name, error in sqnr_by_node(errors).items()}


# --- colouring by where the .pte runs each node --------------------------------------------


def placement_overlay(
    view: GraphView, where: Mapping[str, str], collapse_depth: int | None = None
) -> Overlay:
    """Colour by where the lowered program runs each node (`where`: exported node name to a
    SOURCE_PLACEMENTS value; an op node left out is not in the program). The legend counts
    the op nodes of each colour. A collapsed module box is XNNPACK or portable when all its
    running nodes are, partly portable when they are mixed, and not in the program when none
    of its nodes runs."""
    ops = [n for n in view.nodes if n.op == "call_function"]
    placed = {n.name: where.get(n.name, "not in program") for n in ops}
    deepest = max_depth(view)
    depths = [None] if collapse_depth is None else [*range(collapse_depth, deepest + 1), None]
    fills: dict[str, str] = {}
    for depth in depths:
        members: dict[str, set[str]] = {}
        for node in ops:
            members.setdefault(box_of(node, depth), set()).add(placed[node.name])
        for box, kinds in members.items():
            fills[box] = PLACEMENT_COLOURS[_combined(kinds)]
    counts = {kind: 0 for kind in PLACEMENT_COLOURS}
    for kind in placed.values():
        counts[kind] += 1
    legend = {f"{PLACEMENT_LABELS[k]} ({counts[k]})": c for k, c in PLACEMENT_COLOURS.items()}
    return Overlay(legend, fills)


def _combined(kinds: set[str]) -> str:
    running = kinds - {"not in program"}
    if not running:
        return "not in program"
    return running.pop() if len(running) == 1 else "partly portable"


# --- styling a stage diff ------------------------------------------------------------------


def diff_style(
    kind: str | None,
    *,
    badge: str | None = None,
    tooltip: str | None = None,
    note: str | None = None,
) -> NodeOverlay:
    """How a node or collapsed module box is drawn for a diff change of `kind`.

    A removed one is white with a dashed border in the "removed" colour; any other kind is
    filled with its colour; None (a module where nothing changed) keeps the plain box colour.
    """
    if kind == "removed":
        return NodeOverlay(fill=REMOVED_FILL, border=DIFF_COLOURS["removed"], badge=badge,
                           tooltip=tooltip, style="rounded,filled,dashed", note=note)  # fmt: skip
    fill = DIFF_COLOURS[kind] if kind is not None else None
    return NodeOverlay(fill=fill, badge=badge, tooltip=tooltip, note=note)
