"""Per-node numeric error of a converted (q/dq reference) model against its float export.

Both graphs run on the same inputs under a recording `torch.fx.Interpreter`; every op node of
the converted graph is paired with the exported node it descends from and the two outputs are
compared (SQNR in dB and the largest absolute difference).

Matching rule (measured on torch 2.13 + torchao 0.18, PTQ and QAT flows):

- Each node's root is its `workbench.graph.provenance.node_source`: the end of its
  `meta["from_node"]` chain, a (name, graph_id) pair; a node without `from_node` is its own
  root, (name, id(its graph)).
- The *exported graph id* of a GraphModule is the root graph_id of its placeholders
  (`exported_graph_id`): a float model from another capture of the same model has another
  id, so each side is keyed by its own.
- A converted node belongs to exported node N when its root is (N's root name, converted
  exported graph id). Examples, PTQ: converted `conv2d_1` -> ("conv2d_1", E); QAT: prepare
  renames conv2d_1 to conv2d_5 and convert to conv2d_8, whose root is still ("conv2d_1", E).
  Nodes torchao inserts from its pattern graphs (QAT's add/sqrt/div/reshape and batch_norm,
  left in place when a BN is not folded) have roots such as ("add", P) or ("res", P), with
  P the id of a pattern graph: their names can collide with user nodes, so graph ids are
  compared too. q/dq nodes (their roots are observers or the op they quantize) and getitem
  nodes are never reported; neither is a node whose exported partner is not an op or
  produced a tensor of another shape.
- Several converted nodes with one root: the one with the exported node's op wins, then the
  last in graph order.

BN-aware pairing: when the exported op's only user is a batch_norm that has no converted
counterpart and no batch_norm follows the converted op through pattern nodes, the BN was
folded into the op's weights, so the reference is the float batch_norm output
(`bn_folded=True`). Comparing with the pre-BN output would be meaningless (~2 dB). When a
QAT convert left the BN unfolded (its conv was kept float), the converted conv computes with
BN-scaled weights and pattern nodes divide the scale back out: the last of those pattern
nodes is compared with the float conv, and the pattern batch_norm with the float one.

The compared output is the dequantize that follows the op's own quantize when there is one
(`quantized=True`), else the op's own output.

`sqnr_by_node` keeps the worst error per exported node; `own_sqnr` estimates each node's own
share of the error accumulated up to it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch.fx import GraphModule, Interpreter, Node

from workbench.graph.nodes import (
    bn_output,
    is_batch_norm,
    is_dequantize,
    is_qdq,
    is_quantize,
    is_tensor_op,
)
from workbench.graph.provenance import exported_graph_id, node_source
from workbench.graph.view import GraphView, op_family
from workbench.locks import EXPORT_LOCK
from workbench.model.signature import ModelInputs

__all__ = [
    "NodeError",
    "badness",
    "own_sqnr",
    "per_node_sqnr",
    "record_outputs",
    "sqnr",
    "sqnr_by_node",
]


@dataclass(frozen=True)
class NodeError:
    """Numeric error of one op of the converted graph against its float reference."""

    node: str
    exported: str
    reference: str
    compared: str
    sqnr_db: float
    max_abs_error: float
    bn_folded: bool
    quantized: bool


class _Recorder(Interpreter):
    """Runs a GraphModule and keeps every node's output."""

    def __init__(self, gm: GraphModule) -> None:
        super().__init__(gm, garbage_collect_values=True)
        self.values: dict[str, Any] = {}

    def run_node(self, n: Node) -> Any:
        out = super().run_node(n)
        self.values[n.name] = out.detach().clone() if isinstance(out, torch.Tensor) else out
        return out


def record_outputs(gm: GraphModule, inputs: ModelInputs) -> dict[str, Any]:
    """Run `gm` on `inputs` (no grad, mode untouched) and return every node's output by name."""
    recorder = _Recorder(gm)
    with torch.no_grad(), EXPORT_LOCK:  # results do not depend on other work (locks.py)
        recorder.run(*ModelInputs.of(inputs).placeholders(gm))
    return recorder.values


def sqnr(reference: torch.Tensor, actual: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio in dB of `actual` against `reference`; inf if equal."""
    ref = reference.detach().double()
    noise = float(((ref - actual.detach().double()) ** 2).sum())
    signal = float((ref**2).sum())
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def per_node_sqnr(
    float_gm: GraphModule, converted_gm: GraphModule, inputs: ModelInputs
) -> list[NodeError]:
    """Pair each op of `converted_gm` with its float node and measure the error, graph order.

    See the module docstring for how nodes are paired and which outputs are compared.
    """
    float_values = record_outputs(float_gm, inputs)
    converted_values = record_outputs(converted_gm, inputs)
    float_id = exported_graph_id(float_gm)
    converted_id = exported_graph_id(converted_gm)

    float_by_root: dict[str, Node] = {}
    for node in float_gm.graph.nodes:
        source = node_source(node)
        if node.op == "call_function" and source.graph_id == float_id:
            float_by_root[source.name] = node

    candidates: dict[str, list[Node]] = {}
    for node in converted_gm.graph.nodes:
        source = node_source(node)
        if (
            source.graph_id != converted_id
            or source.name not in float_by_root
            or not is_tensor_op(node)
        ):
            continue
        candidates.setdefault(source.name, []).append(node)
    matched = {root: _pick(nodes, float_by_root[root]) for root, nodes in candidates.items()}

    errors: list[NodeError] = []
    order = {n: i for i, n in enumerate(converted_gm.graph.nodes)}
    pairs: list[tuple[Node, Node, Node, Node, bool]] = []
    for root, op_node in matched.items():
        float_node = float_by_root[root]
        reference, compared, folded = float_node, _compared(op_node), False
        bn = _only_batch_norm_user(float_node)
        if bn is not None and node_source(bn).name not in matched:
            pattern_bn, before_bn = _pattern_batch_norm(op_node, converted_id)
            if pattern_bn is None:
                reference, folded = bn_output(bn), True
            else:
                compared = before_bn
                pairs.append((pattern_bn, bn, bn_output(bn), _compared(pattern_bn), False))
        pairs.append((op_node, float_node, reference, compared, folded))

    for op_node, float_node, reference, compared, folded in sorted(
        pairs, key=lambda p: order[p[0]]
    ):
        ref = float_values.get(reference.name)
        out = converted_values.get(compared.name)
        if not (isinstance(ref, torch.Tensor) and isinstance(out, torch.Tensor)):
            continue
        if ref.shape != out.shape or not out.is_floating_point():
            continue
        diff = (ref.double() - out.double()).abs()
        errors.append(
            NodeError(
                node=op_node.name,
                exported=float_node.name,
                reference=reference.name,
                compared=compared.name,
                sqnr_db=sqnr(ref, out),
                max_abs_error=float(diff.max()) if diff.numel() else 0.0,
                bn_folded=folded,
                quantized=compared is not op_node and is_qdq(compared),
            )
        )
    return errors


def _pick(nodes: list[Node], float_node: Node) -> Node:
    same_op = [n for n in nodes if n.target == float_node.target]
    return (same_op or nodes)[-1]


def _compared(node: Node) -> Node:
    """The dequantize right after the op's own quantize, else the op itself."""
    for user in node.users:
        if is_quantize(user):
            for dq in user.users:
                if is_dequantize(dq):
                    return dq
    return node


def _only_batch_norm_user(node: Node) -> Node | None:
    users = list(node.users)
    if op_family(node) not in ("conv", "linear") or len(users) != 1:
        return None
    return users[0] if is_batch_norm(users[0]) else None


def _pattern_batch_norm(node: Node, exported_id: int) -> tuple[Node | None, Node]:
    """A batch_norm reached from `node` through pattern nodes only, and the node before it."""
    current = node
    seen = 0
    while len(current.users) == 1 and seen < 16:
        user = next(iter(current.users))
        if user.op != "call_function" or is_qdq(user):
            break
        if is_batch_norm(user):
            return user, current
        if node_source(user).graph_id == exported_id:
            break
        current, seen = user, seen + 1
    return None, node


def sqnr_by_node(errors: Iterable[NodeError]) -> dict[str, NodeError]:
    """Each exported node's error; where several converted nodes share one, the worst (NaN
    counts as worst: something is broken there)."""
    worst: dict[str, NodeError] = {}
    for error in errors:
        kept = worst.get(error.exported)
        if kept is None or badness(error.sqnr_db) > badness(kept.sqnr_db):
            worst[error.exported] = error
    return worst


def badness(db: float) -> float:
    """Sort key of an SQNR, worst highest (NaN is worst: something is broken there)."""
    return math.inf if math.isnan(db) else -db


def own_sqnr(view: GraphView, errors: Iterable[NodeError]) -> dict[str, float]:
    """Each measured node's own share of the error, as an SQNR in dB (higher is better).

    A node's SQNR measures the error accumulated up to its output, so every node after a bad
    one looks bad too. Treating quantization noise as additive, the noise a node adds is its
    output's relative noise power less the worst of its inputs':
    own = -10 log10(10^(-out/10) - 10^(-in/10)), +inf when it adds none (a relu or a pool
    often lowers the relative noise). Graph inputs and parameters are exact; an unmeasured
    node (a folded batch_norm) passes its inputs' SQNR on. A layer that amplifies its
    input's noise is charged for it, so this is a ranking aid, not an exact split.
    """
    by_node = {name: e.sqnr_db for name, e in sqnr_by_node(errors).items()}
    memo: dict[str, float] = {}

    def reaching(name: str) -> float:
        """SQNR of the tensor `name` produces (exact for inputs and parameters)."""
        if name in by_node:
            return by_node[name]
        if name not in memo:
            memo[name] = math.inf  # guards cycles; graphs are acyclic
            inputs = view[name].inputs if name in view else ()
            memo[name] = min((reaching(i) for i in inputs), default=math.inf)
        return memo[name]

    own: dict[str, float] = {}
    for name, out in by_node.items():
        inputs = view[name].inputs if name in view else ()
        before = min((reaching(i) for i in inputs), default=math.inf)
        added = _noise(out) - _noise(before)
        own[name] = -10.0 * math.log10(added) if added > 0 else math.inf
    return own


def _noise(db: float) -> float:
    """Relative noise power of an SQNR in dB (0 for exact, inf for NaN)."""
    return math.inf if math.isnan(db) else 10.0 ** (-db / 10.0)
