"""Where a node of any PT2E stage came from: the node of the captured graph it descends from.

Every pass torch and torchao run on a graph (unlifting, prepare, QAT conv-bn fusion,
convert) records in `node.meta["from_node"]` the node(s) a new node was made from, each
with its own `from_node` chain. The *source* of a node is the end of that chain, always
following the last entry: a (name, graph_id) pair, as torchao's numeric debugger keys
nodes. A node without `from_node` is its own source.

Names are not enough: prepare renames convs (conv2d_1 -> conv2d_5) and convert renames them
again (-> conv2d_8), while the source stays ("conv2d_1", E). Nodes torchao copies in from
its pattern graphs have sources such as ("add", P), P the id of a pattern graph, so their
names can collide with the user's: graph ids are compared too.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from torch.fx import GraphModule, Node

from workbench.graph.nodes import CONV_OPS, is_tensor_op, readable_op

__all__ = [
    "NodeSource",
    "conv_before",
    "exported_graph_id",
    "node_source",
    "provenance_key",
    "root_source",
]


@dataclass(frozen=True)
class NodeSource:
    """A node of the captured graph (or of a torchao pattern graph) by name and graph id."""

    name: str
    graph_id: int


def root_source(node: Node) -> NodeSource | None:
    """The end of the node's `from_node` chain (last entries); None when it has none."""
    sources = node.meta.get("from_node") or []
    if not sources:
        return None
    root = sources[-1]
    while root.from_node:
        root = root.from_node[-1]
    return NodeSource(str(root.name), root.graph_id)


def node_source(node: Node) -> NodeSource:
    """The root of the node's `from_node` chain; the node itself (its graph's id) if none."""
    return root_source(node) or NodeSource(node.name, id(node.graph))


def exported_graph_id(gm: GraphModule) -> int:
    """The graph id that sources of nodes copied from the exported graph carry in `gm`.

    It is the source graph id of the placeholders: inputs always come straight from the
    exported graph, in every stage. It is the id of the ExportedProgram's graph (the same
    for every `program.module()` call), so another capture of the same model has another.
    Without placeholders, the most common one among the tensor ops.
    """
    ids = Counter(node_source(n).graph_id for n in gm.graph.nodes if n.op == "placeholder")
    if not ids:
        ids = Counter(node_source(n).graph_id for n in gm.graph.nodes if is_tensor_op(n))
    return ids.most_common(1)[0][0] if ids else id(gm.graph)


def provenance_key(node: Node) -> tuple[str, ...] | None:
    """A key that names the same computation in every stage derived from one captured graph.

    get_attr nodes are keyed by what they read; other nodes by their source (its name and
    graph id, since names of nodes from torchao's pattern graphs can collide with the
    user's); None for a node without `from_node` and for call_module nodes.
    """
    if node.op == "get_attr":
        return ("param", str(node.target))
    if node.op == "call_module":
        # prepare copies from_node onto some observers but not others; none stands for an op.
        return None
    root = root_source(node)
    return None if root is None else ("node", root.name, str(root.graph_id))


def conv_before(
    bn: Node, *, exported_id: int | None = None, through_observers: bool = False
) -> Node | None:
    """The conv whose output a batch_norm normalises, back through QAT's fusion helpers.

    Walks first arguments back from the batch_norm, at most 8 nodes. With `exported_id`,
    only a conv whose source is in that exported graph counts (others are walked through);
    with `through_observers`, observers and fake quantizers (call_module nodes of a
    prepared graph) are walked through too, else they end the walk.
    """
    allowed = ("call_function", "call_module") if through_observers else ("call_function",)
    current = bn.args[0] if bn.args else None
    for _ in range(8):
        if not isinstance(current, Node) or current.op not in allowed:
            return None
        if (
            current.op == "call_function"
            and readable_op(current) in CONV_OPS
            and (exported_id is None or node_source(current).graph_id == exported_id)
        ):
            return current
        current = current.args[0] if current.args else None
    return None
