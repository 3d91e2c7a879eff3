"""Per-node values of the .pte as the ExecuTorch runtime computes them, against the converted
model's and the float model's, keyed by the exported graph's node names.

executorch 1.4.1's intermediate-output tap (`executorch.devtools.intermediate_output_tap`)
appends chosen values to the program's outputs as `tap.Tensor` placeholders, which no
partitioner takes, so they leave the XNNPACK delegate as delegate outputs; `strip_taps_`
replaces them with the value itself (FULL_TENSOR) after partitioning, before
`to_executorch`. The tapped program is made as `lower` makes the app's .pte (the same
`program_for` re-export, partitioner and memory planning); only what is tapped differs.

What can be tapped (measured on the digits CNN, xnnpack recipe, 2026-12-01):

- The int8 output of each op's own quantize (the tensor `per_node_sqnr` compares through
  its dequantize). Tapping all nine left the program's own outputs bit-equal to the
  untapped .pte's, with a dynamic batch and in chunks of the planned batch.
- Not the dequantize after it: tapping the dequantize of a quantize with two consumers (a
  residual) failed in the runtime ("Propagating input shapes failed"), another stopped
  XNNPACK's ChannelsLastTaggedReshapePass, and with a dynamic batch the tapped value came
  back at the planned batch instead of the call's.
- Not a float value XNNPACK fuses away (a conv before its relu, an add before its relu):
  the runtime has no such tensor; tapping conv2d and add changed the program's output by
  12.3 and the tapped values were noise (-1.3 dB).

So a node whose output is not quantized has no .pte value (`PteIntermediates.untapped`
says why). The runtime's int8 codes are dequantized with the converted graph's own
dequantize (its scale and zero point) and compared with the converted model's dequantize
output (`sqnr_db`) and with the float reference `per_node_sqnr` pairs it with
(`float_sqnr_db`: for a conv whose BN was folded, the float BN output).

ETDump and the Inspector are no alternative with this wheel: `_load_for_executorch_from_buffer(
..., enable_etdump=True, debug_buffer_size=...)` runs, but `write_etdump_result_to_file`
writes nothing ("No etdump data found, try rebuilding with ... EXECUTORCH_ENABLE_EVENT_TRACER"):
the PyPI runtime is built without the event tracer.

Digits CNN (xnnpack recipe, 128 evaluation images): 9 of 13 exported op nodes get a value
(4 convs/adds are fused into their relu; 4 batch norms are folded), 42.7 to 65.4 dB against
the converted model (1 to 3 int8 steps apart), within 0.05 dB of the converted model's own
SQNR against float; the last one (`linear`) equals `check`'s SQNR of the prediction.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch.export import ExportedProgram
from torch.fx import GraphModule, Node

from workbench.analysis.sqnr import NodeError, per_node_sqnr, record_outputs, sqnr
from workbench.artifacts.export import program_for
from workbench.artifacts.pte import (
    Lowered,
    LoweringError,
    check_kernels,
    load_pte,
    lower,
    planned_batch,
    program_to_source,
    register_quantized_kernels,
)
from workbench.errors import first_line
from workbench.graph.nodes import is_dequantize, is_quantize, is_tensor_op
from workbench.graph.provenance import exported_graph_id, node_source
from workbench.locks import EXPORT_LOCK
from workbench.model.capture import CapturedModel
from workbench.model.signature import ModelInputs

__all__ = ["PteIntermediate", "PteIntermediates", "pte_gap", "pte_intermediates"]

log = logging.getLogger(__name__)

NOT_QUANTIZED = (
    "its output is not quantized: XNNPACK runs it fused with the op after it (a conv or an "
    "add before its relu), so the runtime has no such tensor"
)
FOLDED = "no op of it is left in the converted graph (folded by convert, e.g. a batch norm)"
NOT_COMPARED = "per-node SQNR does not compare it (no float tensor of the same shape)"
NOT_IN_PROGRAM = "its quantize is not in the lowered program"


@dataclass(frozen=True)
class PteIntermediate:
    """One exported node's output as the .pte computes it: the converted graph's quantize
    whose int8 output the tapped program returns (`tapped`) and the dequantize after it
    (`converted`); SQNR in dB of the .pte's value against the converted model's and against
    the float reference (`reference`, the float node `per_node_sqnr` pairs it with); the
    largest difference from the converted model in int8 steps and after dequantizing."""

    exported: str
    tapped: str
    converted: str
    reference: str
    sqnr_db: float
    float_sqnr_db: float
    converted_float_sqnr_db: float
    max_steps: int
    max_abs_diff: float


@dataclass(frozen=True)
class PteIntermediates:
    """The .pte's intermediate values on one set of inputs, per exported node.

    `untapped` names the exported op nodes without a .pte value and why. `output_max_diff`
    is the largest difference between the tapped program's own outputs and the untapped
    .pte's (0.0: the taps changed nothing).
    """

    nodes: Mapping[str, PteIntermediate]
    untapped: Mapping[str, str]
    output_max_diff: float
    samples: int
    seconds: float

    @property
    def faithful(self) -> bool:
        """The tapped program computes exactly what the untapped .pte does."""
        return self.output_max_diff == 0.0

    def gap(self, against: Literal["converted", "float"] = "converted") -> dict[str, float]:
        """SQNR in dB of the .pte per exported node, against the converted or float model."""
        if against == "converted":
            return {name: n.sqnr_db for name, n in self.nodes.items()}
        return {name: n.float_sqnr_db for name, n in self.nodes.items()}


def pte_intermediates(
    captured: CapturedModel,
    exported_gm: GraphModule,
    converted_gm: GraphModule,
    inputs: ModelInputs,
    *,
    lowered: Lowered | None = None,
) -> PteIntermediates:
    """Lower `converted_gm` as `lower_stages` does, with the int8 output of every exported
    node's quantize tapped, run it in the ExecuTorch runtime on `inputs` and compare each
    value with the converted and the float (`exported_gm`) model's.

    `lowered` is the untapped .pte of `converted_gm` (`PteBuild.lowered`), lowered here
    when None; the tapped program's own outputs are compared with it. Raises LoweringError
    when the tapped program cannot be made or run. Neither graph module is changed.
    """
    start = time.perf_counter()
    inputs = ModelInputs.of(inputs)
    errors = per_node_sqnr(exported_gm, converted_gm, inputs)
    converted_nodes = {n.name: n for n in converted_gm.graph.nodes}
    taps: dict[str, NodeError] = {}
    for error in errors:
        dq = converted_nodes[error.compared]
        q = dq.args[0] if is_dequantize(dq) else None
        if isinstance(q, Node) and is_quantize(q) and q.name not in taps:
            taps[q.name] = error
    tapped = {e.exported for e in taps.values()}
    untapped = {e.exported: NOT_QUANTIZED for e in errors if e.exported not in tapped}
    untapped.update(_unmeasured(exported_gm, converted_gm, {e.exported for e in errors}))

    program = program_for(converted_gm, captured.example_inputs, dims=captured.dynamic_dims,
                          parameters=captured.parameters, keep_debug=True)  # fmt: skip
    renamed = program_to_source(program, converted_gm)
    buffer, outputs, max_batch, in_spec = _lower_tapped(program, renamed, set(taps))
    for name in set(taps) - set(outputs):
        untapped[taps.pop(name).exported] = NOT_IN_PROGRAM

    tapped_program = load_pte(buffer, in_spec=in_spec, max_batch=max_batch)
    flat = _flat(tapped_program(inputs))
    if lowered is None:
        lowered = lower(program_for(converted_gm, captured.example_inputs,
                                    dims=captured.dynamic_dims, parameters=captured.parameters,
                                    keep_debug=True),
                        what="the converted model", source=converted_gm)  # fmt: skip
    plain = _flat(load_pte(lowered.buffer, in_spec=lowered.in_spec,
                           max_batch=lowered.max_batch)(inputs))  # fmt: skip
    output_diff = _max_diff(plain, flat[: len(plain)])
    if output_diff != 0.0:
        log.warning("the tapped .pte's outputs differ from the .pte's by %.3g", output_diff)

    converted_values = record_outputs(converted_gm, inputs)
    float_values = record_outputs(exported_gm, inputs)
    nodes: dict[str, PteIntermediate] = {}
    for q_name, error in taps.items():
        codes = flat[outputs[q_name]]
        dq = converted_nodes[error.compared]
        value = _dequantized(dq, codes, converted_values)
        want = converted_values[error.compared]
        steps = (codes.int() - converted_values[q_name].int()).abs()
        nodes[error.exported] = PteIntermediate(
            exported=error.exported,
            tapped=q_name,
            converted=error.compared,
            reference=error.reference,
            sqnr_db=sqnr(want, value),
            float_sqnr_db=sqnr(float_values[error.reference], value),
            converted_float_sqnr_db=error.sqnr_db,
            max_steps=int(steps.max()) if steps.numel() else 0,
            max_abs_diff=float((want.double() - value.double()).abs().max()),
        )
    return PteIntermediates(nodes, untapped, output_diff, inputs.batch_size or 1,
                            time.perf_counter() - start)  # fmt: skip


def pte_gap(
    captured: CapturedModel,
    exported_gm: GraphModule,
    converted_gm: GraphModule,
    inputs: ModelInputs,
    *,
    against: Literal["converted", "float"] = "converted",
    lowered: Lowered | None = None,
) -> dict[str, float]:
    """Per exported node (by name), the SQNR in dB of the .pte's output against the
    converted model's (or the float model's), as `stage_gap` gives one for two stages;
    nodes without a .pte value (`pte_intermediates(...).untapped`) are left out."""
    found = pte_intermediates(captured, exported_gm, converted_gm, inputs, lowered=lowered)
    return found.gap(against)


def _lower_tapped(
    program: ExportedProgram, renamed: Mapping[str, str], wanted: set[str]
) -> tuple[bytes, dict[str, int], int | None, Any]:
    """The .pte of `program` with the outputs of the program nodes made from the converted
    nodes `wanted` appended: its bytes, each tapped converted node's flat output index,
    the planned batch and the input spec."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.devtools.intermediate_output_tap import (
        FULL_TENSOR,
        strip_taps_,
        tap_intermediate_outputs_,
    )
    from executorch.exir import ExecutorchBackendConfig, to_edge_transform_and_lower
    from executorch.exir.passes.sym_shape_eval_pass import ConstraintBasedSymShapeEvalPass

    register_quantized_kernels()

    def selected(node: Node) -> bool:
        return renamed.get(node.name) in wanted

    with EXPORT_LOCK:  # lowering re-traces the program: not thread-safe (locks.py)
        try:
            program, specs = tap_intermediate_outputs_(program, (selected, FULL_TENSOR),
                                                       error_on_empty=False)  # fmt: skip
            edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
            strip_taps_(edge)
            executorch = edge.to_executorch(
                ExecutorchBackendConfig(sym_shape_eval_pass=ConstraintBasedSymShapeEvalPass())
            )
        except Exception as exc:
            raise LoweringError(
                f"ExecuTorch cannot lower the converted model with its intermediate values "
                f"as outputs: {first_line(exc)}",
                "Compare the stages without the .pte.",
            ) from exc
        buffer = bytes(executorch.buffer)
        in_spec = edge.exported_program().call_spec.in_spec
    check_kernels(executorch, (), "the tapped converted model")
    outputs = {renamed[s.node_name]: s.output_index for s in specs}
    return buffer, outputs, planned_batch(executorch), in_spec


def _unmeasured(
    exported_gm: GraphModule, converted_gm: GraphModule, measured: set[str]
) -> dict[str, str]:
    """Exported op nodes per-node SQNR does not report, and why."""
    converted_id = exported_graph_id(converted_gm)
    kept = {
        node_source(n).name
        for n in converted_gm.graph.nodes
        if is_tensor_op(n) and node_source(n).graph_id == converted_id
    }
    return {
        n.name: NOT_COMPARED if n.name in kept else FOLDED
        for n in exported_gm.graph.nodes
        if is_tensor_op(n) and n.name not in measured
    }


def _dequantized(dq: Node, codes: torch.Tensor, values: Mapping[str, Any]) -> torch.Tensor:
    """`codes` through the converted graph's dequantize `dq` (its own scale and zero point)."""
    args = [values[a.name] if isinstance(a, Node) else a for a in dq.args[1:]]
    kwargs = {k: values[v.name] if isinstance(v, Node) else v for k, v in dq.kwargs.items()}
    with torch.no_grad():
        return dq.target(codes, *args, **kwargs)  # type: ignore[operator]


def _flat(outputs: Any) -> list[torch.Tensor]:
    return list(outputs) if isinstance(outputs, (tuple, list)) else [outputs]


def _max_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    if len(a) != len(b):
        return math.inf
    worst = 0.0
    for x, y in zip(a, b, strict=True):
        if x.shape != y.shape:
            return math.inf
        if x.numel():
            worst = max(worst, float((x.double() - y.double()).abs().max()))
    return worst
