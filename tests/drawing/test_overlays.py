"""The overlay model: one colouring per Overlay (legend + fills by node or box id)."""

from __future__ import annotations

import math

from workbench.analysis.sqnr import NodeError
from workbench.drawing.boxes import max_depth
from workbench.drawing.overlays import (
    ANNOTATION_COLOURS,
    DIFF_COLOURS,
    REMOVED_FILL,
    annotation_colours,
    annotation_overlay,
    diff_style,
    family_colour,
    family_overlay,
    sqnr_colours,
    sqnr_legend,
    sqnr_overlay,
)
from workbench.graph.view import GraphView


def _error(exported: str, db: float) -> NodeError:
    return NodeError(node=exported, exported=exported, reference=exported, compared=exported,
                     sqnr_db=db, max_abs_error=0.0, quantized=True, bn_folded=False)  # fmt: skip


def test_family_overlay_leaves_the_drawing_as_it_is() -> None:
    overlay = family_overlay()
    assert dict(overlay.legend) == {} and dict(overlay.fills) == {}
    assert family_colour("conv") == "#8ecae6"
    assert family_colour("no such family") == family_colour("other") == "#ffffff"


def test_annotation_overlay_is_its_legend_and_the_per_node_colours(
    views: dict[str, GraphView],
) -> None:
    view = views["digits_cnn"]
    overlay = annotation_overlay(view, {})
    assert dict(overlay.legend) == ANNOTATION_COLOURS
    assert overlay.fills == annotation_colours(view, {})
    assert set(overlay.fills.values()) == {ANNOTATION_COLOURS["not quantized"]}


def test_sqnr_overlay_colours_every_box_an_expansion_can_show(
    views: dict[str, GraphView],
) -> None:
    view = views["digits_cnn"]
    errors = [_error(n.name, 25.0) for n in view.nodes if n.op == "call_function"][:3]
    errors.append(_error("linear", math.nan))
    whole = sqnr_overlay(view, errors)
    assert dict(whole.legend) == sqnr_legend()
    assert whole.fills == sqnr_colours(view, errors)
    collapsed = sqnr_overlay(view, errors, 1)
    expected: dict[str, str] = {}
    for depth in [*range(1, max_depth(view) + 1), None]:
        expected |= sqnr_colours(view, errors, depth)
    assert collapsed.fills == expected
    assert {k for k in collapsed.fills if not k.startswith("module/")} == set(whole.fills)


def test_diff_style_per_kind() -> None:
    removed = diff_style("removed", badge="removed", tooltip="removed")
    assert (removed.fill, removed.border, removed.style) == (
        REMOVED_FILL, DIFF_COLOURS["removed"], "rounded,filled,dashed"
    )  # fmt: skip
    added = diff_style("added", badge="added", note="1 added")
    assert (added.fill, added.border, added.badge, added.note) == (
        DIFF_COLOURS["added"], None, "added", "1 added"
    )  # fmt: skip
    assert diff_style(None, note="unchanged").fill is None  # a plain module box
