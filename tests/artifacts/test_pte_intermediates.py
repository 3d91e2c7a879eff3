"""The .pte's intermediate values per exported node, tapped out of the XNNPACK delegate.

Bounds measured on 128 digits evaluation images (xnnpack recipe): .pte against the converted
model 42.7-65.4 dB per node, at most 3 int8 steps apart; the .pte against float within
0.05 dB of the converted model against float. HF resnet (random inputs): see its test.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from workbench.artifacts.export import program_for
from workbench.artifacts.pte import Lowered, check, lower
from workbench.artifacts.pte_intermediates import (
    FOLDED,
    NOT_QUANTIZED,
    PteIntermediates,
    pte_gap,
    pte_intermediates,
)
from workbench.data.datasets import load_data
from workbench.model.capture import CapturedModel, capture
from workbench.model.signature import ModelInputs
from workbench.quantization.recipe import Recipe
from workbench.stages.build import quantize
from workbench.stages.stage import Stages

XNNPACK = dataclasses.replace(Recipe(), backend="xnnpack")
HF_MODELS = Path(__file__).resolve().parents[1] / "models" / "hf_models.py"

# The exported nodes whose output the digits CNN quantizes: each has a .pte value.
DIGITS_TAPPED = {"relu", "relu_1", "conv2d_2", "relu_2", "max_pool2d", "relu_3",
                 "adaptive_avg_pool2d", "flatten", "linear"}  # fmt: skip
DIGITS_FUSED = {"conv2d", "conv2d_1", "add", "conv2d_3"}  # into the relu after each
DIGITS_FOLDED = {"batch_norm", "batch_norm_1", "batch_norm_2", "batch_norm_3"}


def _lowered(captured: CapturedModel, gm: torch.fx.GraphModule) -> Lowered:
    program = program_for(gm, captured.example_inputs, dims=captured.dynamic_dims,
                          parameters=captured.parameters, keep_debug=True)  # fmt: skip
    return lower(program, what="the converted model", source=gm)


@pytest.fixture(scope="module")
def digits(
    captured: dict[str, CapturedModel], digits_data: Any
) -> tuple[Stages, Lowered, ModelInputs, PteIntermediates]:
    model = captured["digits_cnn"]
    stages = quantize(model, XNNPACK, digits_data, batches=2, batch_size=32)
    gm = stages.converted.graph_module
    lowered = _lowered(model, gm)
    inputs = next(iter(digits_data.eval_batches(128))).inputs
    found = pte_intermediates(model, stages.exported.graph_module, gm, inputs, lowered=lowered)
    return stages, lowered, inputs, found


@pytest.mark.slow
def test_digits_cnn_nodes_with_a_pte_value(digits: Any) -> None:
    _, _, _, found = digits
    assert set(found.nodes) == DIGITS_TAPPED
    assert found.untapped == {**dict.fromkeys(DIGITS_FUSED, NOT_QUANTIZED),
                              **dict.fromkeys(DIGITS_FOLDED, FOLDED)}  # fmt: skip
    assert found.faithful  # the taps change none of the program's own outputs
    assert found.samples == 128
    # A folded conv is held against its float batch norm, the others against themselves.
    assert found.nodes["conv2d_2"].reference == "batch_norm_2"
    assert found.nodes["relu"].tapped.startswith("quantize_per_tensor")


@pytest.mark.slow
def test_digits_cnn_pte_against_converted_and_float(
    digits: Any, digits_data: Any
) -> None:  # fmt: skip
    stages, lowered, _, found = digits
    for name, node in found.nodes.items():
        values = (node.sqnr_db, node.float_sqnr_db, node.converted_float_sqnr_db)
        assert all(math.isfinite(v) for v in values), name
        # XNNPACK's int8 kernels against the q/dq reference: a few int8 steps apart.
        assert node.sqnr_db > 40.0, name
        assert 0 < node.max_steps <= 3, name
        # Against float the .pte is as good as the converted model (measured: within 0.05 dB).
        assert abs(node.float_sqnr_db - node.converted_float_sqnr_db) < 0.1, name
        assert node.float_sqnr_db > 30.0, name
    # The last node's value is the program's output: the runtime check's SQNR, same batch.
    checked = check(lowered, stages.converted.graph_module, digits_data, batches=1)
    assert checked.samples == found.samples
    assert found.nodes["linear"].sqnr_db == pytest.approx(checked.sqnr_db, abs=1e-3)


@pytest.mark.slow
def test_pte_gap_is_keyed_like_stage_gap(
    captured: dict[str, CapturedModel], digits: Any
) -> None:  # fmt: skip
    stages, lowered, inputs, found = digits
    exported, converted = stages.exported.graph_module, stages.converted.graph_module
    gap = pte_gap(captured["digits_cnn"], exported, converted, inputs,
                  lowered=lowered)  # fmt: skip
    assert gap.keys() == found.gap().keys() == DIGITS_TAPPED
    assert gap == pytest.approx(found.gap())
    assert found.gap("float") == {n: v.float_sqnr_db for n, v in found.nodes.items()}
    # Every key names a node of the exported graph the Graph page draws.
    assert gap.keys() <= {n.name for n in exported.graph.nodes}


@pytest.mark.slow
def test_hf_resnet_intermediates() -> None:
    model = capture(f"{HF_MODELS}:resnet")
    data = load_data("random", model.signature)
    stages = quantize(model, XNNPACK, data, batches=2, batch_size=32)
    gm = stages.converted.graph_module
    found = pte_intermediates(model, stages.exported.graph_module, gm, model.example_inputs)
    assert found.faithful
    assert len(found.nodes) == 12
    reasons = list(found.untapped.values())
    assert (reasons.count(NOT_QUANTIZED), reasons.count(FOLDED), len(reasons)) == (5, 6, 11)
    for name, node in found.nodes.items():
        # Most nodes are bit-equal (inf dB, 0 steps); the pool and the head one step apart.
        assert node.sqnr_db > 45.0 and not math.isnan(node.sqnr_db), name
        assert node.max_steps <= 1, name
        assert math.isfinite(node.float_sqnr_db), name
    assert sum(math.isinf(n.sqnr_db) for n in found.nodes.values()) == 9
