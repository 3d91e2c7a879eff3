"""Plotly figures from QAT records: trace counts, axis titles and the plotted values."""

from __future__ import annotations

import math

import plotly.graph_objects as go
import pytest
import torch

from workbench.analysis.sqnr import NodeError
from workbench.data.datasets import Dataset
from workbench.drawing.charts import (
    accuracy_drift_figure,
    activation_histogram_figure,
    channel_ranges_figure,
    loss_figure,
    observer_range_figure,
    sqnr_bar_figure,
)
from workbench.model.capture import CapturedModel
from workbench.quantization.recipe import Recipe
from workbench.stages.steps import prepare
from workbench.stages.training import QatConfig, QatRun


@pytest.fixture(scope="module")
def qat_run(captured: dict[str, CapturedModel], digits_data: Dataset) -> QatRun:
    stage = prepare(captured["digits_cnn"], Recipe(mode="qat"))
    return QatRun(stage, digits_data, QatConfig(steps=4, eval_every=2)).run()


def test_observer_range_band_is_the_recorded_min_max(qat_run: QatRun) -> None:
    recorder = qat_run.recorder
    assert recorder is not None
    per_tensor = next(q.name for q in recorder.quantizers if q.channels == 1)
    figure = observer_range_figure(recorder, per_tensor)
    assert isinstance(figure, go.Figure) and len(figure.data) == 3
    low, high, scale = figure.data
    assert list(low.x) == [1, 2, 3, 4]
    assert list(low.y) == recorder.values[per_tensor][:4, 0, 2].tolist()
    assert list(high.y) == recorder.values[per_tensor][:4, 0, 3].tolist()
    assert list(scale.y) == recorder.values[per_tensor][:4, 0, 0].tolist()
    assert high.fill == "tonexty" and scale.yaxis == "y2"
    assert figure.layout.xaxis.title.text == "training step"
    assert figure.layout.yaxis.title.text == "observed value"
    assert figure.layout.yaxis2.title.text == "scale"

    per_channel = next(q for q in recorder.quantizers if q.channels > 1)
    figure = observer_range_figure(recorder, per_channel.name)
    values = recorder.values[per_channel.name][:4]
    assert list(figure.data[0].y) == values[:, :, 2].amin(dim=1).tolist()
    assert list(figure.data[1].y) == values[:, :, 3].amax(dim=1).tolist()
    assert figure.data[2].name == f"scale (mean of {per_channel.channels} channels)"


def test_channel_ranges_at_the_last_step(qat_run: QatRun) -> None:
    recorder = qat_run.recorder
    assert recorder is not None
    quantizer = next(q for q in recorder.quantizers if q.channels > 1)
    figure = channel_ranges_figure(recorder, quantizer.name)
    assert len(figure.data) == 1
    (bars,) = figure.data
    low = recorder.values[quantizer.name][3, :, 2]
    high = recorder.values[quantizer.name][3, :, 3]
    assert list(bars.x) == list(range(quantizer.channels))
    assert list(bars.base) == low.tolist()
    torch.testing.assert_close(torch.tensor(bars.base) + torch.tensor(bars.y), high)
    assert figure.layout.xaxis.title.text == "channel"
    assert "at step 4" in figure.layout.title.text


def test_accuracy_drift_and_loss(qat_run: QatRun) -> None:
    history = qat_run.train_history()
    figure = accuracy_drift_figure(history)
    assert len(figure.data) == 2
    assert list(figure.data[0].x) == [0, 2, 4]  # 0: the calibrated start
    assert list(figure.data[0].y) == [h["float"] for h in qat_run.history]
    assert list(figure.data[1].y) == [h["fake_quant"] for h in qat_run.history]
    assert figure.layout.yaxis.title.text == "accuracy (%)"
    with_int8 = accuracy_drift_figure(qat_run.history, int8=97.5)
    assert len(with_int8.data) == 3
    assert list(with_int8.data[2].x) == [4] and list(with_int8.data[2].y) == [97.5]
    stopped = accuracy_drift_figure(qat_run.history, 97.5, int8_step=3, float_model=99.0)
    assert list(stopped.data[2].x) == [3]
    (reference,) = stopped.layout.shapes
    assert (reference.y0, reference.y1, reference.line.dash) == (99.0, 99.0, "dot")

    figure = loss_figure(history)
    assert len(figure.data) == 1
    assert list(figure.data[0].x) == [1, 2, 3, 4]
    assert list(figure.data[0].y) == qat_run.losses.tolist()
    assert figure.layout.yaxis.title.text == "loss"


def test_sqnr_bars_worst_first() -> None:
    def error(name: str, db: float) -> NodeError:
        return NodeError(name + "_c", name, name, name, db, 0.1, False, True)

    errors = [error("conv2d", 31.0), error("linear", 12.5), error("relu", math.inf),
              error("conv2d_1", 20.0)]  # fmt: skip
    figure = sqnr_bar_figure(errors)
    assert len(figure.data) == 1
    (bars,) = figure.data
    assert list(bars.x) == ["linear", "conv2d_1", "conv2d", "relu"]
    assert list(bars.customdata) == ["linear_c", "conv2d_1_c", "conv2d_c", "relu_c"]
    assert list(bars.y) == [12.5, 20.0, 31.0, None]
    assert bars.text[-1] == "exact"
    # The graph's SQNR colours: 10-20 dB, 20-30 dB, 30-40 dB, then exact (the best band).
    assert list(bars.marker.color) == ["#fc8d59", "#fee08b", "#91cf60", "#1a9850"]
    assert figure.layout.yaxis.title.text == "SQNR (dB)"


def test_activation_histogram_grid() -> None:
    values = torch.linspace(-0.3, 1.0, 200)
    figure = activation_histogram_figure(values, 0.1, 3, 0, 255)
    assert len(figure.data) == 2
    histogram, grid = figure.data
    assert histogram.type == "histogram" and len(histogram.x) == 200
    levels = [x for x in grid.x if x is not None][::2]
    # Levels inside [-0.3, 1.0]: q from 0 ((0 - 3) * 0.1 = -0.3) to 13.
    assert levels == pytest.approx([(q - 3) * 0.1 for q in range(0, 14)])
    edges = [shape.x0 for shape in figure.layout.shapes]
    assert edges == pytest.approx([-0.3, 25.2])
    assert figure.layout.xaxis.title.text == "value"
    assert figure.layout.yaxis.title.text == "count"
