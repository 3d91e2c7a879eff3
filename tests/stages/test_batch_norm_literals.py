"""torchao's QAT conv-bn fusion and train/eval switches rebuild batch_norm calls with the
pattern's defaults (eps 1e-5, momentum 0.1); the workbench puts the captured ones back, so a
model with eps 1e-3 (transformers' MobileNetV2) is the same model with fake quantization off."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torchao.quantization.pt2e import disable_fake_quant, disable_observer

from workbench.data.datasets import load_data
from workbench.model.capture import capture
from workbench.quantization.recipe import Recipe
from workbench.stages.steps import batch_norm_literals, convert, prepare, run, to_eval, to_train

MODELS = Path(__file__).resolve().parents[1] / "models" / "mobilenet_v2.py"


@pytest.fixture(scope="module")
def hf_qat() -> dict[str, object]:
    captured = capture(f"{MODELS}:hf_mobilenet_v2")
    prepared = prepare(captured, Recipe(mode="qat"))
    return {"captured": captured, "prepared": prepared}


def test_prepare_qat_keeps_the_models_eps_and_momentum(hf_qat: dict[str, object]) -> None:
    captured, prepared = hf_qat["captured"], hf_qat["prepared"]
    want = batch_norm_literals(captured.graph_module())
    assert want and {eps for _, eps in want} == {1e-3}  # transformers' MobileNetV2
    model = prepared.copy_module()
    assert batch_norm_literals(model) == want
    to_train(model)
    assert [eps for _, eps in batch_norm_literals(model)] == [eps for _, eps in want]
    to_eval(model)
    assert batch_norm_literals(model) == want


@pytest.mark.slow
def test_with_fake_quant_off_the_qat_model_is_the_float_model(hf_qat: dict[str, object]) -> None:
    captured, prepared = hf_qat["captured"], hf_qat["prepared"]
    data = load_data("random", captured.signature)
    model = prepared.copy_module()
    to_eval(model)
    model.apply(disable_fake_quant)
    model.apply(disable_observer)
    batch = next(iter(data.eval_batches(64))).inputs
    got = run(model, batch, data.task)
    want = run(captured.graph_module(), batch, data.task)
    assert torch.equal(got.argmax(-1), want.argmax(-1))  # torchao's eps 1e-5: 8.98 % agree
    assert float((got - want).abs().max()) < 1e-3
    converted = convert(prepared).graph_module  # folds with the model's eps
    assert converted is not None
