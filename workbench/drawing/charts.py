"""Plotly figures of QAT and quantization records: ranges, accuracy drift, loss, SQNR, grids.

Every function takes plain records (a RangeRecorder, history dicts, NodeError lists, tensors)
and returns a `plotly.graph_objects.Figure`; nothing here knows about the UI.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from workbench.analysis.compare import ActivationGrid, WeightChannels
from workbench.analysis.mixed_precision import SearchResult
from workbench.analysis.sensitivity import SensitivityResult
from workbench.analysis.sqnr import NodeError
from workbench.drawing.overlays import sqnr_colour
from workbench.stages.ranges import RangeRecorder

__all__ = [
    "MAX_GRID_LINES",
    "QUALITY_TITLES",
    "accuracy_drift_figure",
    "activation_grid_figure",
    "activation_histogram_figure",
    "channel_ranges_figure",
    "finite_or_none",
    "grid_levels",
    "loss_figure",
    "observer_range_figure",
    "search_figure",
    "sensitivity_figure",
    "sqnr_bar_figure",
    "weight_channels_figure",
]

QUALITY_TITLES = {
    "accuracy": "accuracy (%)",
    "agreement": "agreement with the float model (%)",
    "mse": "mean squared error",
}
MAX_GRID_LINES = 512


def observer_range_figure(
    recorder: RangeRecorder, name: str, *, step_title: str = "training step"
) -> go.Figure:
    """Band of one fake quantizer's observed min..max over the steps, its scale on a 2nd axis.

    Per-channel quantizers show the smallest min and largest max over channels, and the mean
    scale. A PTQ observer has no scale before convert: only its band is drawn (`step_title`
    "calibration batch").
    """
    steps, low = recorder.series(name, "min")
    _, high = recorder.series(name, "max")
    _, scale = recorder.series(name, "scale")
    x = steps.tolist()
    channels = int(low.shape[1]) if low.dim() == 2 else 1
    per_channel = channels > 1
    low_y = _finite(low.amin(dim=1)) if per_channel else _finite(low[:, 0])
    high_y = _finite(high.amax(dim=1)) if per_channel else _finite(high[:, 0])
    scale_y = _finite(scale.mean(dim=1)) if per_channel else _finite(scale[:, 0])
    figure = make_subplots(specs=[[{"secondary_y": True}]])
    figure.add_trace(go.Scatter(x=x, y=low_y, name="min", mode="lines", line={"width": 1}))
    figure.add_trace(
        go.Scatter(x=x, y=high_y, name="max", mode="lines", fill="tonexty", line={"width": 1})
    )
    if any(v is not None for v in scale_y):
        figure.add_trace(
            go.Scatter(
                x=x,
                y=scale_y,
                name=f"scale (mean of {channels} channels)" if per_channel else "scale",
                mode="lines",
                line={"dash": "dot"},
            ),
            secondary_y=True,
        )
        figure.update_yaxes(
            title_text="scale", secondary_y=True, rangemode="tozero", tickformat=".3~g"
        )
    figure.update_layout(title=f"Observed range of {name}", hovermode="x unified")
    figure.update_xaxes(title_text=step_title)
    figure.update_yaxes(title_text="observed value", secondary_y=False)
    return figure


def channel_ranges_figure(
    recorder: RangeRecorder, name: str, *, step_title: str = "step"
) -> go.Figure:
    """Per-channel min..max of one fake quantizer at the last recorded step, as floating bars."""
    if recorder.count == 0:
        raise ValueError("nothing recorded yet: run at least one training step")
    low = recorder.values[name][recorder.count - 1, :, 2]
    high = recorder.values[name][recorder.count - 1, :, 3]
    channels = list(range(int(low.numel())))
    figure = go.Figure(
        go.Bar(
            x=channels,
            y=(high - low).tolist(),
            base=low.tolist(),
            name="min..max",
            customdata=torch.stack([low, high], dim=1).tolist(),
            hovertemplate="channel %{x}<br>min %{customdata[0]:.4g}"
            "<br>max %{customdata[1]:.4g}<extra></extra>",
        )
    )
    step = int(recorder.steps[recorder.count - 1])
    figure.update_layout(title=f"Per-channel range of {name} at {step_title} {step}")
    figure.update_xaxes(title_text="channel")
    figure.update_yaxes(title_text="observed value")
    return figure


def weight_channels_figure(channels: WeightChannels) -> go.Figure:
    """Per output channel: the int weight's dequantized min..max and the grid's edges.

    A bar reaching a grid edge marks a channel whose range sets its scale; bars far inside
    their edges waste levels (a per-tensor scale set by one wide channel).
    """
    x = list(range(int(channels.low.numel())))
    low, high = channels.low.tolist(), channels.high.tolist()
    scales = channels.scale.expand_as(channels.low).tolist()
    figure = go.Figure(
        go.Bar(
            x=x,
            y=[h - lo for lo, h in zip(low, high, strict=True)],
            base=low,
            name="weights min..max",
            customdata=list(zip(low, high, scales, strict=True)),
            hovertemplate="channel %{x}<br>min %{customdata[0]:.4g}<br>max %{customdata[1]:.4g}"
            "<br>scale %{customdata[2]:.4g}<extra></extra>",
        )
    )
    for edge, name in ((channels.grid_low, "grid min"), (channels.grid_high, "grid max")):
        figure.add_trace(
            go.Scatter(
                x=x, y=edge.expand_as(channels.low).tolist(), name=name, mode="markers",
                marker={"symbol": "line-ew-open", "size": 14, "color": "firebrick"},
            )
        )  # fmt: skip
    how = "per channel" if channels.per_channel else "per tensor"
    figure.update_layout(title=f"int8 weight of {channels.node} by output channel ({how})")
    figure.update_xaxes(title_text="output channel")
    figure.update_yaxes(title_text="weight value")
    return figure


def accuracy_drift_figure(
    history: Iterable[Mapping[str, Any]],
    int8: float | None = None,
    *,
    int8_step: int | None = None,
    float_model: float | None = None,
    marks: Mapping[str, Mapping[str, Any] | None] | None = None,
) -> go.Figure:
    """Float and fake-quant quality at each evaluation; the converted int8 model as one point.

    Reads records with "fake_quant" (QatRun.history). "float" is the model being trained with
    fake quantization off. `int8` is drawn at `int8_step` (default: the last evaluation);
    `float_model`, the quality of the float model before QAT, as a dotted reference line;
    `marks` labels evaluations by name (QatRun's "start", "best", "last") on the fake-quant
    line, one marker per step with the names that fall on it.
    """
    evals = [r for r in history if "fake_quant" in r]
    steps = [int(r["step"]) for r in evals]
    figure = go.Figure()
    figure.add_trace(
        go.Scatter(
            x=steps, y=[r["float"] for r in evals], name="float", mode="lines+markers",
            line={"dash": "dash", "width": 3}, marker={"size": 9},
        )
    )  # fmt: skip
    figure.add_trace(
        go.Scatter(
            x=steps, y=[r["fake_quant"] for r in evals], name="fake-quant", mode="lines+markers"
        )
    )
    labels: dict[int, tuple[list[str], float]] = {}
    for name, record in (marks or {}).items():
        if record is not None and "fake_quant" in record:
            names, _ = labels.setdefault(int(record["step"]), ([], float(record["fake_quant"])))
            names.append(name)
    if labels:
        figure.add_trace(go.Scatter(
            x=list(labels), y=[y for _, y in labels.values()], name="start / best / last",
            mode="markers+text", text=[" · ".join(n) for n, _ in labels.values()],
            textposition="top center",
            marker={"symbol": "circle-open", "size": 16, "line": {"width": 2}},
        ))  # fmt: skip
    if float_model is not None:
        figure.add_hline(
            y=float_model, line_dash="dot", line_color="#555",
            annotation_text="float model before QAT", annotation_position="bottom left",
        )  # fmt: skip
    if int8 is not None:
        figure.add_trace(
            go.Scatter(
                x=[int8_step if int8_step is not None else steps[-1] if steps else 0],
                y=[int8],
                name="int8 (converted)",
                mode="markers",
                marker={"symbol": "star", "size": 16},
            )
        )
    quality = next((str(r["quality"]) for r in evals if "quality" in r), "accuracy")
    figure.update_layout(title="Quality during QAT")
    figure.update_xaxes(title_text="training step")
    figure.update_yaxes(title_text=QUALITY_TITLES.get(quality, quality))
    return figure


def loss_figure(history: Iterable[Mapping[str, Any]]) -> go.Figure:
    """Training loss per step, from records with a "loss" (Stage.history, QatRun)."""
    records = [r for r in history if "loss" in r]
    figure = go.Figure(
        go.Scatter(
            x=[int(r["step"]) for r in records],
            y=[float(r["loss"]) for r in records],
            name="loss",
            mode="lines",
        )
    )
    figure.update_layout(title="Training loss")
    figure.update_xaxes(title_text="training step")
    figure.update_yaxes(title_text="loss")
    return figure


def sqnr_bar_figure(errors: Sequence[NodeError]) -> go.Figure:
    """Per-node SQNR as bars, worst (lowest) first; customdata holds each bar's node name.

    Bars take the graph's SQNR colours (overlays.sqnr_colour). An exact match (infinite SQNR)
    has no bar height and is labelled "exact", last.
    """
    ordered = sorted(errors, key=lambda e: e.sqnr_db)
    heights = [finite_or_none(e.sqnr_db) for e in ordered]
    labels = [f"{e.sqnr_db:.1f} dB" if math.isfinite(e.sqnr_db) else "exact" for e in ordered]
    figure = go.Figure(
        go.Bar(
            x=[e.exported for e in ordered],
            y=heights,
            text=labels,
            customdata=[e.node for e in ordered],
            marker={"color": [sqnr_colour(e.sqnr_db) for e in ordered], "line": {"width": 0.5}},
            name="SQNR",
            hovertemplate="%{customdata}<br>%{text}<extra></extra>",
        )
    )
    figure.update_layout(title="Per-node SQNR (worst first)")
    figure.update_xaxes(title_text="node", type="category")
    figure.update_yaxes(title_text="SQNR (dB)")
    return figure


def sensitivity_figure(
    results: Sequence[SensitivityResult], baseline: float, metric: str
) -> go.Figure:
    """Gain from keeping each node float, best first, over the fully quantized baseline."""
    unit = "" if metric == "mse" else " pp"
    figure = go.Figure(
        go.Bar(
            x=[r.node for r in results],
            y=[r.delta for r in results],
            customdata=[[r.quality, finite_or_none(r.sqnr_db)] for r in results],
            name="gain",
            hovertemplate=f"%{{x}}<br>gain %{{y:.3g}}{unit}<br>{metric} with it float "
            "%{customdata[0]:.4g}<br>SQNR when quantized %{customdata[1]:.1f} dB<extra></extra>",
        )
    )
    figure.add_hline(y=0, line_color="#888")
    figure.update_layout(
        title=f"Gain from keeping one node float ({metric} {baseline:.4g} fully quantized)"
    )
    figure.update_xaxes(title_text="node kept float", type="category")
    figure.update_yaxes(title_text=f"{metric} gain{unit}")
    return figure


# How each kind of search point is drawn: (legend name, marker symbol, colour, size).
_SEARCH_MARKERS = {
    "candidate": ("one node raised alone", "circle-open", "#7f7f7f", 8),
    "path": ("recipes on the way", "circle", "#1f77b4", 8),
    "reference": ("float / start / all int8", "diamond", "#2ca02c", 11),
    "chosen": ("chosen (verified)", "star", "#d62728", 18),
}


def search_figure(result: SearchResult) -> go.Figure:
    """Every recipe the mixed-precision search converted: quality against size (or latency),
    the budget as a dashed line and the chosen recipe marked."""
    latency = result.objective == "latency"
    figure = go.Figure()
    for kind, (name, symbol, colour, size) in _SEARCH_MARKERS.items():
        points = [p for p in result.points if p.kind == kind]
        if latency:
            points = [p for p in points if p.latency_ms is not None]
        if not points:
            continue
        figure.add_trace(go.Scatter(
            x=[p.latency_ms if latency else p.size_bytes / 1024 for p in points],
            y=[p.quality for p in points],
            mode="markers+text" if kind in ("reference", "chosen") else "markers",
            text=[p.label if kind in ("reference", "chosen") else "" for p in points],
            textposition="top center",
            customdata=[[p.label, p.raised] for p in points],
            marker={"symbol": symbol, "color": colour, "size": size},
            name=name,
            hovertemplate="%{customdata[0]}<br>%{y:.4g} · %{x:.4g}<br>%{customdata[1]} node(s) "
            "raised<extra></extra>",
        ))  # fmt: skip
    sign = -1.0 if result.metric == "mse" else 1.0
    budget = result.float_quality - sign * result.max_drop
    figure.add_hline(y=budget, line_dash="dash", line_color="#d62728",
                     annotation_text=f"budget: float {result.float_quality:.4g} "
                     f"- {result.max_drop:g}")  # fmt: skip
    figure.update_layout(
        title=f"Mixed precision: {len(result.raised)} of {len(result.quantized_nodes)} nodes "
        f"raised, {result.metric} {result.chosen_quality:.4g}",
        legend={"orientation": "h", "y": -0.2},
    )
    figure.update_xaxes(title_text="int8 latency (ms, compiled)" if latency
                        else "packed size (KiB)")  # fmt: skip
    figure.update_yaxes(title_text=QUALITY_TITLES.get(result.metric, result.metric))
    return figure


def activation_histogram_figure(
    values: torch.Tensor, scale: float, zero_point: int, qmin: int, qmax: int
) -> go.Figure:
    """Histogram of float activations with the quantization grid and the clipping range.

    Grid lines are the levels (q - zero_point) * scale inside the data's range (every k-th
    one when there are more than MAX_GRID_LINES); dashed lines mark the clipping edges.
    """
    flat = values.detach().flatten().double()
    flat = flat[torch.isfinite(flat)]
    low_clip = (qmin - zero_point) * scale
    high_clip = (qmax - zero_point) * scale
    levels = grid_levels(flat, scale, zero_point, qmin, qmax)
    figure = go.Figure(go.Histogram(x=flat.tolist(), name="activations", nbinsx=100))
    grid_x: list[float | None] = []
    for level in levels:
        grid_x += [level, level, None]
    figure.add_trace(
        go.Scatter(
            x=grid_x,
            y=[0.0, 1.0, None] * len(levels),
            yaxis="y2",
            mode="lines",
            name=f"grid ({len(levels)} levels shown)",
            line={"width": 0.5, "color": "rgba(120,120,120,0.5)"},
            hoverinfo="skip",
        )
    )
    for edge in (low_clip, high_clip):
        figure.add_vline(x=edge, line_dash="dash", line_color="firebrick")
    figure.update_layout(
        title=f"Activations and the grid (scale {scale:.4g}, zero point {zero_point})",
        yaxis2={"overlaying": "y", "range": [0, 1], "visible": False},
        bargap=0.02,
    )
    figure.update_xaxes(title_text="value")
    figure.update_yaxes(title_text="count")
    return figure


def activation_grid_figure(grid: ActivationGrid) -> go.Figure:
    """`activation_histogram_figure` for a recorded node, its clipped share in the title."""
    figure = activation_histogram_figure(
        grid.values, grid.scale, grid.zero_point, grid.qmin, grid.qmax
    )
    source = grid.node if grid.reference == grid.node else f"{grid.node} (after {grid.reference})"
    figure.update_layout(
        title=f"{source}: float activations on the {grid.dtype} grid "
        f"(scale {grid.scale:.4g}, zero point {grid.zero_point}, "
        f"{100 * grid.clipped_fraction:.2f} % clipped)"
    )
    return figure


def grid_levels(
    values: torch.Tensor, scale: float, zero_point: int, qmin: int, qmax: int
) -> list[float]:
    """The grid levels an activation histogram draws: those inside the values' range."""
    if values.numel() == 0:
        return []
    low, high = float(values.min()), float(values.max())
    first = max(qmin, math.ceil(low / scale + zero_point))
    last = min(qmax, math.floor(high / scale + zero_point))
    if last < first:
        return []
    stride = max(1, math.ceil((last - first + 1) / MAX_GRID_LINES))
    return [(q - zero_point) * scale for q in range(first, last + 1, stride)]


def finite_or_none(value: float) -> float | None:
    """`value`, or None (a gap in a chart, an empty table cell) when it is inf or NaN."""
    return value if math.isfinite(value) else None


def _finite(values: torch.Tensor) -> list[float | None]:
    return [finite_or_none(float(v)) for v in values.tolist()]
