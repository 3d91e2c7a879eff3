"""fold_reports: converted conv weights and biases against the analytic conv-BN fold."""

from __future__ import annotations

import math
from typing import Any

import pytest

from workbench.analysis.folding import FoldReport, fold_reports
from workbench.model.capture import CapturedModel
from workbench.model.signature import ModelInputs
from workbench.quantization.recipe import Override, QuantSetting, Recipe
from workbench.stages.stage import Stage
from workbench.stages.steps import calibrate, convert, exported_stage, prepare
from workbench.stages.training import QatConfig, train_qat

CONVS = ["conv2d", "conv2d_1", "conv2d_2", "conv2d_3"]
BN_MODULES = ["stem.bn", "block1.bn1", "block1.bn2", "block2.bn"]
# The tolerance folding.py adds for float32 arithmetic: 2**-16 of the largest folded
# weight, which is at most 127.5 scales for a symmetric int8 weight.
SLACK = 2.0**-16 * 128


@pytest.fixture(scope="module")
def qat(captured: dict[str, CapturedModel], digits_data: Any) -> dict[str, Stage]:
    """Digits CNN through QAT (default recipe, 8 steps of 32, default freeze schedule)."""
    model = captured["digits_cnn"]
    prepared = prepare(model, Recipe(mode="qat"))
    trained = train_qat(prepared, digits_data, QatConfig(steps=8, batch_size=32), keep="last")
    return {"exported": exported_stage(model), "trained": trained, "converted": convert(trained)}


@pytest.fixture(scope="module")
def sample(digits_data: Any) -> ModelInputs:
    return next(iter(digits_data.eval_batches(64))).inputs


def show(title: str, reports: list[FoldReport]) -> None:
    print(f"\n{title}")
    for r in reports:
        print(f"  {r.conv:8s} {r.bn:13s} -> {r.converted_conv:9s} weight error "
              f"{r.max_weight_error:.3e}, bound {r.bound:.3e} (max scale/2 "
              f"{r.max_scale / 2:.3e}, worst channel {r.worst_ratio:.4f} of its bound, "
              f"{r.clipped} clipped); bias error {r.bias_max_error:.1e}; conv+BN output "
              f"error {r.output_max_error:.3e}")  # fmt: skip


def test_ptq_fold_is_within_round_to_nearest(
    digits_ptq: dict[str, Stage], sample: ModelInputs
) -> None:
    reports = fold_reports(digits_ptq["exported"].graph_module,
                           digits_ptq["converted"].graph_module, sample)  # fmt: skip
    show("PTQ (BN statistics of the exported model)", reports)
    assert [r.conv for r in reports] == CONVS
    assert [r.bn for r in reports] == ["batch_norm", "batch_norm_1", "batch_norm_2",
                                       "batch_norm_3"]  # fmt: skip
    assert [r.bn_module for r in reports] == BN_MODULES
    assert [r.converted_conv for r in reports] == CONVS
    assert [(r.channels, r.scheme) for r in reports] == [
        (16, "int8 per-channel"), (16, "int8 per-channel"), (16, "int8 per-channel"),
        (32, "int8 per-channel")]  # fmt: skip
    for r in reports:
        assert r.max_weight_error <= r.bound
        assert r.within_bound and r.clipped == 0
        # Nothing clipped: the bound is scale/2 plus float32 slack, nothing more.
        assert r.bound <= r.max_scale * (0.5 + SLACK)
        assert r.max_weight_error > r.max_scale / 2 * 0.9  # the bound is tight, not vacuous
        assert r.bias_max_error < 1e-6  # the bias is folded in float
        assert 0.0 < r.output_max_error < 1.0


def test_qat_fold_uses_the_trained_statistics(qat: dict[str, Stage], sample: ModelInputs) -> None:
    converted = qat["converted"].graph_module
    reports = fold_reports(qat["trained"].graph_module, converted, sample)
    show("QAT (BN statistics and weights of the trained model)", reports)
    assert [r.conv for r in reports] == CONVS
    # QAT's train/eval switch re-creates batch_norm nodes from a pattern graph (renumbered at
    # each switch); the modules they belong to say which is which.
    assert len(reports) == 4 and all(r.bn.startswith("batch_norm") for r in reports)
    assert [r.bn_module for r in reports] == BN_MODULES
    assert [r.converted_conv for r in reports] == ["conv2d", "conv2d_8", "conv2d_9",
                                                   "conv2d_10"]  # fmt: skip
    for r in reports:
        assert r.max_weight_error <= r.bound
        assert r.within_bound
        assert r.bias_max_error < 1e-6
        assert 0.0 < r.output_max_error < 1.0
    # The exported model's statistics and weights are stale after training: the converted
    # weights do not match their fold.
    stale = fold_reports(qat["exported"].graph_module, converted, sample)
    show("QAT folded with the exported model's statistics (wrong)", stale)
    assert max(r.worst_ratio for r in stale) > 1.5
    assert max(r.bias_max_error for r in stale) > 1e-3


def test_kept_float_conv_is_folded_in_float(
    captured: dict[str, CapturedModel], digits_data: Any, sample: ModelInputs
) -> None:
    """PTQ folds conv-bn before annotating, so a kept-float conv gets its BN folded too."""
    model = captured["digits_cnn"]
    recipe = Recipe().with_overrides(Override("node", "conv2d_1", QuantSetting(keep_float=True)))
    converted = convert(calibrate(prepare(model, recipe), digits_data, batches=2))
    reports = fold_reports(exported_stage(model).graph_module, converted.graph_module, sample)
    show("PTQ with conv2d_1 kept float", reports)
    kept = reports[1]
    assert (kept.conv, kept.scheme, kept.max_scale, kept.clipped) == ("conv2d_1", "float", 0, 0)
    assert kept.max_weight_error < 1e-6 and kept.bias_max_error < 1e-6
    assert kept.within_bound and kept.bound < 1e-4
    assert [r.scheme for r in reports] == ["int8 per-channel", "float", "int8 per-channel",
                                           "int8 per-channel"]  # fmt: skip


def test_nothing_to_fold(digits_ptq: dict[str, Stage], sample: ModelInputs) -> None:
    converted = digits_ptq["converted"].graph_module
    assert fold_reports(converted, converted, sample) == []
    assert not math.isnan(
        fold_reports(digits_ptq["exported"].graph_module, converted, sample)[0].output_max_error
    )
