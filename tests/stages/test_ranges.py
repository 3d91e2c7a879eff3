"""Recorded fake-quant ranges are exactly the observers' buffers at the recorded step."""

from __future__ import annotations

import torch
from torchao.quantization.pt2e import move_exported_model_to_train

from workbench.data.datasets import load_data
from workbench.model.capture import CapturedModel
from workbench.quantization.recipe import Recipe
from workbench.stages.ranges import FIELDS, RangeRecorder, fake_quantizers
from workbench.stages.steps import prepare
from workbench.stages.training import QatConfig, train_qat


def _snapshot(model: torch.fx.GraphModule, names: list[str]) -> dict[str, torch.Tensor]:
    out = {}
    for name in names:
        fq = model.get_submodule(name)
        obs = fq.activation_post_process
        out[name] = torch.stack(
            [fq.scale.flatten().float(), fq.zero_point.flatten().float(),
             obs.min_val.flatten(), obs.max_val.flatten()], dim=1,
        )  # fmt: skip
    return out


def test_recorded_ranges_equal_the_buffers_at_each_step(
    captured: dict[str, CapturedModel],
) -> None:
    cap = captured["digits_cnn"]
    data = load_data("digits", cap.signature)
    model = prepare(cap, Recipe(mode="qat")).copy_module()
    move_exported_model_to_train(model)
    quantizers = fake_quantizers(model)
    names = [q.name for q in quantizers]
    # 13 fake quantizers: 8 activations (per tensor), 5 weights (per channel, out channels).
    assert sorted(q.channels for q in quantizers) == [1] * 8 + [10, 16, 16, 16, 32]
    recorder = RangeRecorder(model, capacity=3)
    batches = data.train_batches(32)
    snapshots = []
    with torch.no_grad():
        for step in (1, 2, 3):
            next(batches).inputs.call(model)
            recorder.record(step)
            snapshots.append(_snapshot(model, names))
    assert recorder.steps.tolist() == [1, 2, 3]
    for slot, snap in enumerate(snapshots):
        for name in names:
            assert torch.equal(recorder.values[name][slot], snap[name]), (slot, name)
    per_tensor = next(q.name for q in quantizers if q.channels == 1)
    steps, scales = recorder.series(per_tensor, "scale")
    assert steps.tolist() == [1, 2, 3] and scales.shape == (3, 1)
    weight = next(q for q in quantizers if q.channels == 10)  # the linear head's weight
    assert recorder.series(weight.name, "max")[1].shape == (3, 10)
    assert FIELDS == ("scale", "zero_point", "min", "max")


def test_train_qat_records_every_step(captured: dict[str, CapturedModel]) -> None:
    cap = captured["digits_cnn"]
    data = load_data("digits", cap.signature)
    prepared = prepare(cap, Recipe(mode="qat"))
    trained = train_qat(prepared, data, QatConfig(steps=6, batch_size=32), record_ranges=True,
                        keep="last")  # fmt: skip
    ranges = trained.ranges
    assert ranges is not None and ranges.count == 6
    assert ranges.steps.tolist() == [1, 2, 3, 4, 5, 6]
    final = _snapshot(trained.graph_module, [q.name for q in ranges.quantizers])
    for name, values in final.items():
        assert torch.equal(ranges.values[name][5], values), name
    # Observers freeze after 80 % of the steps (step 4): ranges move until then, not after.
    ranges_over_time = {name: values[:, :, 2:4] for name, values in ranges.values.items()}
    assert any(not torch.equal(r[0], r[3]) for r in ranges_over_time.values())
    for name, r in ranges_over_time.items():
        assert torch.equal(r[3], r[4]) and torch.equal(r[4], r[5]), name


def test_calibration_records_every_observer_after_each_batch(
    captured: dict[str, CapturedModel],
) -> None:
    """PTQ: bare observers (8 histogram, 5 per-channel weight) recorded batch by batch, min
    and max only; the last record equals the buffers of the calibrated model."""
    from workbench.stages.steps import calibrate

    cap = captured["digits_cnn"]
    data = load_data("digits", cap.signature)
    prepared = prepare(cap, Recipe())
    quantizers = fake_quantizers(prepared.graph_module)
    assert sorted(q.channels for q in quantizers) == [1] * 8 + [10, 16, 16, 16, 32]
    assert {q.input_node for q in quantizers if q.channels > 1} == {
        "stem_conv_weight", "block1_conv1_weight", "block1_conv2_weight", "block2_conv_weight",
        "fc_weight",
    }  # fmt: skip
    stage = calibrate(prepared, data, batches=4, record_ranges=True)
    ranges = stage.ranges
    assert ranges is not None and ranges.count == 4 and ranges.steps.tolist() == [1, 2, 3, 4]
    for q in quantizers:
        observer = stage.graph_module.get_submodule(q.name)
        last = ranges.values[q.name][3]
        assert torch.equal(last[:, 2], observer.min_val.flatten()), q.name
        assert torch.equal(last[:, 3], observer.max_val.flatten()), q.name
        assert torch.isnan(ranges.values[q.name][:, :, :2]).all()  # no scale before convert
        _, low = ranges.series(q.name, "min")
        _, high = ranges.series(q.name, "max")
        if q.channels > 1:  # a weight does not change while calibrating
            assert (low == low[0]).all() and (high == high[0]).all()
        else:  # running min/max over the batches seen
            assert (low[1:] <= low[:-1]).all() and (high[1:] >= high[:-1]).all()
    # Without record_ranges nothing is recorded, and the calibration is the same.
    plain = calibrate(prepared, data, batches=4)
    assert plain.ranges is None
    assert plain.graph_module.code == stage.graph_module.code
