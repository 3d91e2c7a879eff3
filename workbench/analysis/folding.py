"""How closely each converted conv's int weight and bias match the analytic conv-BN fold.

For a conv followed by a batch_norm (gamma, beta, running mean, running var, eps), folding
gives, per output channel c, with f_c = gamma_c / sqrt(var_c + eps):

    w_fold[c] = w[c] * f_c                      b_fold[c] = (b_c - mean_c) * f_c + beta_c

(b = 0 for a conv without bias). convert stores round(w_fold / s) + zp clamped to
[quant_min, quant_max] and dequantizes it as s * (q - zp), so:

- A folded weight inside the representable range [s (quant_min - zp), s (quant_max - zp)]
  is off by at most s/2 (round to nearest).
- A folded weight outside it is clamped: off by its distance d to the range. This happens
  in QAT, where the fake quantizer's moving-average range lags weights and BN statistics
  that kept changing after it last observed them; `clipped` counts those weights.

The bound per channel is max(s/2, largest d) + tol, with tol = 2**-16 * max |w_fold| for
float32 arithmetic (torchao folds in float32, this reference in float64). A kept-float conv
whose BN was folded (PTQ folds before annotating) has s = 0: its bound is tol.

Which BN parameters to fold with: the ones convert folded, i.e. those of the stage that was
converted. PTQ folds the exported model's running statistics (prepare_pt2e fuses conv-bn
first, calibration leaves BN alone): pass the exported graph. QAT folds the prepared model's
BN parameters and running statistics as training left them: pass the trained stage (QAT
updates them in place, so the exported graph's values are stale).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch.fx import GraphModule, Node
from torch.fx.node import map_arg
from torchao.quantization.pt2e import disable_observer

from workbench.analysis.sqnr import record_outputs
from workbench.graph.nodes import (
    bn_output,
    call_arguments,
    get_attr_value,
    is_batch_norm,
    is_dequantize,
    is_get_attr,
    param_owner,
    qdq_scheme,
    readable_op,
)
from workbench.graph.provenance import conv_before, exported_graph_id, node_source
from workbench.graph.view import op_family
from workbench.model.signature import ModelInputs

__all__ = ["FoldReport", "fold_reports"]

_TOLERANCE = 2.0**-16


@dataclass(frozen=True)
class FoldReport:
    """The fold of one conv's batch_norm: converted weight and bias against the analytic fold.

    `conv` is the conv's exported name; `bn` the batch_norm's exported name where its
    provenance still says it (QAT's train/eval switch re-creates batch_norm nodes from a
    pattern graph), else its name in the graph the fold was computed from.
    """

    conv: str
    bn: str
    bn_module: str
    converted_conv: str
    max_weight_error: float
    bound: float
    bias_max_error: float
    output_max_error: float
    worst_ratio: float  # max over channels of error / bound; <= 1 when every channel holds
    clipped: int
    channels: int
    scheme: str  # e.g. "int8 per-channel", "float"
    max_scale: float

    @property
    def within_bound(self) -> bool:
        """Every output channel's largest weight error is within that channel's bound."""
        return self.worst_ratio <= 1.0


def fold_reports(
    source: GraphModule, converted: GraphModule, inputs: ModelInputs
) -> list[FoldReport]:
    """One report per conv whose batch_norm `source` has and `converted` folded away.

    `source` is the stage whose BN parameters were folded: the exported graph for PTQ, the
    trained (or prepared) graph for QAT. `inputs` is a sample batch for the output check,
    which compares the float conv+BN output (fake-quantized, in QAT) with the converted
    conv's output; a prepared QAT graph still normalises with batch statistics there, the
    trained stage (moved to eval) with running ones. Neither graph module is changed.
    """
    source_id = exported_graph_id(source)
    converted_id = exported_graph_id(converted)
    converted_convs: dict[str, list[Node]] = {}
    for node in converted.graph.nodes:
        root = node_source(node)
        if (
            root.graph_id == converted_id
            and node.op == "call_function"
            and op_family(node) == "conv"
        ):
            converted_convs.setdefault(root.name, []).append(node)
    kept_bn = {str(n.args[1].target) for n in converted.graph.nodes
               if is_batch_norm(n) and len(n.args) > 1 and is_get_attr(n.args[1])}  # fmt: skip

    pairs: list[tuple[Node, Node, Node]] = []
    for bn in source.graph.nodes:
        if not is_batch_norm(bn):
            continue
        conv = conv_before(bn, through_observers=True)
        bn_args = call_arguments(bn)
        weight = bn_args.get("weight")
        if conv is None or (is_get_attr(weight) and str(weight.target) in kept_bn):
            continue
        candidates = converted_convs.get(node_source(conv).name, [])
        if candidates:
            pairs.append((bn, conv, candidates[-1]))
    if not pairs:
        return []

    source_values = record_outputs(_without_observers(source), inputs)
    converted_values = record_outputs(converted, inputs)
    reports = []
    for bn, conv, converted_conv in pairs:
        report = _report(source, converted, bn, conv, converted_conv, source_id)
        reference = source_values.get(bn_output(bn).name)
        output = converted_values.get(converted_conv.name)
        error = math.nan
        if isinstance(reference, torch.Tensor) and isinstance(output, torch.Tensor):
            error = float((reference.double() - output.double()).abs().max())
        reports.append(dataclasses.replace(report, output_max_error=error))
    return reports


def _report(
    source: GraphModule,
    converted: GraphModule,
    bn: Node,
    conv: Node,
    converted_conv: Node,
    source_id: int,
) -> FoldReport:
    bn_args = call_arguments(bn)
    weight = _tensor(source, _param_behind(conv.args[1])).double()
    channels = weight.shape[0]
    gamma = _optional(source, bn_args.get("weight"), torch.ones(channels))
    beta = _optional(source, bn_args.get("bias"), torch.zeros(channels))
    mean = _optional(source, bn_args.get("running_mean"), torch.zeros(channels))
    var = _optional(source, bn_args.get("running_var"), torch.ones(channels))
    eps = float(bn_args.get("eps", 1e-5))
    bias = _conv_bias(source, conv, bn)
    factor = gamma / torch.sqrt(var + eps)
    shape = (-1,) + (1,) * (weight.dim() - 1)
    w_fold = weight * factor.reshape(shape)
    b_fold = ((bias if bias is not None else torch.zeros(channels).double()) - mean) * factor
    b_fold = b_fold + beta

    quant = _converted_weight(converted, converted_conv.args[1], channels)
    w_conv = quant.weight.double()
    per_channel = (w_conv - w_fold).abs().reshape(channels, -1).amax(1)
    scale = quant.scale.reshape(shape)
    low = scale * (quant.quant_min - quant.zero_point.reshape(shape))
    high = scale * (quant.quant_max - quant.zero_point.reshape(shape))
    outside = torch.clamp(torch.maximum(low - w_fold, w_fold - high), min=0.0)
    if not quant.quantized:
        outside = torch.zeros_like(w_fold)
    tol = _TOLERANCE * w_fold.abs().reshape(channels, -1).amax(1) + 1e-12
    half = quant.scale / 2
    bounds = torch.maximum(half, outside.reshape(channels, -1).amax(1)) + tol
    clipped = int((outside > (half + tol).reshape(shape)).sum()) if quant.quantized else 0

    converted_bias = converted_conv.args[2] if len(converted_conv.args) > 2 else None
    b_conv = (
        _tensor(converted, converted_bias).double()
        if is_get_attr(converted_bias)
        else torch.zeros(channels).double()
    )
    bn_source = node_source(bn)
    return FoldReport(
        conv=node_source(conv).name,
        bn=bn_source.name if bn_source.graph_id == source_id else bn.name,
        bn_module=param_owner(bn_args.get("weight")),
        converted_conv=converted_conv.name,
        max_weight_error=float(per_channel.max()),
        bound=float(bounds.max()),
        bias_max_error=float((b_conv - b_fold).abs().max()),
        output_max_error=math.nan,
        worst_ratio=float((per_channel / bounds).max()),
        clipped=clipped,
        channels=channels,
        scheme=quant.scheme,
        max_scale=float(quant.scale.max()),
    )


@dataclass(frozen=True)
class _ConvertedWeight:
    """The converted conv's weight as it computes with it, and how it was quantized."""

    weight: torch.Tensor
    scale: torch.Tensor  # per output channel, float64; zeros for a float weight
    zero_point: torch.Tensor
    quant_min: int
    quant_max: int
    scheme: str

    @property
    def quantized(self) -> bool:
        return self.scheme != "float"


def _converted_weight(gm: GraphModule, node: Any, channels: int) -> _ConvertedWeight:
    zeros = torch.zeros(channels, dtype=torch.float64)
    if isinstance(node, Node) and is_dequantize(node):
        args = map_arg(node.args, lambda n: _tensor(gm, n))
        kwargs = map_arg(dict(node.kwargs), lambda n: _tensor(gm, n))
        weight = node.target(*args, **kwargs)  # type: ignore[operator]
        params = call_arguments(node, args, kwargs)
        scale = _per_channel(params.get("scales", params.get("scale")), channels)
        zero_point = _per_channel(params.get("zero_points", params.get("zero_point")), channels)
        return _ConvertedWeight(
            weight, scale, zero_point, int(params["quant_min"]), int(params["quant_max"]),
            qdq_scheme(node),
        )  # fmt: skip
    return _ConvertedWeight(_tensor(gm, _param_behind(node)), zeros, zeros, 0, 0, "float")


def _per_channel(value: Any, channels: int) -> torch.Tensor:
    tensor = torch.as_tensor(value, dtype=torch.float64).flatten()
    return tensor.expand(channels).clone() if tensor.numel() == 1 else tensor


def _conv_bias(gm: GraphModule, conv: Node, bn: Node) -> torch.Tensor | None:
    """The conv's own bias: its bias argument, or the bias QAT's fusion adds after the conv."""
    bias = conv.args[2] if len(conv.args) > 2 else None
    if is_get_attr(bias):
        return _tensor(gm, bias).double()
    current = bn.args[0]
    while isinstance(current, Node) and current is not conv:
        if readable_op(current) == "add" and len(current.args) > 1:
            param = _param_behind(current.args[1], strict=False)
            if param is not None:
                return _tensor(gm, param).double().flatten()
        current = current.args[0] if current.args else None
    return None


def _param_behind(node: Any, *, strict: bool = True) -> Node | None:
    """The get_attr a weight comes from, through observers, q/dq and scaling helpers."""
    current = node
    for _ in range(8):
        if is_get_attr(current):
            return current
        if not isinstance(current, Node) or not current.args:
            break
        current = current.args[0]
    if strict:
        raise ValueError(f"no parameter found behind {node}")
    return None


def _optional(gm: GraphModule, node: Any, default: torch.Tensor) -> torch.Tensor:
    return _tensor(gm, node).double() if is_get_attr(node) else default.double()


def _tensor(gm: GraphModule, node: Any) -> Any:
    """A get_attr's tensor, detached (folding reads weights, it does not train them)."""
    return get_attr_value(gm, node).detach() if is_get_attr(node) else node


def _without_observers(gm: GraphModule) -> GraphModule:
    """`gm`, or a copy with observers off when it has any (they update on every call)."""
    if not any(n.op == "call_module" for n in gm.graph.nodes):
        return gm
    model = copy.deepcopy(gm)
    model.apply(disable_observer)
    return model
