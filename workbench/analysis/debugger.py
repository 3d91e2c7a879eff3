"""torchao's numeric debugger on two stages, keyed as our own per-node SQNR is.

torchao 0.18 keys every node by `NodeSourceDebugInfo(name, graph_id)`: the end of its
`from_node` chain, the same key as `workbench.graph.provenance.NodeSource`. Its flow:
`prepare_for_propagation_comparison` puts an output logger after every node that has such a
key, both graphs run on the same inputs, `extract_results_from_loggers` reads the loggers, and
`compare_results` pairs them by key. Where several nodes share a key (a conv and the q/dq
convert put after it), the last logger in graph order wins.

One convention differs: torchao's SQNR takes the *actual* tensor as the signal
(`20 log10(|a| / |a - r|)`, `torch.ao.ns.fx.utils.compute_sqnr(actual, ref)`), ours the float
reference (`workbench.analysis.sqnr.sqnr`). On the same pair the two differ by
`20 log10(|a| / |r|)`, which is at most `20 log10(1 + 10^(-s/20))` at SQNR `s`: 0.83 dB at
20 dB, 0.09 dB at 40 dB.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.fx import GraphModule

from workbench.analysis.sqnr import sqnr
from workbench.graph.provenance import NodeSource
from workbench.locks import EXPORT_LOCK
from workbench.model.signature import ModelInputs

__all__ = ["DebuggerResult", "debugger_comparison", "stage_gap"]


@dataclass(frozen=True)
class DebuggerResult:
    """One node as torchao's `compare_results` saw it: the node whose output was logged on
    each side, torchao's SQNR of the actual against the reference (dB, first call) and ours
    of the same pair (`workbench.analysis.sqnr.sqnr`: the reference is the signal)."""

    source: NodeSource
    reference_node: str
    actual_node: str
    sqnr_db: float
    reference_sqnr_db: float


def debugger_comparison(
    reference_gm: GraphModule, actual_gm: GraphModule, inputs: ModelInputs
) -> dict[NodeSource, DebuggerResult]:
    """Run torchao's numeric debugger on two stages of one capture (say the exported and the
    converted graph) with `inputs`; the nodes whose outputs are float tensors on both sides,
    by source. Neither graph module is changed (the loggers go into copies)."""
    from torchao.quantization.pt2e import (
        compare_results,
        extract_results_from_loggers,
        prepare_for_propagation_comparison,
    )

    with EXPORT_LOCK, torch.no_grad():
        reference = prepare_for_propagation_comparison(reference_gm)
        actual = prepare_for_propagation_comparison(actual_gm)
        inputs.call(reference)
        inputs.call(actual)
    compared = compare_results(
        extract_results_from_loggers(reference), extract_results_from_loggers(actual)
    )
    found = {}
    for info, summary in compared.items():
        first = summary.results[0] if summary.results else None
        value = first.sqnr if first is not None else None
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            assert first is not None and isinstance(first.ref, torch.Tensor)
            ours = sqnr(first.ref, first.actual)  # type: ignore[arg-type]
            source = NodeSource(info.name, info.graph_id)
            found[source] = DebuggerResult(source, summary.ref_node_name,
                                           summary.actual_node_name, float(value),
                                           ours)  # fmt: skip
    return found


def stage_gap(
    reference_gm: GraphModule, actual_gm: GraphModule, inputs: ModelInputs, exported_id: int
) -> dict[str, float]:
    """Per exported node (by name), our SQNR of one stage's output against another's, as
    torchao's debugger pairs them (any two stages of one capture: exported, prepared,
    calibrated or trained, converted). `exported_id` is the exported graph's id
    (`workbench.graph.provenance.exported_graph_id`); nodes of other graphs are left out.

    Pairs are the debugger's: a conv whose batch norm convert folded away is held against the
    float conv before its BN (the converted model's per-node SQNR, `per_node_sqnr`, is the
    one to read for int8 against float)."""
    found = debugger_comparison(reference_gm, actual_gm, inputs)
    return {s.name: r.reference_sqnr_db for s, r in found.items() if s.graph_id == exported_id}
