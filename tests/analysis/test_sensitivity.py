"""Sensitivity search: keeping a deliberately broken node float helps most, so it ranks first."""

from __future__ import annotations

import math
from typing import Any

import pytest

from workbench.analysis.sensitivity import SensitivityResult, sensitivity, suggest_overrides
from workbench.data.datasets import Dataset
from workbench.model.capture import CapturedModel
from workbench.quantization.editing import set_override
from workbench.quantization.recipe import Override, QuantSetting, Recipe, RecipeError

# int4 per-tensor weights and int4 symmetric activations on conv2d_1: the digits CNN is robust,
# this costs ~1 point (98.33 % against 99.44 % with int8 everywhere, 4 batches calibration).
BROKEN = QuantSetting(
    weight_dtype="int4",
    activation_dtype="int4",
    weight_granularity="per_tensor",
    activation_scheme="symmetric",
)
CANDIDATES = ["conv2d", "conv2d_1", "conv2d_3", "linear"]


@pytest.fixture(scope="module")
def ranked(captured: dict[str, CapturedModel], digits_data: Dataset) -> dict[str, Any]:
    recipe = set_override(Recipe(), "node", "conv2d_1", BROKEN)
    seen: list[tuple[int, int, dict[str, Any]]] = []
    results = sensitivity(
        captured["digits_cnn"], recipe, digits_data, nodes=CANDIDATES,
        progress=lambda d, t, info: seen.append((d, t, info)),
    )  # fmt: skip
    return {"results": results, "progress": seen, "recipe": recipe}


def test_broken_node_ranks_first(ranked: dict[str, Any]) -> None:
    results: list[SensitivityResult] = ranked["results"]
    assert sorted(r.node for r in results) == sorted(CANDIDATES)
    first, *rest = results
    assert first.node == "conv2d_1"
    assert first.delta >= 0.8  # at least 3 of 360 eval images recovered
    assert all(first.delta > r.delta for r in rest)
    assert [r.delta for r in results] == sorted((r.delta for r in results), reverse=True)
    baseline = ranked["progress"][0][2]["quality"]
    for r in results:
        assert r.delta == pytest.approx(r.quality - baseline)
        assert math.isfinite(r.sqnr_db)
    # Baseline SQNR of the int4 conv is far below the int8 first conv's.
    by_node = {r.node: r for r in results}
    assert by_node["conv2d_1"].sqnr_db < by_node["conv2d"].sqnr_db - 20
    assert [(d, t) for d, t, _ in ranked["progress"]] == [(i, 5) for i in range(1, 6)]
    assert [info["node"] for _, _, info in ranked["progress"]] == [None, *CANDIDATES]


def test_suggest_overrides(ranked: dict[str, Any]) -> None:
    results: list[SensitivityResult] = ranked["results"]
    suggested = suggest_overrides(results, 1)
    assert suggested == [Override("node", "conv2d_1", QuantSetting(keep_float=True))]
    helpful = [r for r in results if r.delta > 0]
    assert len(suggest_overrides(results, 10)) == len(helpful)
    recipe = ranked["recipe"].with_overrides(*suggested)
    assert recipe.overrides[-1].setting.keep_float is True


def test_stop_top_and_unknown_nodes(
    captured: dict[str, CapturedModel], digits_data: Dataset
) -> None:
    model = captured["digits_cnn"]
    calls = iter(range(100))
    stopped = sensitivity(model, Recipe(), digits_data, nodes=CANDIDATES, top=1,
                          should_stop=lambda: next(calls) >= 2)  # fmt: skip
    assert [r.node for r in stopped] == ["conv2d"]  # baseline, conv2d, then stop
    assert sensitivity(model, Recipe(), digits_data, should_stop=lambda: True) == []
    kept = set_override(Recipe(), "node", "linear", QuantSetting(keep_float=True))
    with pytest.raises(RecipeError, match="linear"):
        sensitivity(model, kept, digits_data, nodes=["linear"])
