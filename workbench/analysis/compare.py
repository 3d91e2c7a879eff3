"""After convert: where the int8 model differs from float, per node, for charts and the graph.

- `compare` measures the converted model against float: quality on the evaluation split
  and per-node SQNR (numeric.per_node_sqnr) on one evaluation batch; after QAT, against the
  float graph carrying the trained weights, so the SQNR is the quantization error alone.
- `own_sqnr` estimates each node's own share of the accumulated error.
- `activation_grid` pairs a node's float activations with the int8 grid its output is
  quantized on (the quantize op that follows it in the converted graph).
- `weight_channels` reads a conv/linear's int8 weight back per output channel: the range the
  dequantized weight covers and the range its grid could represent.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
from torch.fx import GraphModule, Node

from workbench.analysis.sqnr import NodeError, per_node_sqnr, record_outputs
from workbench.data.datasets import DataError, Dataset
from workbench.graph.view import GraphView, op_family, readable_op
from workbench.model.signature import ModelInputs
from workbench.stages.steps import evaluate

SQNR_BATCH = 256


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
    the trained weights, `pipeline.trained_float`), else with `float_gm`.
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
    if not isinstance(quantize, Node) or readable_op(quantize) != "quantize_per_tensor":
        return None
    scale, zero_point, qmin, qmax, dtype = (_constant(a) for a in quantize.args[1:6])
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
    weight = _constant(dequantize.args[0])
    per_channel = readable_op(dequantize) == "dequantize_per_channel"
    if per_channel:
        scales, zero_points, axis, qmin, qmax = (_constant(a) for a in dequantize.args[1:6])
        scale = scales.double()
        zero_point = zero_points.double()
        rows = weight.movedim(int(axis), 0).reshape(weight.shape[int(axis)], -1).double()
    else:  # one scale shared by every output channel (axis 0 for conv and linear weights)
        s, z, qmin, qmax = (_constant(a) for a in dequantize.args[1:5])
        channels = int(weight.shape[0]) if weight.dim() else 1
        scale = torch.full((channels,), float(s), dtype=torch.float64)
        zero_point = torch.full((channels,), float(z), dtype=torch.float64)
        rows = weight.reshape(channels, -1).double()
    values = (rows - zero_point[:, None]) * scale[:, None]
    return WeightChannels(
        node, values.amin(dim=1), values.amax(dim=1), (qmin - zero_point) * scale,
        (qmax - zero_point) * scale, scale, per_channel,
    )  # fmt: skip


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
    if op_family(node) not in ("conv", "linear") or not readable_op(weight).startswith(
        "dequantize_per"
    ):
        return None
    stored = weight.args[0]
    return weight if isinstance(stored, Node) and stored.op == "get_attr" else None


def _constant(value: object) -> object:
    """A node argument as a value: get_attr nodes are read from their module."""
    if isinstance(value, Node) and value.op == "get_attr":
        owner = value.graph.owning_module
        assert owner is not None
        target = owner
        for part in str(value.target).split("."):
            target = getattr(target, part)
        return target
    return value
