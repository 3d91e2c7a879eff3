"""The stage pipeline end to end: immutable stages, every architecture through PTQ and QAT to a
reloadable .pt2, and the errors training and data loading raise.

Each (model, mode) is built once per module: QAT converts of conv-bn models take 10-20 s here.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from timing import time_limit
from torch.export import ExportedProgram
from torch.fx import GraphModule

import sample_models
from workbench.artifacts.export import program_for, program_size, save_program
from workbench.artifacts.report import op_counts
from workbench.data.datasets import DataError, Dataset, load_data
from workbench.graph.view import describe
from workbench.model.capture import CapturedModel, capture
from workbench.quantization.quantizer import quantizable_nodes
from workbench.quantization.recipe import Recipe
from workbench.stages.stage import Stage
from workbench.stages.steps import calibrate, convert, evaluate, exported_stage, prepare, run
from workbench.stages.training import QatConfig, TrainingError, train_qat

MODELS_DIR = Path(__file__).resolve().parents[1] / "models"
ENGINE_MODELS = MODELS_DIR / "engine_models.py"
ENGINE_DATA = MODELS_DIR / "engine_data.py"
SAMPLES = ("digits_cnn", "mobilenet", "attention_mlp")
TEST_ONLY = ("conv1d_net", "encoder_net")  # factories in tests/models/engine_models.py
MODES = ("ptq", "qat")
QAT_STEPS = 8
CALIBRATION_BATCHES = 3
FRESH_BATCH = 7  # the example inputs have a batch of 4


def recipe_for(name: str, mode: str) -> Recipe:
    # x86_inductor's QAT annotation leaves conv1d float (see test_x86_qat_leaves_conv1d_float):
    # the conv1d model trains with xnnpack, whose QAT annotates conv1d-bn and folds the BN.
    backend = "xnnpack" if (name, mode) == ("conv1d_net", "qat") else "x86_inductor"
    return Recipe(backend=backend, mode=mode)


Snapshot = tuple[str, dict[str, torch.Tensor]]


def snapshot(gm: GraphModule | ExportedProgram) -> Snapshot:
    """Graph code and a copy of every parameter/buffer (a program keeps them out of its graph)."""
    if isinstance(gm, ExportedProgram):
        state = {**gm.state_dict, **{f"constant:{k}": v for k, v in gm.constants.items()}}
        return gm.graph_module.code, {k: v.detach().clone() for k, v in state.items()}
    return gm.code, {k: v.detach().clone() for k, v in gm.state_dict().items()}


def assert_same(before: Snapshot, gm: GraphModule | ExportedProgram) -> None:
    code, state = before
    now_code, now = snapshot(gm)
    assert now_code == code
    assert list(now) == list(state)
    assert state, "nothing to compare"
    for key, value in state.items():
        torch.testing.assert_close(now[key], value, rtol=0, atol=0, equal_nan=True, msg=key)


@pytest.fixture(scope="module")
def models(captured: dict[str, CapturedModel]) -> dict[str, CapturedModel]:
    test_only = {name: capture(f"{ENGINE_MODELS}:{name}") for name in TEST_ONLY}
    return {**captured, **test_only}


@pytest.fixture(scope="module")
def build(models: dict[str, CapturedModel]) -> Any:
    """`build(name, mode)` -> dict of stages, data and before/after snapshots, built once."""
    cache: dict[tuple[str, str], dict[str, Any]] = {}
    datasets: dict[str, Dataset] = {}

    def make(name: str, mode: str) -> dict[str, Any]:
        if (name, mode) in cache:
            return cache[name, mode]
        model = models[name]
        if name not in datasets:
            datasets[name] = load_data("digits" if name in SAMPLES else "random",
                                       model.signature)  # fmt: skip
        data = datasets[name]
        float_stage = exported_stage(model)
        checks = {  # what a step gets: its snapshot before, and the object to compare after
            "program": (snapshot(model.program), model.program),
            "exported": (snapshot(float_stage.graph_module), float_stage.graph_module),
        }
        prepared = prepare(model, recipe_for(name, mode))
        before = snapshot(prepared.graph_module)
        if mode == "qat":
            config = QatConfig(steps=QAT_STEPS)
            tuned = train_qat(prepared, data, config, teacher=float_stage.graph_module)
        else:
            tuned = calibrate(prepared, data, batches=CALIBRATION_BATCHES)
        checks["prepared"] = (before, prepared.graph_module)
        before = snapshot(tuned.graph_module)
        converted = convert(tuned)
        checks[tuned.name] = (before, tuned.graph_module)
        cache[name, mode] = {
            "model": model,
            "data": data,
            "float": float_stage,
            "prepared": prepared,
            "tuned": tuned,
            "converted": converted,
            "checks": checks,
        }
        return cache[name, mode]

    return make


CASES = [pytest.param(name, mode, id=f"{name}-{mode}") for name in SAMPLES + TEST_ONLY
         for mode in MODES]  # fmt: skip

# q/dq counts and BN count after convert, as measured (torch 2.13, torchao 0.18).
CONVERTED = {
    # BN folded; 4 conv + 1 linear weights per channel.
    ("digits_cnn", "ptq"): {"quantize_per_tensor": 8, "dequantize_per_tensor": 9,
                            "dequantize_per_channel": 5, "batch_norm": 0},
    ("digits_cnn", "qat"): {"quantize_per_tensor": 8, "dequantize_per_tensor": 9,
                            "dequantize_per_channel": 5, "batch_norm": 0},
    ("mobilenet", "ptq"): {"quantize_per_tensor": 13, "dequantize_per_tensor": 15,
                           "dequantize_per_channel": 11, "batch_norm": 0},
    ("mobilenet", "qat"): {"quantize_per_tensor": 13, "dequantize_per_tensor": 15,
                           "dequantize_per_channel": 11, "batch_norm": 0},
    ("attention_mlp", "ptq"): {"quantize_per_tensor": 6, "dequantize_per_tensor": 8,
                               "dequantize_per_channel": 8, "batch_norm": 0},
    ("attention_mlp", "qat"): {"quantize_per_tensor": 6, "dequantize_per_tensor": 8,
                               "dequantize_per_channel": 8, "batch_norm": 0},
    # 2 conv1d + linear weights; x86 PTQ; xnnpack QAT folds both BatchNorm1d too.
    ("conv1d_net", "ptq"): {"quantize_per_tensor": 3, "dequantize_per_tensor": 3,
                            "dequantize_per_channel": 3, "batch_norm": 0},
    ("conv1d_net", "qat"): {"quantize_per_tensor": 5, "dequantize_per_tensor": 5,
                            "dequantize_per_channel": 3, "batch_norm": 0},
    # x86 quantizes linear1, linear2 and the head; not the attention in/out projections.
    ("encoder_net", "ptq"): {"quantize_per_tensor": 3, "dequantize_per_tensor": 3,
                             "dequantize_per_channel": 3, "batch_norm": 0},
    ("encoder_net", "qat"): {"quantize_per_tensor": 3, "dequantize_per_tensor": 3,
                             "dequantize_per_channel": 3, "batch_norm": 0},
}  # fmt: skip


@pytest.mark.parametrize(("name", "mode"), CASES)
def test_quantize_and_export(build: Any, tmp_path: Path, name: str, mode: str) -> None:
    built = build(name, mode)
    model: CapturedModel = built["model"]
    converted: GraphModule = built["converted"].graph_module
    counts = op_counts(converted)
    wanted = CONVERTED[name, mode]
    assert {k: counts.get(k, 0) for k in wanted} == wanted, counts

    program = program_for(converted, model.example_inputs)
    path = tmp_path / f"{name}-{mode}.pt2"
    saved = save_program(program, path, reference=converted, check_inputs=[model.example_inputs])
    assert (saved.bit_equal, saved.max_abs_diff, saved.dynamic_batch) == (True, 0.0, True)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp folder left
    assert saved.bytes == path.stat().st_size

    loaded = torch.export.load(str(path)).module()
    data: Dataset = built["data"]
    fresh = data.eval_inputs.batched(lambda t: t[-FRESH_BATCH:])
    assert fresh.batch_size != model.example_inputs.batch_size
    with torch.no_grad():
        expected, got = run(converted, fresh), run(loaded, fresh)
    assert got.shape == expected.shape and got.shape[0] == FRESH_BATCH
    diff = float((expected - got).abs().max())
    assert torch.equal(expected, got) or diff <= 1e-6, diff

    quality = evaluate(converted, data, teacher=built["float"].graph_module)
    float_quality = evaluate(built["float"].graph_module, data, teacher=built["float"].graph_module)
    print(f"\n{name} {mode}: {data.quality} {quality:.2f} (float {float_quality:.2f}), "
          f"{saved.bytes} bytes")  # fmt: skip
    # Few batches/steps, still close to float: accuracy on digits, agreement on random data.
    if data.quality == "accuracy":
        assert float_quality - quality <= 1.0
    else:
        assert (data.quality, float_quality) == ("agreement", 100.0)
        assert quality >= 95.0


@pytest.mark.parametrize(("name", "mode"), CASES)
def test_stages_are_immutable(build: Any, name: str, mode: str) -> None:
    built = build(name, mode)
    checks = built["checks"]
    tuned = "trained" if mode == "qat" else "calibrated"
    assert list(checks) == ["program", "exported", "prepared", tuned]
    for before, gm in checks.values():
        assert_same(before, gm)
    # The prepared stage still has its untouched observers / fake quantizers...
    prepared: GraphModule = built["prepared"].graph_module
    assert any(n.op == "call_module" for n in prepared.graph.nodes)
    # ...and every stage is its own module.
    modules = [built[k].graph_module for k in ("float", "prepared", "tuned", "converted")]
    assert len({id(m) for m in modules}) == 4


def test_immutable_ptq_digits_values(digits_ptq: dict[str, Stage], digits_data: Dataset) -> None:
    """A fresh calibrate/convert on the shared stages leaves them exactly as they were."""
    prepared, calibrated = digits_ptq["prepared"], digits_ptq["calibrated"]
    before_prepared, before_calibrated = (
        snapshot(prepared.graph_module),
        snapshot(calibrated.graph_module),
    )
    calibrate(prepared, digits_data, batches=1)
    convert(calibrated)
    assert_same(before_prepared, prepared.graph_module)
    assert_same(before_calibrated, calibrated.graph_module)
    # Observers of the prepared stage never saw data; those of the calibrated stage did.
    mins = {k: v for k, v in prepared.graph_module.state_dict().items() if k.endswith("min_val")}
    assert mins and all(v.numel() == 0 or math.isinf(float(v.min())) for v in mins.values())
    calibrated_mins = {
        k: v for k, v in calibrated.graph_module.state_dict().items() if k.endswith("min_val")
    }
    assert all(v.numel() > 0 and bool(torch.isfinite(v).all()) for v in calibrated_mins.values())


def test_x86_qat_leaves_conv1d_float(models: dict[str, CapturedModel]) -> None:
    model = models["conv1d_net"]
    view = describe(model.graph_module())
    nodes = {
        (backend, mode): list(quantizable_nodes(model.graph_module(), Recipe(backend, mode), view))
        for backend in ("x86_inductor", "xnnpack")
        for mode in MODES
    }
    assert nodes == {
        ("x86_inductor", "ptq"): ["conv1d", "relu", "conv1d_1", "relu_1", "linear"],
        ("x86_inductor", "qat"): ["linear"],
        ("xnnpack", "ptq"): ["conv1d", "relu", "conv1d_1", "relu_1", "mean", "linear"],
        ("xnnpack", "qat"): ["conv1d", "relu", "conv1d_1", "relu_1", "mean", "linear"],
    }


def test_encoder_graph_is_captured_as_aten_ops(models: dict[str, CapturedModel]) -> None:
    # nn.TransformerEncoder exports as plain aten ops (no fused fast-path kernel), one
    # scaled_dot_product_attention and five linears.
    counts = op_counts(models["encoder_net"].graph_module())
    assert (counts["linear"], counts["scaled_dot_product_attention"], counts["layer_norm"]) == (
        5, 1, 2,
    )  # fmt: skip
    assert "_transformer_encoder_layer_fwd" not in counts
    assert models["encoder_net"].dynamic_batch


def test_pt2_smaller_than_float(build: Any, tmp_path: Path) -> None:
    built = build("digits_cnn", "ptq")
    model: CapturedModel = built["model"]
    converted = built["converted"].graph_module
    saved = save_program(
        program_for(converted, model.example_inputs),
        tmp_path / "digits.pt2",
        reference=converted,
        check_inputs=[model.example_inputs],
    )
    float_bytes = program_size(program_for(built["float"].graph_module, model.example_inputs))
    print(f"\ndigits_cnn PTQ .pt2 {saved.bytes} bytes, float {float_bytes} bytes")
    assert saved.bytes < float_bytes
    assert saved.bytes / float_bytes < 0.9


def test_nan_loss_raises_training_error(build: Any) -> None:
    built = build("digits_cnn", "qat")
    prepared: Stage = built["prepared"]
    before = snapshot(prepared.graph_module)
    with pytest.raises(TrainingError) as info:
        train_qat(prepared, built["data"], QatConfig(steps=20, lr=1e10))
    assert info.value.problem == (
        "The training loss became nan at step 3; the model was restored to step 0."
    )
    assert "Lower the learning rate" in info.value.fix
    assert_same(before, prepared.graph_module)


def test_nan_in_data_is_a_data_error(models: dict[str, CapturedModel]) -> None:
    spec = f"{ENGINE_DATA}:nan_batches"
    with pytest.raises(DataError) as info:
        load_data(spec, models["digits_cnn"].signature)
    # The first batch is checked on loading; sample 13 (batch 1) would be found when read.
    assert info.value.problem == (
        f"the inputs of training batch 0 of {spec} contain NaN or infinite values (x, samples [5])."
    )
    assert info.value.fix == "Clean or drop those samples: observers and training cannot use them."


def test_float_digits_accuracy(digits_ptq: dict[str, Stage], digits_data: Dataset) -> None:
    accuracy = evaluate(digits_ptq["exported"].graph_module, digits_data)
    assert accuracy == pytest.approx(100 * 358 / 360)  # 2 of 360 test images wrong
    assert round(accuracy, 2) == 99.44 == sample_models.SAMPLES["digits_cnn"].accuracy


def test_nan_in_evaluation_split_names_the_sample(models: dict[str, CapturedModel]) -> None:
    spec = f"{ENGINE_DATA}:late_nan_batches"
    data = load_data(spec, models["digits_cnn"].signature)  # batches stream: read when used
    with pytest.raises(DataError) as info:
        evaluate(models["digits_cnn"].graph_module(), data)
    # Four batches: the last evaluates; sample 30 is its 7th (index 6).
    assert info.value.problem == (
        f"the inputs of evaluation batch 0 of {spec} contain NaN or infinite values "
        "(x, samples [6])."
    )


def test_small_data_loads(models: dict[str, CapturedModel]) -> None:
    data = load_data(f"{ENGINE_DATA}:small_batches", models["digits_cnn"].signature)
    assert (data.streamed, data.train_size, data.eval_size, data.quality) == (
        True, None, None, "accuracy"
    )  # fmt: skip
    with time_limit(10):
        train = list(itertools.islice(data.train_batches(16), 4))
        evaluation = list(data.eval_batches())
    # Fewer than five batches: the last evaluates, the others train, in the source's sizes.
    assert [b.inputs.args[0].shape for b in train] == [(8, 1, 8, 8)] * 4
    assert torch.equal(train[3].inputs.args[0], train[0].inputs.args[0])  # the second pass
    assert [b.targets.shape for b in evaluation if b.targets is not None] == [(8,)]
    evaluate(models["digits_cnn"].graph_module(), data)
    assert data.eval_size == 8


def test_calibrate_with_fewer_samples_than_the_batch_size(
    models: dict[str, CapturedModel], digits_ptq: dict[str, Stage]
) -> None:
    data = load_data(f"{ENGINE_DATA}:small_batches", models["digits_cnn"].signature)
    with time_limit(2):  # two batches of 26 images take well under 0.1 s
        calibrated = calibrate(digits_ptq["prepared"], data, batches=2, batch_size=64)
    assert calibrated.notes == ()
