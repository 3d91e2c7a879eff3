"""After convert: where the int8 model differs from float, per node, for charts and the graph.

- `compare` measures the converted model against float: quality on the evaluation split
  and per-node SQNR (`workbench.analysis.sqnr.per_node_sqnr`) on one evaluation batch;
  after QAT, against the float graph carrying the trained weights, so the SQNR is the
  quantization error alone.
- `activation_grid` pairs a node's float activations with the int8 grid its output is
  quantized on (the quantize op that follows it in the converted graph).
- `weight_channels` reads a conv/linear's int8 weight back per output channel: the range the
  dequantized weight covers and the range its grid could represent.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch.fx import GraphModule, Node

from workbench.analysis.sqnr import NodeError, per_node_sqnr, record_outputs
from workbench.data.datasets import DataError, Dataset
from workbench.graph.nodes import (
    DEQUANTIZE_PER_CHANNEL,
    DEQUANTIZE_PER_TENSOR,
    QUANTIZE_PER_TENSOR,
    argument_value,
    is_get_attr,
    is_quantize,
    readable_op,
)
from workbench.graph.view import op_family
from workbench.model.signature import ModelInputs
from workbench.stages.steps import evaluate, run

__all__ = [
    "SQNR_BATCH",
    "ActivationGrid",
    "Comparison",
    "FormsGap",
    "WeightChannels",
    "activation_grid",
    "compare",
    "forms_gap",
    "weight_channels",
    "weight_nodes",
    "worst_first",
]

SQNR_BATCH = 256  # samples of the evaluation batch per-node SQNR is measured on


@dataclass(frozen=True)
class Comparison:
    """A converted model against its float export: quality and per-node error."""

    metric: str  # accuracy | agreement | mse
    float_quality: float
    int8_quality: float
    errors: tuple[NodeError, ...]
    inputs: ModelInputs  # the evaluation batch the errors were measured on
    reference: str  # what the errors compare with: "float model" or "float model after QAT"
    reference_module: GraphModule = field(repr=False)  # that model


def compare(
    float_gm: GraphModule,
    converted_gm: GraphModule,
    data: Dataset,
    *,
    reference_gm: GraphModule | None = None,
) -> Comparison:
    """Quality of both models on the evaluation split; per-node SQNR on its first batch.

    Agreement is measured against `float_gm`, so the float model's own agreement is 100 %.
    Per-node errors compare with `reference_gm` when given (after QAT: the float graph with
    the trained weights, `workbench.stages.stage.trained_float`), else with `float_gm`.
    """
    first = next(iter(data.eval_batches(SQNR_BATCH)), None)
    if first is None:
        raise DataError(f"The {data.spec} data has no evaluation batches.",
                        "Give data with an evaluation split (see README, data).")  # fmt: skip
    inputs = first.inputs.take(min(first.size, SQNR_BATCH))
    reference = float_gm if reference_gm is None else reference_gm
    return Comparison(
        data.quality,
        evaluate(float_gm, data, teacher=float_gm),
        evaluate(converted_gm, data, teacher=float_gm),
        tuple(per_node_sqnr(reference, converted_gm, inputs)),
        inputs,
        "float model" if reference_gm is None else "float model after QAT",
        reference,
    )


@dataclass(frozen=True)
class ActivationGrid:
    """Float activations of one node and the int grid its converted output is quantized on."""

    node: str  # the exported node
    reference: str  # the float node whose output was recorded (the BN output for a folded conv)
    values: torch.Tensor
    scale: float
    zero_point: int
    qmin: int
    qmax: int
    dtype: torch.dtype

    @property
    def clipped_fraction(self) -> float:
        """Share of the float values outside the grid's representable range."""
        low = (self.qmin - self.zero_point) * self.scale
        high = (self.qmax - self.zero_point) * self.scale
        flat = self.values.flatten()
        if flat.numel() == 0:
            return 0.0
        return float(((flat < low) | (flat > high)).sum()) / flat.numel()


def activation_grid(
    float_gm: GraphModule,  # the model the NodeError was measured against
    converted_gm: GraphModule,
    error: NodeError,
    inputs: ModelInputs,
) -> ActivationGrid | None:
    """The float activations behind `error` and the per-tensor grid of its output.

    None when the converted node's output is not quantized per tensor (a node kept float,
    or an output quantized only downstream).
    """
    if not error.quantized:
        return None
    dequantize = _node(converted_gm, error.compared)
    quantize = dequantize.args[0]
    if not isinstance(quantize, Node) or readable_op(quantize) != QUANTIZE_PER_TENSOR:
        return None
    scale, zero_point, qmin, qmax, dtype = (
        argument_value(converted_gm, a) for a in quantize.args[1:6]
    )
    values = record_outputs(float_gm, inputs)[error.reference]
    return ActivationGrid(
        error.exported, error.reference, values.detach(), float(scale), int(zero_point),
        int(qmin), int(qmax), dtype,
    )  # fmt: skip


@dataclass(frozen=True)
class WeightChannels:
    """Per output channel of a converted conv/linear weight: what it covers and could cover."""

    node: str  # the converted conv/linear node
    low: torch.Tensor  # smallest dequantized weight per channel
    high: torch.Tensor  # largest dequantized weight per channel
    grid_low: torch.Tensor  # (qmin - zero_point) * scale per channel
    grid_high: torch.Tensor  # (qmax - zero_point) * scale per channel
    scale: torch.Tensor
    per_channel: bool


def weight_nodes(converted_gm: GraphModule) -> list[str]:
    """Converted nodes whose weight (argument 1) arrives through a dequantize op."""
    return [n.name for n in converted_gm.graph.nodes if _weight_dequantize(n) is not None]


def weight_channels(converted_gm: GraphModule, node: str) -> WeightChannels:
    """Read the int weight of converted `node` back, channel by channel (axis of its scales)."""
    dequantize = _weight_dequantize(_node(converted_gm, node))
    if dequantize is None:
        raise ValueError(f"{node} has no quantized weight")
    weight = argument_value(converted_gm, dequantize.args[0])
    per_channel = readable_op(dequantize) == DEQUANTIZE_PER_CHANNEL
    if per_channel:
        scales, zero_points, axis, qmin, qmax = (
            argument_value(converted_gm, a) for a in dequantize.args[1:6]
        )
        scale = scales.double()
        zero_point = zero_points.double()
        rows = weight.movedim(int(axis), 0).reshape(weight.shape[int(axis)], -1).double()
    else:  # one scale shared by every output channel (axis 0 for conv and linear weights)
        s, z, qmin, qmax = (argument_value(converted_gm, a) for a in dequantize.args[1:5])
        channels = int(weight.shape[0]) if weight.dim() else 1
        scale = torch.full((channels,), float(s), dtype=torch.float64)
        zero_point = torch.full((channels,), float(z), dtype=torch.float64)
        rows = weight.reshape(channels, -1).double()
    values = (rows - zero_point[:, None]) * scale[:, None]
    return WeightChannels(
        node, values.amin(dim=1), values.amax(dim=1), (qmin - zero_point) * scale,
        (qmax - zero_point) * scale, scale, per_channel,
    )  # fmt: skip


@dataclass(frozen=True)
class FormsGap:
    """The reference representation against the q/dq form of the same tuned model, on the
    prediction over evaluation batches."""

    max_abs_diff: float
    sqnr_db: float  # the q/dq form as signal
    agreement: float  # % of samples whose top-1 prediction is the same
    samples: int
    output_step: float | None  # scale of the q/dq form's last quantize: one output grid step

    def as_dict(self) -> dict[str, float | int | None]:
        steps = None if not self.output_step else self.max_abs_diff / self.output_step
        return {
            "max_abs_diff": self.max_abs_diff,
            "sqnr_db": self.sqnr_db if math.isfinite(self.sqnr_db) else None,
            "agreement": self.agreement,
            "samples": self.samples,
            "output_step": self.output_step,
            "max_abs_diff_in_output_steps": steps,
        }


def forms_gap(
    reference_gm: GraphModule, qdq_gm: GraphModule, data: Dataset, *, batches: int = 4
) -> FormsGap:
    """Compare the two forms on up to `batches` evaluation batches of 256.

    The reference representation computes the same int8 arithmetic with integer ops and
    its own rounding, so a value may land one grid step away at a requantize; at the output
    that shows as whole steps of its grid (2 on the digits CNN and an HF ResNet), and the
    predictions agree.
    """
    worst, agree, count = 0.0, 0, 0
    signal = noise = 0.0
    for i, batch in enumerate(data.eval_batches(256)):
        if i >= batches:
            break
        want = run(qdq_gm, batch.inputs, data.task).float()
        got = run(reference_gm, batch.inputs, data.task).float()
        worst = max(worst, float((want - got).abs().max()))
        signal += float(want.pow(2).sum())
        noise += float((want - got).pow(2).sum())
        if want.ndim >= 1 and want.shape[-1] > 1:
            agree += int((want.argmax(-1) == got.argmax(-1)).sum())
            count += int(want.argmax(-1).numel())
    quantizes = [n for n in qdq_gm.graph.nodes if is_quantize(n)]
    step = float(quantizes[-1].args[1]) if quantizes and isinstance(
        quantizes[-1].args[1], float) else None  # fmt: skip
    sqnr_db = math.inf if noise == 0 else 10 * math.log10(signal / noise) if signal else -math.inf
    return FormsGap(worst, sqnr_db, 100.0 * agree / count if count else 100.0, count, step)


def worst_first(errors: Sequence[NodeError]) -> list[NodeError]:
    """Errors sorted by SQNR, lowest first (exact matches last)."""
    return sorted(errors, key=lambda e: e.sqnr_db)


def _node(gm: GraphModule, name: str) -> Node:
    for node in gm.graph.nodes:
        if node.name == name:
            return node
    raise ValueError(f"no node {name} in the graph")


def _weight_dequantize(node: Node) -> Node | None:
    if node.op != "call_function" or len(node.args) < 2 or not isinstance(node.args[1], Node):
        return None
    weight = node.args[1]
    if op_family(node) not in ("conv", "linear") or readable_op(weight) not in (
        DEQUANTIZE_PER_TENSOR,
        DEQUANTIZE_PER_CHANNEL,
    ):
        return None
    return weight if is_get_attr(weight.args[0]) else None
