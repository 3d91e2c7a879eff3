"""After convert: SQNR colours, the float/int8 comparison, activation grids, int8 weights by
channel, their charts, the step-by-step sensitivity search and the reproduce command.

Everything runs on the digits CNN through PTQ with the default recipe and 4 calibration batches
(the session fixture `digits_ptq`), plus one per-tensor-weight PTQ build, a 2-node sensitivity
search and one 4-step QAT build through the CLI's `main` in-process.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import os
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.fx import GraphModule

from workbench.analysis import compare as compare_module
from workbench.analysis.compare import (
    SQNR_BATCH,
    ActivationGrid,
    Comparison,
    activation_grid,
    compare,
    weight_channels,
    weight_nodes,
    worst_first,
)
from workbench.analysis.sensitivity import (
    SQNR_SAMPLES,
    SensitivityProgress,
    SensitivityResult,
    iter_sensitivity,
    sensitivity,
)
from workbench.analysis.sqnr import NodeError, own_sqnr, per_node_sqnr, record_outputs, sqnr_by_node
from workbench.artifacts.report import reproduce_command
from workbench.cli import _parser, main
from workbench.data.datasets import Batch, Dataset
from workbench.drawing.charts import (
    activation_grid_figure,
    sensitivity_figure,
    weight_channels_figure,
)
from workbench.drawing.dot import box_of
from workbench.drawing.overlays import (
    NO_SQNR_COLOUR,
    SQNR_BANDS,
    sqnr_colour,
    sqnr_colours,
    sqnr_legend,
)
from workbench.graph.nodes import readable_op
from workbench.graph.view import GraphView, describe
from workbench.model.capture import CapturedModel
from workbench.model.signature import ModelInputs
from workbench.quantization.editing import set_override
from workbench.quantization.recipe import QuantSetting, Recipe
from workbench.stages.build import build
from workbench.stages.stage import Stage
from workbench.stages.steps import calibrate, convert, prepare
from workbench.stages.training import QatConfig, train_qat

BEST, GOOD, FAIR, POOR, WORST = (colour for _, _, colour in SQNR_BANDS)
WEIGHT_NODES = ["conv2d", "conv2d_1", "conv2d_2", "conv2d_3", "linear"]
BATCH_NORMS = {"batch_norm", "batch_norm_1", "batch_norm_2", "batch_norm_3"}


@pytest.fixture(scope="module")
def float_gm(digits_ptq: dict[str, Stage]) -> GraphModule:
    return digits_ptq["exported"].graph_module


@pytest.fixture(scope="module")
def converted_gm(digits_ptq: dict[str, Stage]) -> GraphModule:
    return digits_ptq["converted"].graph_module


@pytest.fixture(scope="module")
def view(captured: dict[str, CapturedModel]) -> GraphView:
    return describe(captured["digits_cnn"].graph_module())


@pytest.fixture(scope="module")
def comparison(
    float_gm: GraphModule, converted_gm: GraphModule, digits_data: Dataset
) -> Comparison:
    return compare(float_gm, converted_gm, digits_data)


def _error(exported: str, db: float, *, node: str | None = None) -> NodeError:
    return NodeError(
        node=node or exported, exported=exported, reference=exported, compared=exported,
        sqnr_db=db, max_abs_error=0.0, bn_folded=False, quantized=False,
    )  # fmt: skip


def _node(gm: GraphModule, name: str) -> torch.fx.Node:
    return next(n for n in gm.graph.nodes if n.name == name)


# --- Colours ---------------------------------------------------------------------------------


def test_sqnr_colour_band_edges() -> None:
    assert [bound for bound, _, _ in SQNR_BANDS] == [40.0, 30.0, 20.0, 10.0, -math.inf]
    assert sqnr_colour(math.inf) == BEST == "#1a9850"
    assert sqnr_colour(40.0) == BEST
    assert sqnr_colour(39.99) == GOOD
    assert sqnr_colour(30.0) == GOOD
    assert sqnr_colour(29.999) == FAIR
    assert sqnr_colour(20.0) == FAIR
    assert sqnr_colour(19.5) == POOR
    assert sqnr_colour(10.0) == POOR
    assert sqnr_colour(9.99) == WORST == "#d73027"
    assert sqnr_colour(-200.0) == WORST
    assert sqnr_colour(-math.inf) == WORST
    assert NO_SQNR_COLOUR not in {colour for _, _, colour in SQNR_BANDS}


def test_sqnr_legend_order_and_contents() -> None:
    legend = sqnr_legend()
    assert list(legend.items()) == [
        ("≥ 40 dB", BEST),
        ("30–40 dB", GOOD),
        ("20–30 dB", FAIR),
        ("10–20 dB", POOR),
        ("< 10 dB", WORST),
        ("not measured", NO_SQNR_COLOUR),
    ]


def test_sqnr_by_node_keeps_the_worst() -> None:
    errors = [
        _error("add", 35.0, node="add_3"),
        _error("conv2d", 45.0),
        _error("add", 12.5, node="add_7"),
        _error("add", 20.0, node="add_9"),
        _error("linear", math.inf),
    ]
    by_node = sqnr_by_node(errors)
    assert list(by_node) == ["add", "conv2d", "linear"]
    assert by_node["add"] is errors[2]
    assert by_node["conv2d"] is errors[1] and by_node["linear"] is errors[4]
    # A tie keeps the first one seen.
    tie = [_error("relu", 30.0, node="a"), _error("relu", 30.0, node="b")]
    assert sqnr_by_node(tie)["relu"].node == "a"
    assert sqnr_by_node([]) == {}
    # NaN (a float reference that is itself NaN) is kept as the worst, drawn as not measured.
    broken = [_error("relu", 30.0, node="a"), _error("relu", math.nan, node="b")]
    assert sqnr_by_node(broken)["relu"].node == "b"
    assert sqnr_by_node(broken[::-1])["relu"].node == "b"
    assert sqnr_colour(math.nan) == NO_SQNR_COLOUR


def test_sqnr_colours_hand_built(view: GraphView) -> None:
    errors = [
        _error("conv2d", 45.0),
        _error("relu", 25.0),
        _error("add", 35.0, node="add_a"),
        _error("add", 15.0, node="add_b"),  # the worse of two wins
        _error("max_pool2d", math.inf),
        _error("linear", 5.0),
    ]
    grey = NO_SQNR_COLOUR
    assert sqnr_colours(view, errors) == {
        "conv2d": BEST, "batch_norm": grey, "relu": FAIR,
        "conv2d_1": grey, "batch_norm_1": grey, "relu_1": grey, "conv2d_2": grey,
        "batch_norm_2": grey, "add": POOR, "relu_2": grey,
        "max_pool2d": BEST,
        "conv2d_3": grey, "batch_norm_3": grey, "relu_3": grey,
        "adaptive_avg_pool2d": grey, "flatten": grey, "linear": WORST,
    }  # fmt: skip
    # Collapsed to top-level modules: each box takes its lowest SQNR; no measurement -> grey.
    assert sqnr_colours(view, errors, collapse_depth=1) == {
        "module/stem": FAIR,  # conv2d 45, relu 25
        "module/block1": POOR,  # add 15
        "module/pool": BEST,  # exact
        "module/block2": grey,
        "module/avgpool": grey,
        "flatten": grey,  # no module: its own box
        "module/fc": WORST,
    }
    assert sqnr_colours(view, []) == {n.name: grey for n in view.nodes if n.op == "call_function"}


def test_sqnr_colours_of_ptq_digits(view: GraphView, comparison: Comparison) -> None:
    errors = comparison.errors
    by_node = {e.exported: e for e in errors}
    assert len(by_node) == len(errors)  # one converted node per exported node in PTQ
    ops = [n for n in view.nodes if n.op == "call_function"]
    colours = sqnr_colours(view, errors)
    assert list(colours) == [n.name for n in ops]
    unmeasured = {n.name for n in ops} - set(by_node)
    assert unmeasured == BATCH_NORMS  # folded into their convs
    for name, colour in colours.items():
        if name in by_node:
            assert colour == sqnr_colour(by_node[name].sqnr_db), name
        else:
            assert colour == NO_SQNR_COLOUR, name
    # int8 everywhere: nothing below 20 dB on digits.
    assert all(e.sqnr_db > 20 for e in errors)

    collapsed = sqnr_colours(view, errors, collapse_depth=1)
    boxes: dict[str, list[str]] = {}
    for n in ops:
        boxes.setdefault(box_of(n, 1), []).append(n.name)
    assert list(collapsed) == list(boxes)
    assert list(collapsed) == [
        "module/stem", "module/block1", "module/pool", "module/block2", "module/avgpool",
        "flatten", "module/fc",
    ]  # fmt: skip
    for box, names in boxes.items():
        lowest = min(by_node[n].sqnr_db for n in names if n in by_node)
        assert collapsed[box] == sqnr_colour(lowest), box


def test_worst_first(comparison: Comparison) -> None:
    errors = [_error("a", math.inf), _error("b", 12.0), _error("c", -math.inf), _error("d", 30)]
    assert [e.exported for e in worst_first(errors)] == ["c", "b", "d", "a"]
    ordered = worst_first(comparison.errors)
    assert sorted(ordered, key=lambda e: e.node) == sorted(comparison.errors, key=lambda e: e.node)
    assert [e.sqnr_db for e in ordered] == sorted(e.sqnr_db for e in comparison.errors)


# --- compare ---------------------------------------------------------------------------------


def test_compare_quality_and_errors(
    comparison: Comparison,
    float_gm: GraphModule,
    converted_gm: GraphModule,
    digits_data: Dataset,
) -> None:
    assert comparison.metric == "accuracy"
    assert comparison.float_quality == pytest.approx(100 * 358 / 360)  # as test_pipeline
    assert round(comparison.float_quality, 2) == 99.44
    assert abs(comparison.int8_quality - comparison.float_quality) <= 1.0
    (batch,) = comparison.inputs.tensors()
    assert batch.shape[0] == SQNR_BATCH < digits_data.eval_size
    assert torch.equal(batch, digits_data.eval_inputs.args[0][:SQNR_BATCH])
    assert list(comparison.errors) == per_node_sqnr(float_gm, converted_gm, comparison.inputs)
    assert {e.exported for e in comparison.errors} >= set(WEIGHT_NODES) | {"relu_1", "add"}


@pytest.mark.parametrize("loader_batch", [360, 100])
def test_compare_measures_sqnr_once_on_the_first_batch_cut_to_sqnr_batch(
    loader_batch: int,
    float_gm: GraphModule,
    converted_gm: GraphModule,
    digits_data: Dataset,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Data that batches its own way (a user's loader ignores the batch size asked for):
    per-node SQNR runs once, on the first batch, cut to SQNR_BATCH samples if larger."""
    data = copy.copy(digits_data)

    def own_batches(batch_size: int = 0) -> Iterator[Batch]:
        del batch_size
        return digits_data.eval_batches(loader_batch)

    data.eval_batches = own_batches  # type: ignore[method-assign]
    measured: list[ModelInputs] = []

    def counting(float_gm: GraphModule, converted_gm: GraphModule, inputs: Any) -> Any:
        measured.append(inputs)
        return per_node_sqnr(float_gm, converted_gm, inputs)

    monkeypatch.setattr(compare_module, "per_node_sqnr", counting)
    comparison = compare(float_gm, converted_gm, data)
    (inputs,) = measured
    assert comparison.inputs is inputs
    (batch,) = inputs.tensors()
    samples = min(loader_batch, SQNR_BATCH)
    assert batch.shape[0] == samples == (SQNR_BATCH if loader_batch > SQNR_BATCH else 100)
    assert torch.equal(batch, digits_data.eval_inputs.args[0][:samples])
    # Quality still covers the whole evaluation split, not just the SQNR batch.
    assert comparison.float_quality == pytest.approx(100 * 358 / 360)


# --- activation_grid -------------------------------------------------------------------------


def test_activation_grid_of_relu_1(
    comparison: Comparison, float_gm: GraphModule, converted_gm: GraphModule
) -> None:
    error = next(e for e in comparison.errors if e.exported == "relu_1")
    assert error.quantized and error.reference == "relu_1"
    grid = activation_grid(float_gm, converted_gm, error, comparison.inputs)
    assert isinstance(grid, ActivationGrid)
    dequantize = _node(converted_gm, error.compared)
    assert readable_op(dequantize) == "dequantize_per_tensor"
    quantize = dequantize.args[0]
    assert readable_op(quantize) == "quantize_per_tensor"
    assert quantize.args[0].name == "relu_1"
    scale, zero_point, qmin, qmax, dtype = quantize.args[1:6]
    assert (grid.node, grid.reference) == ("relu_1", "relu_1")
    assert (grid.scale, grid.zero_point, grid.qmin, grid.qmax, grid.dtype) == (
        scale, zero_point, qmin, qmax, dtype,
    )  # fmt: skip
    assert (grid.zero_point, grid.qmin, grid.qmax, grid.dtype) == (0, 0, 255, torch.uint8)
    expected = record_outputs(float_gm, comparison.inputs)["relu_1"]
    assert grid.values.shape == (256, 16, 8, 8)
    assert torch.equal(grid.values, expected)

    # Hand count of the values outside [(qmin - zp) * scale, (qmax - zp) * scale].
    low, high = (qmin - zero_point) * scale, (qmax - zero_point) * scale
    outside = sum(1 for v in expected.flatten().tolist() if v < low or v > high)
    assert outside > 0  # 4 calibration batches did not see the largest eval activations
    assert grid.clipped_fraction == outside / expected.numel()

    # A folded conv's error is compared on the BN output before any quantize: no grid.
    conv_error = next(e for e in comparison.errors if e.exported == "conv2d_1")
    assert (conv_error.quantized, conv_error.reference) == (False, "batch_norm_1")
    assert activation_grid(float_gm, converted_gm, conv_error, comparison.inputs) is None
    # Claimed quantized, but its compared node is not a dequantize of a quantize: no grid.
    claimed = dataclasses.replace(conv_error, quantized=True)
    assert activation_grid(float_gm, converted_gm, claimed, comparison.inputs) is None


def test_clipped_fraction_by_hand() -> None:
    values = torch.tensor([-1.0, 0.0, 0.5, 1.0, 1.01, 3.0, -0.26, -0.25])
    # grid: (0 - 2) * 0.125 = -0.25 .. (10 - 2) * 0.125 = 1.0
    grid = ActivationGrid("n", "n", values, 0.125, 2, 0, 10, torch.uint8)
    assert grid.clipped_fraction == 4 / 8  # -1.0, 1.01, 3.0, -0.26
    empty = dataclasses.replace(grid, values=torch.empty(0))
    assert empty.clipped_fraction == 0.0


# --- weight_channels -------------------------------------------------------------------------


def test_weight_nodes(converted_gm: GraphModule, float_gm: GraphModule) -> None:
    assert weight_nodes(converted_gm) == WEIGHT_NODES
    assert weight_nodes(float_gm) == []  # float weights are parameters, not dequantized ints


def test_weight_channels_per_channel(converted_gm: GraphModule) -> None:
    channels = weight_channels(converted_gm, "conv2d_1")
    dequantize = _node(converted_gm, "conv2d_1").args[1]
    assert readable_op(dequantize) == "dequantize_per_channel"
    stored, scales, zero_points = (getattr(converted_gm, a.target) for a in dequantize.args[:3])
    axis, qmin, qmax, dtype = dequantize.args[3:7]
    assert (stored.dtype, tuple(stored.shape), axis, qmin, qmax) == (
        torch.int8, (16, 16, 3, 3), 0, -128, 127,
    )  # fmt: skip
    values = torch.ops.quantized_decomposed.dequantize_per_channel(
        stored, scales, zero_points, axis, qmin, qmax, dtype
    )
    assert channels.node == "conv2d_1" and channels.per_channel is True
    assert channels.low.shape == channels.high.shape == channels.scale.shape == (16,)
    # Exact: float32 (int - zp) * scale is the float64 product rounded once.
    assert torch.equal(channels.low.float(), values.amin(dim=(1, 2, 3)))
    assert torch.equal(channels.high.float(), values.amax(dim=(1, 2, 3)))
    assert torch.equal(channels.scale, scales.double())
    by_hand = (stored.double() - zero_points.double()[:, None, None, None]) * scales.double()[
        :, None, None, None
    ]
    assert torch.equal(channels.low, by_hand.amin(dim=(1, 2, 3)))
    assert torch.equal(channels.grid_low, (-128 - zero_points.double()) * scales.double())
    assert torch.equal(channels.grid_high, (127 - zero_points.double()) * scales.double())
    tolerance = 1e-9
    assert bool((channels.grid_low <= channels.low + tolerance).all())
    assert bool((channels.high <= channels.grid_high + tolerance).all())
    # Symmetric per-channel minmax: zero points 0 and each channel's largest |weight| sets its
    # scale (|w| / scale = 127.5 rounds to -128 or 127; float rounding may give -127).
    assert not zero_points.any()
    rows = stored.reshape(16, -1).int()
    assert bool((torch.maximum(-rows.amin(dim=1), rows.amax(dim=1)) >= 127).all())

    linear = weight_channels(converted_gm, "linear")
    assert linear.per_channel and linear.low.shape == (10,)


def test_weight_channels_per_tensor_and_errors(
    captured: dict[str, CapturedModel], digits_data: Dataset, converted_gm: GraphModule
) -> None:
    recipe = set_override(
        Recipe(), "node", "conv2d_1", QuantSetting(weight_granularity="per_tensor")
    )
    converted = convert(
        calibrate(prepare(captured["digits_cnn"], recipe), digits_data, batches=4)
    ).graph_module
    assert weight_nodes(converted) == WEIGHT_NODES
    channels = weight_channels(converted, "conv2d_1")
    assert channels.per_channel is False
    assert channels.scale.shape == (16,)  # one bar per output channel, one shared scale
    assert bool((channels.scale == channels.scale[0]).all())
    dequantize = _node(converted, "conv2d_1").args[1]
    assert readable_op(dequantize) == "dequantize_per_tensor"
    stored = getattr(converted, dequantize.args[0].target)
    scale, zero_point, qmin, qmax, dtype = dequantize.args[1:6]
    assert (stored.dtype, qmin, qmax, dtype) == (torch.int8, -128, 127, torch.int8)
    assert float(channels.scale[0]) == scale
    values = torch.ops.quantized_decomposed.dequantize_per_tensor(
        stored, scale, zero_point, qmin, qmax, dtype
    ).flatten(1)
    torch.testing.assert_close(channels.low, values.amin(dim=1).double(), rtol=0, atol=1e-7)
    torch.testing.assert_close(channels.high, values.amax(dim=1).double(), rtol=0, atol=1e-7)
    assert channels.grid_low.tolist() == [(qmin - zero_point) * scale] * 16
    assert channels.grid_high.tolist() == [(qmax - zero_point) * scale] * 16
    # The other convs stay per channel.
    assert weight_channels(converted, "conv2d").per_channel

    with pytest.raises(ValueError, match="relu_1 has no quantized weight"):
        weight_channels(converted_gm, "relu_1")
    with pytest.raises(ValueError, match="no node conv2d_99"):
        weight_channels(converted_gm, "conv2d_99")


# --- charts ----------------------------------------------------------------------------------


def test_weight_channels_figure(converted_gm: GraphModule) -> None:
    channels = weight_channels(converted_gm, "conv2d_2")
    figure = weight_channels_figure(channels)
    assert len(figure.data) == 3
    bars, grid_min, grid_max = figure.data
    assert bars.type == "bar"
    assert list(bars.x) == list(range(16))
    assert list(bars.base) == channels.low.tolist()
    assert list(bars.y) == (channels.high - channels.low).tolist()
    assert [row[2] for row in bars.customdata] == channels.scale.tolist()
    for trace, edge, name in ((grid_min, channels.grid_low, "grid min"),
                              (grid_max, channels.grid_high, "grid max")):  # fmt: skip
        assert (trace.type, trace.mode, trace.name) == ("scatter", "markers", name)
        assert list(trace.x) == list(range(16))
        assert list(trace.y) == edge.tolist()
    assert figure.layout.title.text == "int8 weight of conv2d_2 by output channel (per channel)"
    assert figure.layout.xaxis.title.text == "output channel"

    # One scale for all bars: it is repeated for the hover text and the grid edges.
    single = dataclasses.replace(
        channels,
        low=torch.tensor([-1.0, -0.5], dtype=torch.float64),
        high=torch.tensor([0.5, 1.0], dtype=torch.float64),
        grid_low=torch.tensor([-1.28], dtype=torch.float64),
        grid_high=torch.tensor([1.27], dtype=torch.float64),
        scale=torch.tensor([0.01], dtype=torch.float64),
        per_channel=False,
    )
    figure = weight_channels_figure(single)
    assert list(figure.data[0].y) == [1.5, 1.5]
    assert list(figure.data[1].y) == [-1.28, -1.28] and list(figure.data[2].y) == [1.27, 1.27]
    assert figure.layout.title.text.endswith("(per tensor)")


def test_activation_grid_figure(
    comparison: Comparison, float_gm: GraphModule, converted_gm: GraphModule
) -> None:
    error = next(e for e in comparison.errors if e.exported == "relu_1")
    grid = activation_grid(float_gm, converted_gm, error, comparison.inputs)
    assert grid is not None
    figure = activation_grid_figure(grid)
    title = figure.layout.title.text
    assert title.startswith("relu_1: float activations on the torch.uint8 grid")
    assert f"scale {grid.scale:.4g}, zero point 0" in title
    assert f"{100 * grid.clipped_fraction:.2f} % clipped" in title
    assert list(figure.data[0].x) == grid.values.flatten().double().tolist()

    # A node recorded through its BN: the title names both.
    folded = ActivationGrid("conv2d", "batch_norm", torch.tensor([0.0, 1.0, 9.0, -9.0]),
                            0.5, 0, -8, 7, torch.int8)  # fmt: skip
    title = activation_grid_figure(folded).layout.title.text
    assert title == (
        "conv2d (after batch_norm): float activations on the torch.int8 grid "
        "(scale 0.5, zero point 0, 50.00 % clipped)"
    )
    assert folded.clipped_fraction == 0.5  # grid -4 .. 3.5: 9 and -9 are clipped


def test_sensitivity_figure() -> None:
    results = [
        SensitivityResult("conv2d_1", 99.17, 0.83, 18.5),
        SensitivityResult("linear", 98.61, 0.28, 33.8),
        SensitivityResult("conv2d", 98.33, 0.0, math.inf),
        SensitivityResult("relu", 98.06, -0.28, math.nan),
    ]
    figure = sensitivity_figure(results, 98.33, "accuracy")
    (bars,) = figure.data
    assert list(bars.x) == ["conv2d_1", "linear", "conv2d", "relu"]
    assert list(bars.y) == [0.83, 0.28, 0.0, -0.28]
    assert [row[0] for row in bars.customdata] == [99.17, 98.61, 98.33, 98.06]
    assert [row[1] for row in bars.customdata] == [18.5, 33.8, None, None]
    assert figure.layout.title.text == (
        "Gain from keeping one node float (accuracy 98.33 fully quantized)"
    )
    assert figure.layout.yaxis.title.text == "accuracy gain pp"
    mse = sensitivity_figure(results[:1], 0.25, "mse")
    assert mse.layout.yaxis.title.text == "mse gain"


# --- iter_sensitivity ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def search_states(
    captured: dict[str, CapturedModel], digits_data: Dataset
) -> list[SensitivityProgress]:
    return list(
        iter_sensitivity(captured["digits_cnn"], Recipe(), digits_data, nodes=["conv2d", "linear"])
    )


def test_iter_sensitivity_states(
    search_states: list[SensitivityProgress],
    comparison: Comparison,
    float_gm: GraphModule,
    converted_gm: GraphModule,
    digits_data: Dataset,
) -> None:
    assert [(s.done, s.total) for s in search_states] == [(1, 3), (2, 3), (3, 3)]
    first, second, last = search_states
    assert (first.node, first.results) == (None, ())
    assert {s.baseline for s in search_states} == {first.baseline}
    # The baseline is the same PTQ build as digits_ptq (default recipe, 4 batches).
    assert first.baseline == comparison.int8_quality
    assert second.node == "conv2d" and [r.node for r in second.results] == ["conv2d"]
    assert last.node == "linear"
    assert sorted(r.node for r in last.results) == ["conv2d", "linear"]
    deltas = [r.delta for r in last.results]
    assert deltas == sorted(deltas, reverse=True)
    assert second.results[0] in last.results
    inputs = digits_data.eval_inputs.take(SQNR_SAMPLES)
    sqnr = {e.exported: e.sqnr_db for e in per_node_sqnr(float_gm, converted_gm, inputs)}
    for r in last.results:
        assert r.delta == pytest.approx(r.quality - first.baseline)
        assert r.sqnr_db == sqnr[r.node]


def test_iter_sensitivity_stopped_early(
    captured: dict[str, CapturedModel], digits_data: Dataset
) -> None:
    search = iter_sensitivity(
        captured["digits_cnn"], Recipe(), digits_data, nodes=["conv2d", "linear"]
    )
    seen: list[SensitivityProgress] = []
    for state in search:
        seen.append(state)
        if state.done == 2:
            break
    assert [s.done for s in seen] == [1, 2]
    assert [r.node for r in seen[-1].results] == ["conv2d"]
    search.close()
    assert next(search, None) is None


def test_sensitivity_stopped_before_the_baseline(
    captured: dict[str, CapturedModel], digits_data: Dataset
) -> None:
    assert sensitivity(captured["digits_cnn"], Recipe(), digits_data,
                       should_stop=lambda: True) == []  # fmt: skip


# --- reproduce_command and the QAT flags -----------------------------------------------------

PTQ_COMMAND = (
    "python -m workbench quantize --model sample:digits_cnn --recipe recipe.json --mode ptq "
    "--data digits --steps 16 --batch-size 64 --out model.pt2 --report report.json"
)


def test_reproduce_command_ptq() -> None:
    args = ("sample:digits_cnn", "recipe.json", "ptq", "digits", 16, 64)
    assert reproduce_command(*args) == PTQ_COMMAND
    quoted = reproduce_command("my models/net.py:build", "recipe.json", "ptq",
                               "/data dir/d.py:load", 4, 32)  # fmt: skip
    assert quoted == (
        "python -m workbench quantize --model 'my models/net.py:build' --recipe recipe.json "
        "--mode ptq --data '/data dir/d.py:load' --steps 4 --batch-size 32 "
        "--out model.pt2 --report report.json"
    )


def test_reproduce_command_qat_settings() -> None:
    base = ("sample:digits_cnn", "recipe.json", "qat", "digits", 120, 64)
    plain = reproduce_command(*base)
    assert plain.endswith(" --batch-size 64 --out model.pt2 --report report.json")
    assert reproduce_command(*base, qat=QatConfig()) == plain
    # steps, batch size, evaluation and seed are not spelled out by `qat`.
    assert reproduce_command(*base, qat=QatConfig(steps=7, batch_size=8, eval_every=2)) == plain
    tuned = QatConfig(lr=3e-4, optimizer="sgd", freeze_bn_step=4, freeze_observer_step=5)
    command = reproduce_command(*base, qat=tuned)
    extra = " --lr 0.0003 --optimizer sgd --freeze-bn-step 4 --freeze-observer-step 5"
    assert command == plain.replace(
        " --out model.pt2 --report report.json", extra + " --out model.pt2 --report report.json"
    )
    # Freeze steps equal to the defaults' share of the steps (60 %, 80 %) are left out.
    explicit = QatConfig(freeze_bn_step=72, freeze_observer_step=96)
    assert reproduce_command(*base, qat=explicit) == plain
    only_lr = reproduce_command(*base, qat=QatConfig(lr=0.01))
    assert only_lr == plain.replace(" --out", " --lr 0.01 --out")

    # The command parses back to the same settings.
    args = _parser().parse_args(shlex.split(command)[3:])
    assert (args.command, args.model, args.mode, args.steps, args.batch_size) == (
        "quantize", "sample:digits_cnn", "qat", 120, 64,
    )  # fmt: skip
    assert (args.lr, args.optimizer, args.freeze_bn_step, args.freeze_observer_step) == (
        3e-4, "sgd", 4, 5,
    )  # fmt: skip
    defaults = _parser().parse_args(shlex.split(plain)[3:])
    assert (defaults.lr, defaults.optimizer) == (QatConfig().lr, QatConfig().optimizer)
    assert (defaults.freeze_bn_step, defaults.freeze_observer_step) == (None, None)


@pytest.fixture
def _cli_side_effects(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Undo what cli.main configures for the whole process (logging, an env variable)."""
    monkeypatch.setenv("TORCH_CPP_LOG_LEVEL", os.environ.get("TORCH_CPP_LOG_LEVEL", "ERROR"))
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    levels = {name: logging.getLogger(name).level for name in ("torch", "torchao")}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, saved in levels.items():
        logging.getLogger(name).setLevel(saved)


@pytest.mark.usefixtures("_cli_side_effects")
def test_cli_qat_flags_reach_the_build(
    tmp_path: Path,
    captured: dict[str, CapturedModel],
    digits_data: Dataset,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # 4 steps: the default freeze steps would be 2 (BN) and 3 (observers); these differ.
    settings: dict[str, Any] = {
        "steps": 4, "batch_size": 16, "optimizer": "sgd", "freeze_bn_step": 1,
        "freeze_observer_step": 2,
    }  # fmt: skip
    out, report = tmp_path / "cli" / "m.pt2", tmp_path / "cli" / "r.json"
    out.parent.mkdir()
    argv = [
        "quantize", "--model", "sample:digits_cnn", "--mode", "qat", "--data", "digits",
        "--steps", "4", "--batch-size", "16", "--optimizer", "sgd", "--freeze-bn-step", "1",
        "--freeze-observer-step", "2", "--out", str(out), "--report", str(report), "--quiet",
    ]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    assert sorted(p.name for p in out.parent.iterdir()) == ["m.pt2", "m.recipe.json", "r.json"]
    written = json.loads(report.read_text(encoding="utf-8"))
    trained = written["stages"]["trained"]
    assert trained["created_by"] == "QAT: 4 steps of 16 from digits"
    assert trained["notes"] == [
        f"kept the best evaluated state, step {written['qat']['kept']['step']} of 4"
    ]
    assert written["recipe"]["mode"] == "qat"
    assert written["reload_check"]["bit_equal"] is True

    # The same settings in-process give the same int8 model, bit for bit.
    same = build(
        captured["digits_cnn"], Recipe(mode="qat"), data="digits", out=tmp_path / "same.pt2",
        **settings,
    )  # fmt: skip
    loaded = torch.export.load(str(out)).module()
    reference = same.stages["converted"].graph_module
    inputs = digits_data.eval_inputs
    with torch.no_grad():
        from_cli = inputs.call(loaded)
        in_process = inputs.call(reference)
    assert torch.equal(from_cli, in_process)
    assert written["quality"]["quantized"] == same.report["quality"]["quantized"]
    assert written["quality"]["fake_quant"] == same.report["quality"]["fake_quant"]

    # The flags matter: the default schedule and Adam train another model.
    default = QatConfig(steps=4, batch_size=16)
    prepared = same.stages["prepared"]
    float_module = same.stages["exported"].graph_module
    other = convert(train_qat(prepared, digits_data, default, teacher=float_module, keep="last"))
    with torch.no_grad():
        assert not torch.equal(inputs.call(other.graph_module), in_process)


def test_after_qat_the_sqnr_reference_is_the_trained_float_model(
    captured: dict[str, CapturedModel], digits_data: Dataset
) -> None:
    """QAT moves the float weights: compared with the float model carrying the trained
    weights, the int8 error is the quantization error alone, and larger SQNR than against the
    float model before training."""
    from workbench.stages.stage import trained_float
    from workbench.stages.steps import exported_stage

    model = captured["digits_cnn"]
    exported = exported_stage(model)
    prepared = prepare(model, dataclasses.replace(Recipe(), mode="qat"))
    config = QatConfig(steps=6, batch_size=32, lr=1e-2)  # a large step: the weights move
    trained = train_qat(prepared, digits_data, config, teacher=exported.graph_module,
                        keep="last")  # fmt: skip
    reference = trained_float(exported, trained)
    trained_state = trained.graph_module.state_dict()
    moved = 0
    for name, value in reference.state_dict().items():
        if name.endswith("num_batches_tracked"):
            continue
        assert torch.equal(value, trained_state[name]), name
        moved += not torch.equal(value, exported.graph_module.state_dict()[name])
    assert moved >= 10  # conv/linear weights and biases, BN parameters and statistics
    # The float graph is unchanged: the same nodes, only other weights.
    assert [n.name for n in reference.graph.nodes] == [
        n.name for n in exported.graph_module.graph.nodes
    ]

    converted = convert(trained).graph_module
    plain = compare(exported.graph_module, converted, digits_data)
    after = compare(exported.graph_module, converted, digits_data, reference_gm=reference)
    assert (plain.reference, after.reference) == ("float model", "float model after QAT")
    assert after.reference_module is reference
    assert (after.float_quality, after.int8_quality) == (plain.float_quality, plain.int8_quality)
    plain_db = {e.exported: e.sqnr_db for e in plain.errors}
    after_db = {e.exported: e.sqnr_db for e in after.errors}
    assert set(plain_db) == set(after_db)
    assert sum(after_db[n] > plain_db[n] for n in plain_db) >= len(plain_db) - 1
    assert min(after_db.values()) > min(plain_db.values()) + 5


def test_own_sqnr_splits_accumulated_error(view: GraphView) -> None:
    # conv2d reads the graph input (exact): its own SQNR is its SQNR. conv2d_1 reads relu
    # (through nothing else): 10 dB after 40 dB is 10^-1 - 10^-4 of relative noise added.
    errors = [_error("conv2d", 45.0), _error("relu", 40.0), _error("conv2d_1", 10.0),
              _error("relu_1", 12.0)]  # fmt: skip
    own = own_sqnr(view, errors)
    assert own["conv2d"] == pytest.approx(45.0)
    assert own["relu"] == pytest.approx(-10 * math.log10(10**-4 - 10**-4.5))
    assert own["conv2d_1"] == pytest.approx(-10 * math.log10(10**-1 - 10**-4))
    assert own["relu_1"] == math.inf  # less relative noise than its input: adds none
    assert set(own) == {"conv2d", "relu", "conv2d_1", "relu_1"}


def test_own_sqnr_points_at_a_broken_node(
    captured: dict[str, CapturedModel], digits_data: Dataset, view: GraphView
) -> None:
    """int4 on conv2d_1: everything after it has a low SQNR (conv2d_1 is 11th of 13 by SQNR),
    but by own SQNR it is among the two worst, far below the int8 convs around it."""
    from workbench.stages.steps import exported_stage

    broken = QuantSetting(weight_dtype="int4", activation_dtype="int4",
                          weight_granularity="per_tensor",
                          activation_scheme="symmetric")  # fmt: skip
    model = captured["digits_cnn"]
    recipe = set_override(Recipe(), "node", "conv2d_1", broken)
    converted = convert(calibrate(prepare(model, recipe), digits_data, batches=4)).graph_module
    errors = compare(exported_stage(model).graph_module, converted, digits_data).errors
    by_sqnr = [e.exported for e in worst_first(list(errors))]
    assert by_sqnr.index("conv2d_1") >= 8
    own = own_sqnr(view, errors)
    ranked = sorted(own, key=own.get)  # type: ignore[arg-type]
    assert "conv2d_1" in ranked[:2]
    assert own["conv2d_1"] < own["conv2d"] - 25
