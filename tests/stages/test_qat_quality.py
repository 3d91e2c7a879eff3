"""QAT keeps the best it saw (issue 17 item 3), stops on loss spikes (item 4), and on a
MobileNetV2-style model ends at or above its calibrated start and the bare torchao loop
(item 2; benchmarks/qat_quality.py)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from benchmarks.qat_quality import compare
from tests.stages.test_training import HugeAtStep, assert_same_state
from workbench.data.datasets import Dataset
from workbench.errors import WorkbenchError
from workbench.model.capture import CapturedModel
from workbench.quantization.recipe import Recipe
from workbench.stages.stage import Stage
from workbench.stages.steps import prepare
from workbench.stages.training import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_NAME,
    QatConfig,
    QatRun,
    TrainingError,
    qat_lines,
    qat_summary,
)

CONFIG = QatConfig(steps=6, freeze_bn_step=2, freeze_observer_step=4, eval_every=2,
                   calibration_batches=2)  # fmt: skip


@pytest.fixture(scope="module")
def qat_stage(captured: dict[str, CapturedModel]) -> Stage:
    return prepare(captured["digits_cnn"], Recipe(mode="qat"))


@pytest.mark.slow
def test_a_run_that_ends_worse_keeps_its_calibrated_start(
    qat_stage: Stage, digits_data: Dataset, tmp_path: Path
) -> None:
    # Adam at 3e-2 wrecks the digits CNN within a few steps: worse than calibration alone.
    config = dataclasses.replace(CONFIG, lr=3e-2)
    start = QatRun(qat_stage, digits_data, dataclasses.replace(config, steps=0))
    assert start.history == [start.start] and start.start["step"] == 0
    assert start.start["fake_quant"] > 95.0  # observers calibrated before step 0
    run = QatRun(qat_stage, digits_data, config, checkpoint_dir=tmp_path, checkpoint_every=3)
    run.run(should_stop=lambda: run.step_count >= 3)
    run = QatRun.resume(tmp_path / CHECKPOINT_NAME, qat_stage, digits_data, config)
    run.run()
    assert run.ended_worse and run.best == run.start
    assert run.last["fake_quant"] < run.start["fake_quant"] - 5

    best, last = run.stage(), run.stage("last")
    assert_same_state(best.graph_module.state_dict(), start.stage().graph_module.state_dict())
    assert_same_state(last.graph_module.state_dict(), run.model.state_dict())
    assert best.notes == ("kept the best evaluated state, step 0 of 6",) and last.notes == ()

    summary = qat_summary(best.history)
    assert summary is not None and summary["ended_worse"]
    assert summary["kept"] == {"step": 0, "keep": "best"}
    assert summary["start"] == summary["best"] == {"step": 0, **{
        k: run.start[k] for k in ("fake_quant", "float")}}  # fmt: skip
    assert summary["last"]["step"] == 6
    lines = qat_lines(summary)
    assert len(lines) == 2 and lines[1].startswith("warning: QAT ended worse than its start: ")
    assert lines[1].endswith("calibrated; the best state was converted.")
    assert qat_summary(last.history)["kept"] == {"step": 6, "keep": "last"}  # type: ignore[index]
    with pytest.raises(ValueError, match="keep must be one of"):
        run.stage("first")


def test_summary_follows_the_quality_direction() -> None:
    def record(step: int, value: float) -> dict[str, object]:
        return {"stage": "eval", "step": step, "float": 0.0, "fake_quant": value,
                "quality": "mse"}  # fmt: skip

    history = [record(0, 0.5), {"stage": "train", "step": 1, "loss": 1.0}, record(2, 0.2),
               record(4, 0.3)]  # fmt: skip
    summary = qat_summary(history)
    assert summary is not None
    assert (summary["best"]["step"], summary["last"]["step"]) == (2, 4)
    assert not summary["ended_worse"] and summary["kept"] is None
    assert qat_lines(summary) == [
        "QAT fake-quant mse: start (calibrated, step 0) 0.50, best 0.20 at step 2, "
        "last 0.30 at step 4"
    ]
    assert qat_summary([{"stage": "train", "step": 1, "loss": 1.0}]) is None


@pytest.mark.slow
def test_a_huge_finite_loss_stops_and_restores_the_last_good_state(
    qat_stage: Stage, digits_data: Dataset, tmp_path: Path
) -> None:
    data = HugeAtStep.like(digits_data, 6)
    data.value = 1e38  # a finite loss of about 1e31: no NaN to catch
    # BN frozen (batch statistics would normalise the batch away), observers still on
    # (frozen ones would clip it to their old range): the 1e31.
    config = dataclasses.replace(CONFIG, steps=10, freeze_bn_step=2, freeze_observer_step=8)
    run = QatRun(qat_stage, data, config, checkpoint_dir=tmp_path, checkpoint_every=1)
    for _ in range(5):
        run.step()
    good = {k: v.clone() for k, v in run.model.state_dict().items()}
    written = (tmp_path / CHECKPOINT_NAME).read_bytes()
    with pytest.raises(TrainingError) as info:
        run.step()
    problem = info.value.problem
    assert problem.startswith("The training loss jumped to ") and "at step 6" in problem
    assert "over 100 times the largest loss of the last 5 steps" in problem
    assert "restored to step 5" in problem and "check the data" in info.value.fix
    assert float(problem.split("jumped to ")[1].split(",")[0]) > 1e20
    assert run.step_count == 5 and torch.isnan(run.losses[5:]).all()
    assert_same_state(run.model.state_dict(), good)
    assert (tmp_path / CHECKPOINT_NAME).read_bytes() == written


@pytest.mark.slow
def test_a_normal_run_raises_no_spike(qat_stage: Stage, digits_data: Dataset) -> None:
    config = QatConfig(steps=40, freeze_bn_step=24, freeze_observer_step=32)
    run = QatRun(qat_stage, digits_data, config, record_ranges=False).run()
    assert run.done and torch.isfinite(run.losses).all()
    # The largest jump over the recent largest loss leaves the threshold far away.
    jumps = [float(run.losses[i] / run.losses[max(0, i - 20) : i].max()) for i in range(3, 40)]
    assert max(jumps) < config.spike_factor / 10


def test_an_earlier_checkpoint_version_is_refused_plainly(
    qat_stage: Stage, digits_data: Dataset, tmp_path: Path
) -> None:
    run = QatRun(qat_stage, digits_data, CONFIG)
    old = {**run.state(), "version": 1}
    del old["best"]
    torch.save(old, tmp_path / "old.pt")
    assert QatRun.peek(tmp_path / "old.pt") is None
    with pytest.raises(WorkbenchError, match="version 1, written by an earlier workbench"):
        QatRun.resume(tmp_path / "old.pt", qat_stage, digits_data, CONFIG)
    assert run.state()["format"] == CHECKPOINT_FORMAT


@pytest.mark.slow
def test_qat_on_a_mobilenet_v2_ends_at_or_above_its_start_and_the_bare_loop() -> None:
    result = compare("mobilenet_v2", steps=20, before=False)  # the old loop: benchmarks/
    assert result["float_classes"] == 10  # predictions spread over every class
    ours, bare = result["workbench"], result["bare"]
    start = ours["evaluations"][0]
    assert ours["fake_quant"] >= start and ours["fake_quant"] == max(ours["evaluations"].values())
    assert ours["int8"] >= bare["int8"] - 1.0
    assert ours["int8"] >= result["ptq_int8"] - 1.0
