"""The reference representation (convert_pt2e(use_reference_representation=True)) end to end:
a recipe field, both forms as stages, no q/dq pairs around the convs, outputs within two
steps of the output grid of the q/dq form, and a .pt2 that reloads bit-equal."""

from __future__ import annotations

import collections
import dataclasses
from pathlib import Path

import pytest
import torch
from torch.fx import GraphModule

from workbench.data.datasets import Dataset, load_data
from workbench.graph.nodes import is_quantize
from workbench.model.capture import CapturedModel, capture
from workbench.quantization.recipe import Recipe, RecipeError
from workbench.stages.build import export_stages, quantize
from workbench.stages.stage import QDQ_STAGE
from workbench.stages.steps import calibrate, convert_forms, prepare, run

REFERENCE = Recipe(backend="xnnpack", reference_representation=True)
QDQ_PER_TENSOR = (
    "quantized_decomposed.quantize_per_tensor",
    "quantized_decomposed.dequantize_per_tensor",
)


def _ops(gm: GraphModule) -> collections.Counter[str]:
    return collections.Counter(
        str(n.target).removesuffix(".default") for n in gm.graph.nodes if n.op == "call_function"
    )


def _qdq_count(gm: GraphModule) -> int:
    counts = _ops(gm)
    return sum(counts[name] for name in QDQ_PER_TENSOR)


def _gap(reference: GraphModule, qdq: GraphModule, data: Dataset) -> tuple[float, float]:
    """Worst |diff| of the prediction over the evaluation split, and the agreement (%)."""
    worst, agree, count = 0.0, 0, 0
    for batch in data.eval_batches(256):
        a, b = (run(m, batch.inputs, data.task) for m in (qdq, reference))
        worst = max(worst, float((a - b).abs().max()))
        agree += int((a.argmax(-1) == b.argmax(-1)).sum())
        count += a.shape[0]
    return worst, 100.0 * agree / count


def _output_step(qdq: GraphModule) -> float:
    """The scale of the last quantize before the output: one step of the output's grid."""
    return float([n for n in qdq.graph.nodes if is_quantize(n)][-1].args[1])


@pytest.fixture(scope="module")
def digits_forms(captured: dict[str, CapturedModel], digits_data: Dataset) -> dict[str, object]:
    stages = quantize(captured["digits_cnn"], REFERENCE, digits_data, batches=4)
    return {"stages": stages}


def test_both_forms_are_stages_and_the_reference_has_no_qdq_pairs(
    digits_forms: dict[str, object],
) -> None:
    stages = digits_forms["stages"]
    assert list(stages) == ["exported", "prepared", "calibrated", QDQ_STAGE, "converted"]
    reference, qdq = stages["converted"].graph_module, stages[QDQ_STAGE].graph_module
    assert "reference representation" in stages["converted"].created_by
    assert _ops(qdq)["quantized_decomposed.quantize_per_tensor"] == 10
    assert _ops(qdq)["quantized_decomposed.dequantize_per_tensor"] == 11
    assert _qdq_count(reference) == 0
    counts = _ops(reference)
    # integer arithmetic written out: the quantize as div/round/clamp, the dequantize as sub/mul
    assert counts["aten.round"] == 9 and counts["aten.clamp"] == 24 and counts["out_dtype"] == 2
    assert counts["aten.conv2d"] == 4 and counts["aten.linear"] == 1


def test_the_reference_form_is_within_two_output_steps_of_the_qdq_form(
    digits_forms: dict[str, object], digits_data: Dataset
) -> None:
    stages = digits_forms["stages"]
    reference, qdq = stages["converted"].graph_module, stages[QDQ_STAGE].graph_module
    worst, agreement = _gap(reference, qdq, digits_data)
    step = _output_step(qdq)
    assert 0 < worst <= 2 * step * (1 + 1e-5)  # measured: exactly 2 steps (0.145 = 2 x 0.0724)
    assert agreement == 100.0


def test_the_reference_form_reloads_from_pt2_bit_equal(
    captured: dict[str, CapturedModel], digits_data: Dataset, digits_forms: dict[str, object],
    tmp_path: Path,
) -> None:  # fmt: skip
    built = export_stages(captured["digits_cnn"], REFERENCE, digits_data,
                          digits_forms["stages"], tmp_path / "ref.pt2")  # fmt: skip
    assert built.saved.bit_equal and built.saved.max_abs_diff == 0.0
    program = torch.export.load(str(tmp_path / "ref.pt2"))
    assert _qdq_count(program.graph_module) == 0
    x = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    want = digits_forms["stages"]["converted"].graph_module(x)
    assert torch.equal(program.module()(x), want)


def test_x86_keeps_its_uint8_qdq_and_rewrites_only_the_weights(
    captured: dict[str, CapturedModel], digits_data: Dataset
) -> None:
    recipe = Recipe(reference_representation=True)
    tuned = calibrate(prepare(captured["digits_cnn"], recipe), digits_data, batches=2)
    reference, qdq = convert_forms(tuned)
    assert qdq is not None
    assert _ops(qdq.graph_module)["quantized_decomposed.dequantize_per_channel"] == 5
    assert _ops(reference.graph_module)["quantized_decomposed.dequantize_per_channel"] == 0
    assert _ops(reference.graph_module)["quantized_decomposed.quantize_per_tensor"] == 8
    # without the flag there is one form
    plain, none = convert_forms(tuned, reference=False)
    assert none is None and "reference" not in plain.created_by


@pytest.mark.slow
def test_an_hf_conv_bn_model_both_ways(tmp_path: Path) -> None:
    model = capture(str(Path(__file__).resolve().parents[1] / "models" / "hf_models.py") +
                    ":resnet")  # fmt: skip
    data = load_data("random", model.signature)
    stages = quantize(model, REFERENCE, data, batches=2)
    reference, qdq = stages["converted"].graph_module, stages[QDQ_STAGE].graph_module
    assert _qdq_count(qdq) > 20 and _qdq_count(reference) == 0
    worst, agreement = _gap(reference, qdq, data)
    assert worst <= 2 * _output_step(qdq) * (1 + 1e-5) and agreement >= 99.0
    built = export_stages(model, REFERENCE, data, stages, tmp_path / "r.pt2")
    assert built.saved.bit_equal


def test_the_recipe_field_round_trips_and_needs_no_new_tuning() -> None:
    assert "reference_representation" not in Recipe().to_json()  # old recipes stay as they were
    text = REFERENCE.to_json()
    assert '"reference_representation": true' in text
    assert Recipe.from_json(text) == REFERENCE
    plain = dataclasses.replace(REFERENCE, reference_representation=False)
    assert REFERENCE.tuning_key() == plain.tuning_key() != REFERENCE.to_json()
    with pytest.raises(RecipeError, match="reference_representation is 'yes'"):
        Recipe.from_dict({"reference_representation": "yes"})
