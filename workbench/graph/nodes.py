"""What one FX node of a PT2E graph is: its op name, q/dq and batch_norm ops, get_attr values.

Every stage (exported, prepared, converted) is an ATen graph, so an op is told by its
readable name (`conv2d` for `aten.conv2d.default`): that name, the op-name sets and the
predicates on them live here, once, for the graph view, the analyses and the quantizer.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
from torch.fx import GraphModule, Node

__all__ = [
    "CONV_OPS",
    "DEQUANTIZE_PER_CHANNEL",
    "DEQUANTIZE_PER_TENSOR",
    "QDQ_OPS",
    "QUANTIZE_PER_CHANNEL",
    "QUANTIZE_PER_TENSOR",
    "QUANT_OPS",
    "argument_value",
    "bn_output",
    "call_arguments",
    "get_attr_value",
    "is_batch_norm",
    "is_batch_norm_op",
    "is_dequantize",
    "is_get_attr",
    "is_per_channel",
    "is_qdq",
    "is_quantize",
    "is_tensor_op",
    "param_owner",
    "qdq_dtype",
    "qdq_scheme",
    "readable_op",
]

CONV_OPS = ("conv1d", "conv2d", "conv3d", "convolution", "conv_transpose1d", "conv_transpose2d",
            "conv_transpose3d", "_convolution")  # fmt: skip

# The quantize/dequantize ops convert_pt2e inserts for static quantization.
QUANTIZE_PER_TENSOR = "quantize_per_tensor"
DEQUANTIZE_PER_TENSOR = "dequantize_per_tensor"
QUANTIZE_PER_CHANNEL = "quantize_per_channel"
DEQUANTIZE_PER_CHANNEL = "dequantize_per_channel"
QDQ_OPS = (QUANTIZE_PER_TENSOR, DEQUANTIZE_PER_TENSOR, QUANTIZE_PER_CHANNEL,
           DEQUANTIZE_PER_CHANNEL)  # fmt: skip
# Every op name of the "quant" family: the static q/dq ops, dynamic and affine quantization.
QUANT_OPS = (*QDQ_OPS, "choose_qparams", "quantize_affine", "dequantize_affine",
             "fake_quantize_per_tensor_affine", "fake_quantize_per_channel_affine")  # fmt: skip


def readable_op(node: Node, gm: GraphModule | None = None) -> str:
    """A short op name: `conv2d` for aten.conv2d.default, the class name for a call_module."""
    if node.op == "placeholder":
        return "input"
    if node.op == "output":
        return "output"
    if node.op == "get_attr":
        return "param"
    if node.op == "call_module":
        if gm is not None:
            try:
                return type(gm.get_submodule(str(node.target))).__name__
            except AttributeError:
                pass
        return str(node.target)
    target = node.target
    if target is operator.getitem:
        return "getitem"
    if isinstance(target, torch._ops.OpOverload):
        return target._schema.name.split("::")[-1]
    if isinstance(target, torch._ops.OpOverloadPacket):
        return target._qualified_op_name.split("::")[-1]
    return getattr(target, "__name__", str(target))


def is_qdq(node: Node) -> bool:
    """A quantize, dequantize or choose_qparams call (any `quantized_decomposed` op)."""
    if node.op != "call_function":
        return False
    target = node.target
    if isinstance(target, torch._ops.OpOverload) and target.namespace == "quantized_decomposed":
        return True
    name = readable_op(node)
    return "quantize" in name or "choose_qparams" in name


def is_quantize(node: Node) -> bool:
    return is_qdq(node) and readable_op(node).startswith("quantize")


def is_dequantize(node: Node) -> bool:
    return is_qdq(node) and readable_op(node).startswith("dequantize")


def is_per_channel(node: Node) -> bool:
    """A q/dq op with one scale per channel (`dequantize_per_channel`, say)."""
    return "per_channel" in readable_op(node)


def qdq_dtype(node: Node) -> str:
    """The integer dtype a q/dq node quantizes to, without `torch.` (`int8`, `uint8`)."""
    return str(call_arguments(node).get("dtype", "")).removeprefix("torch.")


def qdq_scheme(node: Node) -> str:
    """The dtype and granularity of a q/dq node: `int8 per-channel`, `uint8 per-tensor`."""
    granularity = "per-channel" if is_per_channel(node) else "per-tensor"
    return f"{qdq_dtype(node)} {granularity}".strip()


def is_tensor_op(node: Node) -> bool:
    """A call that computes a tensor of the model: not a getitem, not a q/dq op."""
    return node.op == "call_function" and node.target is not operator.getitem and not is_qdq(node)


def is_batch_norm_op(op_name: str) -> bool:
    """Any batch_norm variant by readable op name (`_native_batch_norm_legit_no_training`)."""
    return "batch_norm" in op_name


def is_batch_norm(node: Node) -> bool:
    return node.op == "call_function" and is_batch_norm_op(readable_op(node))


def bn_output(bn: Node) -> Node:
    """The node holding a batch_norm's normalised tensor (getitem 0 for the tuple variants)."""
    for user in bn.users:
        if user.target is operator.getitem and user.args[1] == 0:
            return user
    return bn


def is_get_attr(value: Any) -> bool:
    return isinstance(value, Node) and value.op == "get_attr"


def get_attr_value(gm: torch.nn.Module, node: Node) -> Any:
    """The parameter, buffer, constant or module that `node`'s target names in `gm`."""
    return operator.attrgetter(str(node.target))(gm)


def argument_value(gm: torch.nn.Module, value: Any) -> Any:
    """A node argument as a value: a get_attr node is read from `gm`, anything else is kept."""
    return get_attr_value(gm, value) if is_get_attr(value) else value


def param_owner(value: Any) -> str:
    """The module that owns a get_attr's tensor (`stem.bn` for `stem.bn.weight`), else ""."""
    return str(value.target).rpartition(".")[0] if is_get_attr(value) else ""


def call_arguments(
    node: Node, args: Any = None, kwargs: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A call's arguments by the op schema's names (weight, running_var, eps, scale, dtype...).

    `args` and `kwargs` replace the node's own (values read in their place, say).
    """
    args = node.args if args is None else args
    kwargs = dict(node.kwargs) if kwargs is None else kwargs
    schema = getattr(node.target, "_schema", None)
    names = [a.name for a in schema.arguments] if schema is not None else []
    return {**dict(zip(names, args, strict=False)), **kwargs}
