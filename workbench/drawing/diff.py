"""Drawing a stage diff: either side coloured by what happened to each node, or both at once.

The changes come from `workbench.analysis.diff`; this module only turns them into DOT, with
collapsed module boxes labelled by their counts per kind.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Collection, Iterable

from workbench.analysis.diff import KINDS, NodeChange, Side, StageDiff
from workbench.drawing.dot import (
    OPEN_COLLAPSED_ABOVE,
    box_of,
    group_depth,
    max_depth,
    single_node_modules,
    to_dot,
)
from workbench.drawing.overlays import DIFF_BADGES, DIFF_COLOURS, NodeOverlay, diff_style
from workbench.graph.view import GraphView

__all__ = [
    "DIFF_COLOURS",  # the legend of these drawings (defined with every colour in overlays)
    "REMOVED_PREFIX",
    "diff_opening_depth",
    "diff_to_dot",
    "group_overlays",
    "grouped_view",
    "overlay_to_dot",
    "overlay_view",
]


def diff_to_dot(
    view: GraphView,
    diff: StageDiff,
    *,
    side: Side,
    focus_group: str | None = None,
    collapse_depth: int | None = None,
    expanded: Collection[str] = (),
) -> str:
    """DOT text of one side of a diff, each node coloured by what happened to it.

    `view` describes that side's GraphModule. Added nodes are green, rewritten amber,
    renamed and unchanged grey; removed nodes exist only on the before side and are drawn
    there with a dashed red border. With `focus_group`, only the group's nodes and their
    direct inputs and outputs are drawn. With `collapse_depth`, modules not in `expanded` are
    one box each (see `to_dot`), placed by `grouped_view` and labelled with their counts per
    kind (`group_overlays`).
    """
    overlay: dict[str, NodeOverlay] = {}
    for change in diff.changes:
        name = change.before if side == "before" else change.after
        if name is None or name not in view:
            continue
        tooltip = f"{change.kind}: {change.detail}" if change.detail else change.kind
        badge = DIFF_BADGES.get(change.kind)
        if change.kind == "renamed":
            other = change.after if side == "before" else change.before
            badge = f"now {other}" if side == "before" else f"was {other}"
        overlay[name] = diff_style(change.kind, badge=badge, tooltip=tooltip)
    if focus_group is not None:
        before, after = diff.group_members(focus_group)
        view = _focus(view, before if side == "before" else after)
    elif collapse_depth is not None:
        view = grouped_view(view, diff, side=side)
        changes = _changes_by_node(view, diff, side)
        overlay.update(group_overlays(view, changes, collapse_depth, expanded))
    return to_dot(view, overlay=overlay, collapse_depth=collapse_depth, expanded=expanded)


def grouped_view(view: GraphView, diff: StageDiff, *, side: Side | None = None) -> GraphView:
    """`view` with nodes outside every module (q/dq, observers) put in the diff's module.

    FX gives the nodes prepare and convert insert no module stack; the diff knows the module
    of the op each one serves, so a collapsed module box counts them. `side=None` reads an
    `overlay_view` (after-side names, removed nodes behind REMOVED_PREFIX).
    """
    modules = {m.path: m.type for m in view.modules.walk() if m.path}
    nodes = []
    for node in view.nodes:
        change = _change_of(diff, node.name, side)
        if node.module_chain or change is None or not change.module:
            nodes.append(node)
            continue
        parts = change.module.split(".")
        chain = tuple(p for p in (".".join(parts[: i + 1]) for i in range(len(parts)))
                      if p in modules)  # fmt: skip
        if not chain:
            nodes.append(node)
            continue
        nodes.append(dataclasses.replace(node, module=chain[-1], module_type=modules[chain[-1]],
                                         module_chain=chain))  # fmt: skip
    return GraphView(view.stage, tuple(nodes), view.edges, view.modules)


def diff_opening_depth(before: GraphView, after: GraphView, diff: StageDiff) -> int | None:
    """The collapse depth both sides of a diff open at: module groups over
    OPEN_COLLAPSED_ABOVE nodes on the larger side, else None (drawn whole)."""
    if max(len(before), len(after)) <= OPEN_COLLAPSED_ABOVE or max_depth(before) == 0:
        return None
    return group_depth(grouped_view(before, diff, side="before"))


def group_overlays(
    view: GraphView,
    changes: dict[str, NodeChange],
    collapse_depth: int,
    expanded: Collection[str] = (),
) -> dict[str, NodeOverlay]:
    """Styling of the collapsed module boxes: counts per kind, coloured by the strongest.

    A box holding rewritten nodes is amber, else added green, else removed (dashed red);
    a box where nothing changed keeps the plain module colour and says "unchanged".
    Only drawn nodes count (parameters are folded into labels), like the box's node count.
    """
    counted: dict[str, Counter[str]] = {}
    opened = frozenset(expanded) | single_node_modules(view)
    for name, change in changes.items():
        if view[name].is_param:
            continue
        box = box_of(view[name], collapse_depth, opened)
        if box.startswith("module/"):
            counted.setdefault(box, Counter())[change.kind] += 1
    overlays: dict[str, NodeOverlay] = {}
    for box, kinds in counted.items():
        shown = [k for k in KINDS if k != "unchanged" and kinds.get(k)]
        note = " · ".join(f"{kinds[k]} {k}" for k in shown) or "unchanged"
        tooltip = f"{box.split('/', 1)[1]}: " + ", ".join(f"{kinds[k]} {k}" for k in KINDS
                                                          if kinds.get(k))  # fmt: skip
        tooltip += " (click to expand)"
        strongest = next((k for k in ("rewritten", "added", "removed") if kinds.get(k)), None)
        overlays[box] = diff_style(strongest, tooltip=tooltip, note=note)
    return overlays


def _change_of(diff: StageDiff, name: str, side: Side | None) -> NodeChange | None:
    """The change behind node `name` of one side, or of an overlay view (side None)."""
    if side is None:
        if name.startswith(REMOVED_PREFIX):
            name, side = name.removeprefix(REMOVED_PREFIX), "before"
        else:
            side = "after"
    try:
        return diff.change(name, side)
    except KeyError:
        return None


def _changes_by_node(view: GraphView, diff: StageDiff, side: Side | None) -> dict[str, NodeChange]:
    found = {n.name: _change_of(diff, n.name, side) for n in view.nodes}
    return {name: change for name, change in found.items() if change is not None}


REMOVED_PREFIX = "before/"


def overlay_view(before: GraphView, after: GraphView, diff: StageDiff) -> GraphView:
    """Both stages in one graph: the after side, plus the removed nodes of the before side.

    Matched nodes appear once, under their after-side name; removed nodes keep their
    before-side name behind the prefix `before/` (FX names never contain a slash), with the
    edges they had, redrawn to the matched nodes' after-side names.
    """
    rename: dict[str, str] = {}
    removed = []
    for change in diff.changes:
        if change.before is None or change.before not in before:
            continue
        if change.kind == "removed":
            rename[change.before] = REMOVED_PREFIX + change.before
            removed.append(change.before)
        elif change.after is not None:
            rename[change.before] = change.after
    extra = tuple(dataclasses.replace(before[name], name=REMOVED_PREFIX + name) for name in removed)
    edges = list(after.edges)
    seen = set(edges)
    for src, dst in before.edges:
        if src not in removed and dst not in removed:
            continue
        edge = (rename.get(src, src), rename.get(dst, dst))
        drawn = all(end in after or end.startswith(REMOVED_PREFIX) for end in edge)
        if drawn and edge not in seen:
            seen.add(edge)
            edges.append(edge)
    return GraphView(f"{before.stage}+{after.stage}", after.nodes + extra, tuple(edges),
                     after.modules)  # fmt: skip


def overlay_to_dot(
    before: GraphView,
    after: GraphView,
    diff: StageDiff,
    *,
    collapse_depth: int | None = None,
    expanded: Collection[str] = (),
) -> str:
    """DOT text of `overlay_view`, coloured like `diff_to_dot` on both sides at once."""
    view = overlay_view(before, after, diff)
    overlay: dict[str, NodeOverlay] = {}
    for change in diff.changes:
        tooltip = f"{change.kind}: {change.detail}" if change.detail else change.kind
        if change.kind == "removed" and change.before is not None:
            overlay[REMOVED_PREFIX + change.before] = diff_style(
                "removed", badge=DIFF_BADGES["removed"], tooltip=tooltip
            )
        elif change.after is not None:
            badge = DIFF_BADGES.get(change.kind)
            if change.kind in ("renamed", "rewritten") and change.before != change.after:
                badge = f"{badge or change.kind}, was {change.before}"
            overlay[change.after] = diff_style(change.kind, badge=badge, tooltip=tooltip)
    if collapse_depth is not None:
        view = grouped_view(view, diff)
        changes = _changes_by_node(view, diff, None)
        overlay.update(group_overlays(view, changes, collapse_depth, expanded))
    return to_dot(view, overlay=overlay, collapse_depth=collapse_depth, expanded=expanded)


def _focus(view: GraphView, members: Iterable[str]) -> GraphView:
    """The part of `view` made of `members` and their direct inputs and outputs."""
    keep = {m for m in members if m in view}
    near = {s for s, d in view.edges if d in keep} | {d for s, d in view.edges if s in keep}
    keep |= near
    nodes = tuple(n for n in view.nodes if n.name in keep)
    edges = tuple(e for e in view.edges if e[0] in keep and e[1] in keep)
    return GraphView(view.stage, nodes, edges, view.modules)
