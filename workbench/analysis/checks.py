"""Checks on a converted model: what the recipe asked for against what the graph does.

Each problem is a `Finding(kind, node, message)`; `node` names the converted graph's node.
Kinds, in the order they are reported:

- `observer_left` (error): an observer or fake-quant module that convert should have
  replaced by quantize/dequantize.
- `unfolded_batch_norm` (warning): a batch_norm still in the graph. QAT leaves it, with
  its fusion helpers, when its conv was kept float (the fold patterns need weight q/dq).
- `runs_in_float` (warning): a node the recipe quantizes (not keep_float) that runs in
  float: a conv/linear whose weight is not dequantized, or another op with no dequantized
  input and no quantized output that does not directly follow a quantized conv/linear
  (the tail of a fused pattern, such as x86's linear+add, is judged with its head). A
  batch_norm is reported as unfolded instead. `effective` lists every node the backend
  annotated, including pattern tails it annotated without quantizing anything.
- `dangling_qdq` (error): a quantize whose users are not all dequantize, or a dequantize
  nothing reads.
- `scale_mismatch` (info): an op that backends run on one shared scale (add, sub, cat,
  stack) whose dequantized inputs have different scales or zero points: one of them is
  requantized first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch.fx import GraphModule, Node

from workbench.graph.nodes import (
    get_attr_value,
    is_batch_norm,
    is_dequantize,
    is_get_attr,
    is_quantize,
    readable_op,
)
from workbench.graph.provenance import conv_before, exported_graph_id, node_source
from workbench.graph.view import HIDDEN_MODULES, GraphView, op_family
from workbench.quantization.recipe import Effective

__all__ = ["KINDS", "SEVERITY", "Finding", "check_converted"]

KINDS = ("observer_left", "unfolded_batch_norm", "runs_in_float", "dangling_qdq",
         "scale_mismatch")  # fmt: skip
SEVERITY: dict[str, str] = {
    "observer_left": "error",
    "unfolded_batch_norm": "warning",
    "runs_in_float": "warning",
    "dangling_qdq": "error",
    "scale_mismatch": "info",
}
_SHARED_SCALE_OPS = frozenset({"add", "add_", "sub", "cat", "concat", "stack"})


@dataclass(frozen=True)
class Finding:
    """One problem found in a converted graph; `node` is the converted node's name."""

    kind: str
    node: str
    message: str

    @property
    def severity(self) -> str:
        return SEVERITY.get(self.kind, "warning")


def check_converted(
    converted: GraphModule, exported_view: GraphView, effective: dict[str, Effective]
) -> list[Finding]:
    """Every finding in `converted`, grouped by kind (KINDS order), each in graph order.

    `exported_view` describes the exported graph the recipe addresses; `effective` is the
    recipe's setting for every node the backend quantizes (`quantizable_nodes`).
    """
    return [
        *_observers_left(converted),
        *_unfolded_batch_norms(converted, exported_view, effective),
        *_runs_in_float(converted, exported_view, effective),
        *_dangling_qdq(converted),
        *_scale_mismatches(converted),
    ]


def _observers_left(gm: GraphModule) -> list[Finding]:
    return [
        Finding("observer_left", n.name,
                f"{n.name} ({_module_type(gm, n)}) is still in the graph: convert replaces "
                "observers and fake quantizers with quantize/dequantize.")
        for n in gm.graph.nodes
        if n.op == "call_module" and n.target not in HIDDEN_MODULES
    ]  # fmt: skip


def _module_type(gm: GraphModule, node: Node) -> str:
    try:
        return type(gm.get_submodule(str(node.target))).__name__
    except AttributeError:
        return "module"


def _unfolded_batch_norms(
    gm: GraphModule, view: GraphView, effective: dict[str, Effective]
) -> list[Finding]:
    exported_bn = {p.target: n.name for n in view.nodes if n.family == "norm" for p in n.params}
    findings = []
    for node in gm.graph.nodes:
        if not is_batch_norm(node):
            continue
        weight = node.args[1] if len(node.args) > 1 else None
        target = str(weight.target) if isinstance(weight, Node) else ""
        exported = exported_bn.get(target, node.name)
        conv = conv_before(node, exported_id=exported_graph_id(gm))
        if conv is None:
            why = "no conv precedes it"
        else:
            conv_name = node_source(conv).name
            eff = effective.get(conv_name)
            reason = f"kept float by {eff.rule}" if eff and eff.setting.keep_float else "float"
            why = (
                f"its conv {conv_name} ({conv.name}) is {reason}, so QAT's fusion helpers and "
                "the batch_norm stay (folding needs the conv's weight quantize/dequantize)"
            )
        findings.append(
            Finding("unfolded_batch_norm", node.name,
                    f"{exported} ({node.name}) was not folded into a conv: {why}.")
        )  # fmt: skip
    return findings


def _runs_in_float(
    gm: GraphModule, view: GraphView, effective: dict[str, Effective]
) -> list[Finding]:
    exported_id = exported_graph_id(gm)
    by_root: dict[str, list[Node]] = {}
    for node in gm.graph.nodes:
        source = node_source(node)
        if (
            node.op == "call_function"
            and source.graph_id == exported_id
            and not (is_quantize(node) or is_dequantize(node))
        ):
            by_root.setdefault(source.name, []).append(node)
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    findings: list[tuple[int, Finding]] = []
    for name, eff in effective.items():
        if eff.setting.keep_float or name not in view:
            continue
        info = view[name]
        candidates = by_root.get(name, [])
        if info.family == "norm" or not candidates:
            continue  # folded away, or reported as an unfolded batch_norm
        same_op = [n for n in candidates if readable_op(n) == info.op_name]
        node = (same_op or candidates)[-1]
        if info.family in ("conv", "linear") and info.params:
            weight = node.args[1] if len(node.args) > 1 else None
            if isinstance(weight, Node) and is_dequantize(weight):
                continue
            shown = weight.name if isinstance(weight, Node) else repr(weight)
            message = (f"{name} ({node.name}) should be quantized ({eff.rule}), but its weight "
                       f"{shown} is float.")  # fmt: skip
        else:
            fed = any(is_dequantize(a) for a in node.all_input_nodes)
            if fed or any(is_quantize(u) for u in node.users) or _fused_behind(node):
                continue
            message = (f"{name} ({node.name}) should be quantized ({eff.rule}), but no "
                       "dequantize feeds it and its output is not quantized.")  # fmt: skip
        findings.append((order[node], Finding("runs_in_float", node.name, message)))
    return [f for _, f in sorted(findings, key=lambda item: item[0])]


def _fused_behind(node: Node) -> bool:
    """Reads a conv/linear with a dequantized weight directly: part of its fused pattern.

    x86 annotates conv+relu and linear+add as one pattern and marks the tail annotated even
    where it quantizes nothing (an add after a linear, say); such a tail is judged with its
    head, not on its own.
    """
    for producer in node.all_input_nodes:
        weight = producer.args[1] if len(producer.args) > 1 else None
        if (
            producer.op == "call_function"
            and op_family(producer) in ("conv", "linear")
            and isinstance(weight, Node)
            and is_dequantize(weight)
        ):
            return True
    return False


def _dangling_qdq(gm: GraphModule) -> list[Finding]:
    findings = []
    for node in gm.graph.nodes:
        if is_quantize(node):
            others = [u.name for u in node.users if not is_dequantize(u)]
            if not node.users or others:
                readers = ", ".join(others) if others else "nothing"
                findings.append(Finding("dangling_qdq", node.name,
                                        f"{node.name} is read by {readers}, not by a "
                                        "dequantize."))  # fmt: skip
        elif is_dequantize(node) and not node.users:
            message = f"{node.name} dequantizes a tensor nothing reads."
            findings.append(Finding("dangling_qdq", node.name, message))
    return findings


def _scale_mismatches(gm: GraphModule) -> list[Finding]:
    findings = []
    for node in gm.graph.nodes:
        if node.op != "call_function" or readable_op(node) not in _SHARED_SCALE_OPS:
            continue
        inputs = [a for a in node.all_input_nodes if is_dequantize(a)]
        params = {a.name: _scale_zero_point(gm, a) for a in inputs}
        if len(inputs) < 2 or len(set(params.values())) < 2:
            continue
        shown = ", ".join(f"{name} scale {s:.6g} zero_point {z}" for name, (s, z) in params.items())
        findings.append(
            Finding("scale_mismatch", node.name,
                    f"info: the inputs of {node.name} have different scales ({shown}); one of "
                    "them is requantized before the op.")
        )  # fmt: skip
    return findings


def _scale_zero_point(gm: GraphModule, dq: Node) -> tuple[float, int]:
    scale, zero_point = (_scalar(gm, a) for a in dq.args[1:3])
    return float(scale), int(zero_point)


def _scalar(gm: GraphModule, arg: Any) -> Any:
    """A scale or zero point as a number: one-element get_attr tensors are read from `gm`."""
    if not is_get_attr(arg):
        return arg
    value = get_attr_value(gm, arg)
    return value.flatten()[0].item() if value.numel() == 1 else float("nan")
