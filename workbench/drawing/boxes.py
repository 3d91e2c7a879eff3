"""Which box draws a node: modules collapsed at a depth are one box each, unless expanded.

Kept apart from `workbench.drawing.dot` so the overlays (`workbench.drawing.overlays`), whose
colours `dot` draws, can name the boxes too.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection

from workbench.graph.view import GraphView, NodeInfo

__all__ = ["box_of", "collapsed_module", "max_depth", "single_node_modules"]


def box_of(node: NodeInfo, collapse_depth: int | None, expanded: Collection[str] = ()) -> str:
    """The id of the box that stands for `node` when drawn at `collapse_depth` (no chunking)."""
    path = collapsed_module(node.module_chain, collapse_depth, expanded)
    return node.name if path is None else "module/" + path


def collapsed_module(
    chain: tuple[str, ...], collapse_depth: int | None, expanded: Collection[str]
) -> str | None:
    """The outermost module of `chain` at `collapse_depth` or deeper that is not expanded."""
    if collapse_depth is None:
        return None
    return next((path for path in chain[collapse_depth - 1 :] if path not in expanded), None)


def single_node_modules(view: GraphView) -> frozenset[str]:
    """Modules holding a single (non-parameter) node: drawn as that node, never as a box."""
    sizes = Counter(path for n in view.nodes if not n.is_param for path in n.module_chain)
    return frozenset(path for path, size in sizes.items() if size == 1)


def max_depth(view: GraphView) -> int:
    """The deepest module nesting in the view (0 for a model without submodules)."""
    return max((len(n.module_chain) for n in view.nodes), default=0)
