"""The resumable QAT runner: bit-exact resume, stopping, evaluation on copies, NaN handling.

(Best-state keeping, loss spikes and QAT quality on a MobileNetV2: test_qat_quality.py.)"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torchao.quantization.pt2e import (
    disable_observer,
    move_exported_model_to_eval,
    move_exported_model_to_train,
)

from workbench.data.datasets import Batch, Dataset, TensorDataset
from workbench.errors import WorkbenchError
from workbench.model.capture import CapturedModel
from workbench.quantization.recipe import Recipe
from workbench.stages.stage import Stage
from workbench.stages.steps import convert, evaluate, prepare
from workbench.stages.training import (
    CHECKPOINT_NAME,
    QatConfig,
    QatRun,
    TrainingError,
    freeze_bn_,
    train_qat,
)

CONFIG = QatConfig(steps=6, freeze_bn_step=2, freeze_observer_step=4, eval_every=2,
                   calibration_batches=2)  # fmt: skip


@pytest.fixture(scope="module")
def qat_stage(captured: dict[str, CapturedModel]) -> Stage:
    return prepare(captured["digits_cnn"], Recipe(mode="qat"))


def plain_qat_loop(stage: Stage, data: Dataset, config: QatConfig) -> tuple[Any, list[float]]:
    """An independent reference: the QAT loop written out, without the runner."""
    torch.manual_seed(config.seed)
    model = stage.copy_module()
    move_exported_model_to_eval(model)  # observers calibrated first, as PTQ would
    with torch.no_grad():
        for batch in itertools.islice(data.train_batches(config.batch_size, seed=config.seed),
                                      config.calibration_batches):  # fmt: skip
            batch.inputs.call(model)
    move_exported_model_to_train(model)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], config.lr)
    batches = data.train_batches(config.batch_size, seed=config.seed)
    losses = []
    for step in range(1, config.steps + 1):
        if step > config.bn_freeze_at:
            freeze_bn_(model)
        if step == config.observer_freeze_at + 1:
            model.apply(disable_observer)
        batch = next(batches)
        loss = torch.nn.functional.cross_entropy(batch.inputs.call(model), batch.targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.item()))
    return model, losses


def assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype, key
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, equal_nan=True, msg=key)


@pytest.mark.slow
def _calls(model: torch.fx.GraphModule) -> list[tuple[str, list[object]]]:
    """Each call's target and its literal (non-node) arguments, in graph order."""
    return [(str(n.target), [a for a in n.args if not isinstance(a, torch.fx.Node)])
            for n in model.graph.nodes if n.op == "call_function"]  # fmt: skip


def test_resume_gives_the_uninterrupted_result(
    qat_stage: Stage, digits_data: Dataset, tmp_path: Path
) -> None:
    whole = QatRun(qat_stage, digits_data, CONFIG).run()
    assert whole.done and whole.step_count == 6
    # Same as a plain training loop with the same seed.
    reference, losses = plain_qat_loop(qat_stage, digits_data, CONFIG)
    assert whole.losses.tolist() == losses
    trained = whole.stage()
    assert_same_state(whole.model.state_dict(), reference.state_dict())
    # train_qat is one uninterrupted run.
    assert_same_state(train_qat(qat_stage, digits_data, CONFIG).graph_module.state_dict(),
                      trained.graph_module.state_dict())  # fmt: skip

    first = QatRun(qat_stage, digits_data, CONFIG, checkpoint_dir=tmp_path, checkpoint_every=3)
    first.run(should_stop=lambda: first.step_count >= 3)
    assert first.stopped and first.step_count == 3
    path = tmp_path / CHECKPOINT_NAME
    assert path.is_file() and [p.name for p in tmp_path.iterdir()] == [CHECKPOINT_NAME]

    resumed = QatRun.resume(path, qat_stage, digits_data, CONFIG)
    assert resumed.step_count == 3
    assert torch.isnan(resumed.losses[3:]).all()
    resumed.run()
    assert_same_state(resumed.model.state_dict(), whole.model.state_dict())
    assert torch.equal(resumed.losses, whole.losses)
    assert all(torch.isfinite(resumed.losses))
    assert resumed.history == whole.history
    assert [h["step"] for h in whole.history] == [0, 2, 4, 6]  # 0: the calibrated start
    assert whole.recorder is not None and resumed.recorder is not None
    assert whole.recorder.count == resumed.recorder.count == 6
    assert torch.equal(whole.recorder.steps, resumed.recorder.steps)
    torch.testing.assert_close(
        whole.recorder._buffer, resumed.recorder._buffer, rtol=0, atol=0, equal_nan=True
    )
    # The same calls with the same literals (BN frozen in both graphs); torchao's train/eval
    # switches rename nodes, and the two runs switched a different number of times.
    assert _calls(resumed.model) == _calls(whole.model)

    # The trained stage converts and keeps its accuracy.
    assert trained.name == "trained" and trained.ranges is not None
    assert trained.ranges.count == 6
    kept = whole.best
    assert kept is not None and trained.history[-1] == {"stage": "kept", "step": kept["step"],
                                                        "keep": "best"}  # fmt: skip
    losses = [r["loss"] for r in trained.history if r["stage"] == "train"]
    assert losses == whole.losses.tolist()
    int8 = evaluate(convert(trained).graph_module, digits_data)
    assert int8 > 95.0
    assert whole.history[-1]["fake_quant"] > 95.0 and whole.history[-1]["float"] > 95.0


def test_stop_request_is_honoured_within_a_step(qat_stage: Stage, digits_data: Dataset) -> None:
    seen: list[tuple[int, int, dict[str, Any]]] = []
    run = QatRun(qat_stage, digits_data, CONFIG)
    run.run(progress=lambda s, t, r: seen.append((s, t, r)), should_stop=lambda: len(seen) >= 2)
    assert run.stopped and run.step_count == 2 and not run.done
    assert [(s, t) for s, t, _ in seen] == [(1, 6), (2, 6)]
    assert seen[1][2]["eval"]["step"] == 2  # eval_every=2
    assert torch.isfinite(run.losses[:2]).all() and torch.isnan(run.losses[2:]).all()
    stage = run.stage("last")
    assert stage.notes == ("training stopped after 2 of 6",)
    assert stage.ranges is not None and stage.ranges.count == 2


def test_evaluation_leaves_the_model_alone(qat_stage: Stage, digits_data: Dataset) -> None:
    run = QatRun(qat_stage, digits_data, dataclasses.replace(CONFIG, eval_every=0))
    run.step()
    before = {k: v.clone() for k, v in run.model.state_dict().items()}
    calls = _calls(run.model)
    record = run.evaluate()
    assert_same_state(run.model.state_dict(), before)
    assert _calls(run.model) == calls
    assert all(int(v) == 1 for k, v in before.items() if k.endswith("observer_enabled"))
    assert record["step"] == 1 and record["quality"] == "accuracy"
    assert 0.0 <= record["fake_quant"] <= 100.0 and record["float"] > 90.0
    assert run.history == [run.start, record] and run.start["step"] == 0


def test_nan_loss_keeps_the_last_good_checkpoint(
    qat_stage: Stage, digits_data: Dataset, tmp_path: Path
) -> None:
    config = QatConfig(steps=20, lr=1e10)
    run = QatRun(qat_stage, digits_data, config, checkpoint_dir=tmp_path, checkpoint_every=1)
    with pytest.raises(TrainingError) as info:
        run.run()
    assert info.value.problem.startswith("The training loss became nan at step 3;")
    assert "restored to step 2" in info.value.problem
    assert "Lower the learning rate" in info.value.fix and "1e+09" in info.value.fix
    saved = torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)
    assert saved["step"] == 2 and run.step_count == 2
    assert_same_state(run.model.state_dict(), saved["model"])


class HugeAtStep(TensorDataset):
    """Digits whose training batch `bad_step` (1-based) is all `value`.

    Every pass over the batches has it there, QAT's calibration before step 0 too: keep
    `bad_step` above the config's calibration_batches.

    1e38 or -3e38 give a finite loss (~1e31 with BN frozen and observers on) that would ruin
    the model without a NaN (QatRun stops on it as a spike); inf gives NaN.
    """

    bad_step: int = 0
    value: float = float("inf")

    @classmethod
    def like(cls, data: TensorDataset, bad_step: int) -> HugeAtStep:
        huge = cls(data.spec, data.task, data.train_inputs, data.train_targets,
                   data.eval_inputs, data.eval_targets)  # fmt: skip
        huge.bad_step = bad_step
        return huge

    def train_batches(self, batch_size: int, *, seed: int = 0) -> Iterator[Batch]:
        for index, batch in enumerate(super().train_batches(batch_size, seed=seed)):
            if index + 1 == self.bad_step:
                inputs = batch.inputs.map(lambda t: torch.full_like(t, self.value))
                batch = dataclasses.replace(batch, inputs=inputs)
            yield batch


def test_huge_batch_restores_the_last_good_state(
    qat_stage: Stage, digits_data: Dataset, tmp_path: Path
) -> None:
    data = HugeAtStep.like(digits_data, 4)
    run = QatRun(qat_stage, data, CONFIG, checkpoint_dir=tmp_path, checkpoint_every=2)
    path = tmp_path / CHECKPOINT_NAME
    run.step()
    run.step()
    written = path.read_bytes()
    good = {k: v.clone() for k, v in run.model.state_dict().items()}
    run.step()  # step 3: fine, not a checkpoint step
    with pytest.raises(TrainingError) as info:
        run.step()
    assert "at step 4" in info.value.problem and "restored to step 2" in info.value.problem
    assert str(path) in info.value.problem
    assert path.read_bytes() == written
    assert run.step_count == 2 and run.recorder is not None and run.recorder.count == 2
    assert_same_state(run.model.state_dict(), good)
    assert torch.isnan(run.losses[2:]).all() and run.history[-1]["step"] == 2


def test_resume_refuses_other_settings(
    qat_stage: Stage, digits_data: Dataset, tmp_path: Path
) -> None:
    run = QatRun(qat_stage, digits_data, CONFIG)
    run.step()
    path = run.checkpoint(tmp_path / "mine.pt")
    with pytest.raises(WorkbenchError, match="same steps, batch size"):
        QatRun.resume(path, qat_stage, digits_data, dataclasses.replace(CONFIG, lr=1e-3))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(WorkbenchError, match="cannot be read"):
        QatRun.resume(tmp_path / "junk.pt", qat_stage, digits_data, CONFIG)
