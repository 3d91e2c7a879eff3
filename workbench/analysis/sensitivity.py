"""Which nodes hurt quality most when quantized: keep each one float in turn and measure (PTQ).

For every candidate node the recipe gets a node rule `keep_float: true`, the model is prepared,
calibrated and converted (PTQ, whatever the recipe's mode) and evaluated on the data's eval
split. `delta` is the improvement over the fully quantized baseline in the quality's own
direction (accuracy/agreement: points gained; MSE: error removed), so the largest delta is
the node most worth keeping float. `sqnr_db` is the node's SQNR in the baseline converted
model (`workbench.analysis.sqnr.per_node_sqnr`), NaN when the node has no comparable output.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch

from workbench.analysis.sqnr import per_node_sqnr
from workbench.data.datasets import Dataset
from workbench.graph.view import describe
from workbench.model.capture import CapturedModel
from workbench.quantization.editing import set_override
from workbench.quantization.quantizer import quantizable_nodes
from workbench.quantization.recipe import Override, QuantSetting, Recipe, RecipeError
from workbench.stages.steps import (
    StepProgress,
    StopRequested,
    calibrate,
    convert,
    evaluate,
    prepare,
)

__all__ = [
    "SQNR_SAMPLES",
    "SensitivityProgress",
    "SensitivityResult",
    "iter_sensitivity",
    "sensitivity",
    "suggest_overrides",
]

SQNR_SAMPLES = 64


@dataclass(frozen=True)
class SensitivityResult:
    """Quality with one node kept float, its gain over the baseline and its baseline SQNR."""

    node: str
    quality: float
    delta: float
    sqnr_db: float


@dataclass(frozen=True)
class SensitivityProgress:
    """Where a search stands: `done` of `total` PTQ runs, the baseline and the ranking so far."""

    done: int
    total: int
    baseline: float
    results: tuple[SensitivityResult, ...]  # ranked best first
    node: str | None  # the node just measured (None after the baseline)


def sensitivity(
    captured: CapturedModel,
    recipe: Recipe,
    data: Dataset,
    *,
    nodes: Iterable[str] | None = None,
    top: int | None = None,
    calibration_batches: int = 4,
    progress: StepProgress | None = None,
    should_stop: StopRequested | None = None,
) -> list[SensitivityResult]:
    """Rank quantized nodes by how much keeping each float improves quality, best first.

    `nodes` restricts the candidates (default: every node the recipe quantizes and does not
    already keep float); `top` keeps only the first results. `progress(done, total, info)`
    follows the 1 + len(candidates) PTQ runs; `should_stop()` is checked before each run and
    ends the search with the nodes measured so far.
    """
    results: tuple[SensitivityResult, ...] = ()
    search = iter_sensitivity(
        captured, recipe, data, nodes=nodes, calibration_batches=calibration_batches
    )
    while should_stop is None or not should_stop():
        state = next(search, None)
        if state is None:
            break
        results = state.results
        if progress is not None:
            quality = next((r.quality for r in results if r.node == state.node), state.baseline)
            info = {"stage": "sensitivity", "node": state.node, "quality": quality}
            progress(state.done, state.total, info)
    return list(results if top is None else results[:top])


def iter_sensitivity(
    captured: CapturedModel,
    recipe: Recipe,
    data: Dataset,
    *,
    nodes: Iterable[str] | None = None,
    calibration_batches: int = 4,
) -> Iterator[SensitivityProgress]:
    """The search of `sensitivity`, one PTQ run per iteration: the baseline, then each node.

    Stop iterating to stop the search; the last state holds the ranking of what was measured.
    """
    recipe = dataclasses.replace(recipe, mode="ptq")
    gm = captured.graph_module()
    view = describe(gm, stage="exported")
    quantized = {
        name: eff
        for name, eff in quantizable_nodes(gm, recipe, view).items()
        if not eff.setting.keep_float
    }
    if nodes is None:
        candidates = list(quantized)
    else:
        candidates = list(dict.fromkeys(nodes))
        unknown = [n for n in candidates if n not in quantized]
        if unknown:
            raise RecipeError(
                f"Not quantized by this recipe (or already kept float): {', '.join(unknown)}.",
                f"Choose among: {', '.join(quantized)}.",
            )
    teacher = gm if data.needs_teacher() else None
    total = 1 + len(candidates)

    def measure(plan: Recipe) -> tuple[float, torch.nn.Module]:
        prepared = prepare(captured, plan)
        calibrated = calibrate(prepared, data, batches=calibration_batches)
        converted = convert(calibrated).graph_module
        return evaluate(converted, data, teacher=teacher), converted

    baseline, converted = measure(recipe)
    yield SensitivityProgress(1, total, baseline, (), None)
    first = next(iter(data.eval_batches(SQNR_SAMPLES)))
    inputs = first.inputs.take(min(first.size, SQNR_SAMPLES))
    sqnr_by_node = {e.exported: e.sqnr_db for e in per_node_sqnr(gm, converted, inputs)}
    sign = -1.0 if data.quality == "mse" else 1.0
    order = {name: i for i, name in enumerate(candidates)}

    results: list[SensitivityResult] = []
    for done, name in enumerate(candidates, start=2):
        quality, _ = measure(set_override(recipe, "node", name, QuantSetting(keep_float=True)))
        results.append(
            SensitivityResult(
                name, quality, sign * (quality - baseline), sqnr_by_node.get(name, math.nan)
            )
        )
        results.sort(key=lambda r: (-r.delta, _sqnr_key(r.sqnr_db), order[r.node]))
        yield SensitivityProgress(done, total, baseline, tuple(results), name)


def suggest_overrides(results: Iterable[SensitivityResult], count: int) -> list[Override]:
    """Node rules keeping float the first `count` results that improve quality (delta > 0)."""
    helpful = (r for r in results if r.delta > 0)
    return [
        Override("node", r.node, QuantSetting(keep_float=True))
        for r in itertools.islice(helpful, count)
    ]


def _sqnr_key(db: float) -> float:
    # Ties on delta: the lower SQNR first; unknown SQNR last.
    return math.inf if math.isnan(db) else db
