"""Our per-node SQNR held against torchao's numeric debugger (`compare_results`) on the same
stages and inputs: the same keys, the same node pairs, the same numbers once the signal
convention is the same (torchao divides by the actual tensor, we by the float reference)."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from workbench.analysis.debugger import debugger_comparison
from workbench.analysis.sqnr import NodeError, per_node_sqnr, record_outputs, sqnr
from workbench.graph.provenance import NodeSource, exported_graph_id
from workbench.model.capture import CapturedModel
from workbench.model.signature import ModelInputs


@pytest.fixture(scope="module")
def pairs(
    captured: dict[str, CapturedModel], digits_ptq: dict[str, Any], digits_test_x: torch.Tensor
) -> tuple[list[NodeError], dict[NodeSource, Any], dict[str, Any], dict[str, Any]]:
    float_gm = digits_ptq["exported"].graph_module
    converted_gm = digits_ptq["converted"].graph_module
    inputs = ModelInputs((digits_test_x,))
    ours = per_node_sqnr(float_gm, converted_gm, inputs)
    theirs = debugger_comparison(float_gm, converted_gm, inputs)
    return (ours, theirs, record_outputs(float_gm, inputs),
            record_outputs(converted_gm, inputs))  # fmt: skip


def test_the_debugger_keys_nodes_as_our_provenance_does(
    digits_ptq: dict[str, Any], pairs: tuple[Any, ...]
) -> None:
    ours, theirs, _, _ = pairs
    exported_id = exported_graph_id(digits_ptq["converted"].graph_module)
    keys = {NodeSource(e.exported, exported_id) for e in ours}
    assert len(keys) == len(ours) >= 10
    assert keys <= set(theirs)  # every node we measure, torchao measures under the same key


def test_our_sqnr_and_compare_results_agree_on_the_same_pairs(
    digits_ptq: dict[str, Any], pairs: tuple[Any, ...]
) -> None:
    """Measured on digits_cnn (x86_inductor PTQ, 360 test images): 5 of 13 nodes are the same
    pair both ways and agree to 1e-3 dB; the other 8 are pairs torchao makes differently."""
    ours, theirs, float_values, converted_values = pairs
    converted = digits_ptq["converted"].graph_module
    exported_id = exported_graph_id(converted)
    nodes = {n.name: n for n in converted.graph.nodes}
    kinds = []
    for error in ours:
        result = theirs[NodeSource(error.exported, exported_id)]
        if (result.reference_node, result.actual_node) == (error.reference, error.compared):
            kinds.append("same pair")
            ref, actual = float_values[error.reference], converted_values[error.compared]
            assert error.sqnr_db == pytest.approx(sqnr(ref, actual), abs=1e-9)
            # torchao's convention: the actual tensor is the signal.
            assert result.sqnr_db == pytest.approx(sqnr(actual, ref), abs=1e-3)
            bound = 20 * math.log10(1 + 10 ** (-error.sqnr_db / 20))
            assert abs(result.sqnr_db - error.sqnr_db) <= bound + 1e-3
        elif error.bn_folded:
            # No batch norm is left in the converted graph: torchao holds the conv (its BN
            # folded in) against the float conv before its BN, which says nothing (2-5 dB);
            # we hold it against the float BN's output.
            kinds.append("folded BN")
            assert (result.reference_node, result.actual_node) == (error.exported, error.compared)
            assert result.sqnr_db < 10.0 < 30.0 < error.sqnr_db
        else:
            # torchao logs the last node of the key: the op before its output quantize (the
            # q/dq after a relu carry the relu's key, but the logger sits on the relu); we
            # compare what the next op reads, the dequantized output.
            kinds.append("quantized output")
            dequantize = nodes[error.compared]
            assert dequantize.args[0].args[0].name == result.actual_node == error.node
            assert result.reference_node == error.reference
    assert kinds.count("same pair") == 5
    assert kinds.count("folded BN") == 4
    assert kinds.count("quantized output") == 4
