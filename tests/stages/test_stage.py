"""The stages of one conversion as one `Stages`: names, order, mapping access, the float
reference the int8 model is judged against, and `build.quantize`, which assembles them."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch

from workbench.artifacts.report import compare_stages
from workbench.data.datasets import Dataset
from workbench.model.capture import CapturedModel
from workbench.quantization.recipe import Recipe
from workbench.stages.build import quantize
from workbench.stages.stage import Stages
from workbench.stages.steps import prepare
from workbench.stages.training import QatConfig, train_qat


@pytest.fixture(scope="module")
def ptq(digits_ptq: dict[str, Any]) -> Stages:
    return Stages(digits_ptq["exported"], digits_ptq["prepared"], digits_ptq["calibrated"],
                  digits_ptq["converted"])  # fmt: skip


def test_stages_read_as_a_mapping_in_flow_order(ptq: Stages, digits_ptq: dict[str, Any]) -> None:
    assert list(ptq) == ["exported", "prepared", "calibrated", "converted"]
    assert ptq.as_dict() == digits_ptq and len(ptq) == 4
    assert ptq["calibrated"] is ptq.tuned is digits_ptq["calibrated"]
    assert "trained" not in ptq and not ptq.trained
    with pytest.raises(KeyError):
        ptq["trained"]


def test_a_stage_in_the_wrong_place_is_refused(ptq: Stages) -> None:
    with pytest.raises(ValueError, match=r"Stages\.tuned is a stage named 'prepared'"):
        dataclasses.replace(ptq, tuned=ptq.prepared)
    with pytest.raises(ValueError, match="must be named 'converted'"):
        Stages(ptq.exported, ptq.prepared, ptq.tuned, ptq.tuned)


def test_after_ptq_the_float_reference_is_the_exported_graph(
    ptq: Stages, digits_data: Dataset
) -> None:
    assert ptq.float_reference() is ptq.exported.graph_module
    comparison = compare_stages(ptq, digits_data)
    assert comparison.reference == "float model"
    assert comparison.reference_module is ptq.exported.graph_module


def test_after_qat_the_float_reference_carries_the_trained_weights(
    captured: dict[str, CapturedModel], digits_data: Dataset, ptq: Stages
) -> None:
    model = captured["digits_cnn"]
    prepared = prepare(model, Recipe(mode="qat"))
    config = QatConfig(steps=2, batch_size=32, lr=1e-2)
    trained = train_qat(prepared, digits_data, config, teacher=ptq.exported.graph_module)
    stages = quantize(model, Recipe(mode="qat"), digits_data, qat=config)
    assert list(stages) == ["exported", "prepared", "trained", "converted"] and stages.trained
    reference = stages.float_reference()
    assert reference is not stages.exported.graph_module
    weights = reference.state_dict()
    # Training is seeded: quantize trained the same weights as this separate run.
    for name, value in trained.graph_module.state_dict().items():
        if name in weights and not name.endswith("num_batches_tracked"):
            assert torch.equal(weights[name], value), name
    assert compare_stages(stages, digits_data).reference == "float model after QAT"


def test_quantize_calibrates_as_the_steps_do(
    captured: dict[str, CapturedModel], digits_data: Dataset, ptq: Stages
) -> None:
    seen: list[tuple[str, int, int]] = []

    def progress(phase: str, done: int, total: int, _: dict[str, Any]) -> None:
        seen.append((phase, done, total))

    stages = quantize(captured["digits_cnn"], Recipe(), digits_data, batches=4, progress=progress)
    assert seen == [("calibrate", i, 4) for i in range(1, 5)]
    assert stages.tuned.created_by == ptq.tuned.created_by
    x = digits_data.eval_inputs
    with torch.no_grad():
        assert torch.equal(x.call(stages.converted.graph_module),
                           x.call(ptq.converted.graph_module))  # fmt: skip
