"""Real architectures from `transformers` (small configs, nothing downloaded): ModelOutput
outputs, keyword inputs, dict batches from DataLoaders, a dynamic sequence length, and the
signature, data and task pieces they go through."""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from workbench.cli import main
from workbench.data.datasets import DataError, load_data
from workbench.data.task import Task, TaskError
from workbench.errors import InputShapeError
from workbench.graph.view import describe
from workbench.model.capture import CapturedModel, DimRequest, capture
from workbench.model.signature import ModelInputs, SignatureError, bind, prediction
from workbench.quantization.quantizer import quantizable_nodes
from workbench.quantization.recipe import Recipe, RecipeError
from workbench.stages.build import build
from workbench.stages.steps import calibrate, call, evaluate, exported_stage, prepare

MODELS = Path(__file__).resolve().parents[1] / "models"
HF = MODELS / "hf_models.py"
TASKS = MODELS / "task_functions.py"


@pytest.fixture(scope="module")
def resnet() -> CapturedModel:
    return capture(f"{HF}:resnet")


@pytest.fixture(scope="module")
def bert() -> CapturedModel:
    return capture(f"{HF}:bert")


def quantized_nodes(captured: CapturedModel, recipe: Recipe) -> set[str]:
    gm = captured.graph_module()
    effective = quantizable_nodes(gm, recipe, describe(gm))
    return {name for name, e in effective.items() if not e.setting.keep_float}


# --- capture -----------------------------------------------------------------------------


def test_hf_resnet_is_captured_with_its_model_output(resnet: CapturedModel) -> None:
    assert resnet.parameters[0] == "pixel_values"
    assert resnet.outputs == ("logits",)
    assert [str(d) for d in resnet.dynamic_dims] == ["pixel_values:0 (batch, 1..4096)"]
    out = call(resnet.graph_module(), resnet.example_inputs)
    assert type(out).__name__ == "ImageClassifierOutputWithNoAttention"
    assert out.logits.shape == (4, 4)


def test_bert_keyword_inputs_get_a_dynamic_sequence(bert: CapturedModel) -> None:
    assert bert.example_inputs.args == ()
    assert list(bert.example_inputs.kwargs) == ["input_ids", "attention_mask"]
    assert bert.input_names() == ["input_ids", "attention_mask"]
    # The batch is one named Dim; torch narrowed the sequence to the 64 position embeddings.
    assert [str(d) for d in bert.dynamic_dims] == [
        "input_ids:0 (batch, 1..4096)", "input_ids:1 (seq, 2..64)",
        "attention_mask:0 (batch, 1..4096)", "attention_mask:1 (seq, 2..64)",
    ]  # fmt: skip
    gm = bert.graph_module()
    for length in (5, 16, 40):
        inputs = ModelInputs((), {k: v[:, :1].repeat(1, length) for k, v in
                                  bert.example_inputs.kwargs.items()})  # fmt: skip
        assert call(gm, inputs).logits.shape == (4, 3)


def test_a_named_dim_is_made_dynamic_and_a_wrong_one_is_refused() -> None:
    captured = capture(f"{HF}:resnet", dynamic=DimRequest.parse("pixel_values:2,3"))
    assert [(d.input, d.dim) for d in captured.dynamic_dims] == [
        ("pixel_values", 0), ("pixel_values", 2), ("pixel_values", 3)
    ]  # fmt: skip
    bigger = ModelInputs((torch.rand(2, 3, 48, 40),))
    assert call(captured.graph_module(), bigger).logits.shape == (2, 4)
    with pytest.raises(InputShapeError) as info:
        capture(f"{HF}:resnet", dynamic=DimRequest.parse("images:1"))
    assert info.value.problem == (
        "The model has no input named 'images' (asked to make dim 1 dynamic)."
    )
    assert info.value.fix == "Name one of its inputs: pixel_values."
    with pytest.raises(InputShapeError):
        DimRequest.parse("pixel_values")


# --- the CLI on models as they come ------------------------------------------------------


@pytest.mark.parametrize("mode", ["ptq", "qat"])
def test_cli_quantizes_an_hf_resnet_returned_as_it_is(
    resnet: CapturedModel, tmp_path: Path, mode: str, capsys: pytest.CaptureFixture[str]
) -> None:
    out, report_path = tmp_path / "m.pt2", tmp_path / "r.json"
    argv = ["quantize", "--model", f"{HF}:resnet", "--mode", mode, "--data", "random",
            "--steps", "3", "--batch-size", "8", "--out", str(out), "--report",
            str(report_path), "--quiet"]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    report = json.loads(report_path.read_text(encoding="utf-8"))
    check = report["reload_check"]
    assert [c["output"] for c in check["outputs"]] == ["logits"]
    assert check["outputs"][0]["shape"] == [4, 4] and check["bit_equal"] is True
    assert report["signature"]["prediction"] == "logits"
    assert report["quality"]["metric"] == "agreement"
    assert report["quality"]["float"] == 100.0
    # Every node the recipe quantizes has its SQNR (a folded BN's is its conv's, measured
    # against the BN output); every BN is folded.
    errors = report["per_node_sqnr_db"]
    measured = {e["exported"] for e in errors} | {e["reference"] for e in errors}
    assert quantized_nodes(resnet, Recipe(mode=mode)) <= measured
    assert sum(e["bn_folded"] for e in errors) == 6
    assert report["converted_ops"].get("batch_norm", 0) == 0
    assert report["converted_ops"]["dequantize_per_channel"] == 7  # 6 convs and the linear
    reloaded = torch.export.load(str(out)).module()
    x = ModelInputs((torch.rand(3, 3, 32, 32),))
    assert call(reloaded, x).logits.shape == (3, 4)


def test_bert_from_dict_batches_of_a_dataloader_runs_at_two_lengths(
    bert: CapturedModel, tmp_path: Path
) -> None:
    out = tmp_path / "bert.pt2"
    result = build(bert, Recipe(), data=f"{HF}:bert_loader", out=out, steps=3)
    report = result.report
    assert report["quality"]["metric"] == "accuracy"
    assert report["quality"]["eval_samples"] == 16  # the "eval" split: 2 batches of 8
    assert [d["name"] for d in report["dynamic_dims"]] == ["batch", "seq", "batch", "seq"]
    assert report["reload_check"]["batches"] == 4  # 2 eval batches, the example, length 32
    assert quantized_nodes(bert, Recipe()) <= {e["exported"] for e in report["per_node_sqnr_db"]}
    converted = result.stages["converted"].graph_module
    reloaded = torch.export.load(str(out)).module()
    generator = torch.Generator().manual_seed(5)
    for length in (16, 32):
        ids = torch.randint(1, 96, (3, length), generator=generator)
        inputs = ModelInputs((), {"input_ids": ids, "attention_mask": torch.ones_like(ids)})
        expected, got = call(converted, inputs), call(reloaded, inputs)
        assert got.logits.shape == (3, 3)
        assert torch.equal(expected.logits, got.logits)


def test_bert_qat_without_labels_distils_from_the_float_model(
    bert: CapturedModel, tmp_path: Path
) -> None:
    # Dict batches at lengths 16 and 12, no labels: KL from the float model, quality agreement.
    result = build(bert, Recipe(mode="qat"), data=f"{HF}:bert_unlabelled",
                   out=tmp_path / "q.pt2", steps=4, lr=1e-3)  # fmt: skip
    losses = [r["loss"] for r in result.stages["trained"].history if r["stage"] == "train"]
    assert len(losses) == 4 and all(math.isfinite(v) and v >= 0 for v in losses)
    quality = result.report["quality"]
    assert quality["metric"] == "agreement" and quality["float"] == 100.0
    assert quality["quantized"] >= 75.0


def test_user_loss_and_metric_are_used_and_kept_in_the_recipe(
    bert: CapturedModel, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, report_path = tmp_path / "m.pt2", tmp_path / "r.json"
    argv = ["quantize", "--model", f"{HF}:bert", "--mode", "qat", "--data",
            f"{HF}:bert_loader", "--steps", "2", "--loss", f"{TASKS}:loss", "--metric",
            f"{TASKS}:metric", "--output", "logits", "--out", str(out), "--report",
            str(report_path), "--quiet"]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    report = json.loads(report_path.read_text(encoding="utf-8"))
    assert report["quality"]["metric"] == "metric"
    assert 0.0 <= report["quality"]["quantized"] <= 100.0
    saved = Recipe.from_json((tmp_path / "m.recipe.json").read_text(encoding="utf-8"))
    assert (saved.output, saved.loss, saved.metric) == ("logits", f"{TASKS}:loss",
                                                        f"{TASKS}:metric")  # fmt: skip
    # The metric is the top-2 accuracy: recompute it on the evaluation split by hand.
    data = load_data(f"{HF}:bert_loader", bert.signature, task=saved.task())
    float_gm = bert.graph_module()
    hits = total = 0.0
    for batch in data.eval_batches():
        top2 = call(float_gm, batch.inputs).logits.topk(2, -1).indices
        hits += float((top2 == batch.targets[:, None]).any(-1).sum())
        total += batch.size
    assert report["quality"]["float"] == pytest.approx(100.0 * hits / total)


def test_bad_task_settings_are_plain_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["quantize", "--model", f"{HF}:bert", "--data", "random", "--steps", "1",
            "--out", str(tmp_path / "m.pt2")]  # fmt: skip
    assert main([*base, "--output", "pooler"]) == 2
    err = capsys.readouterr().err
    assert "The recipe's output 'pooler' is not an output of this model." in err
    assert "Name one of its outputs (logits)" in err
    assert main([*base, "--mode", "qat", "--loss", f"{TASKS}:wrong_loss"]) == 2
    err = capsys.readouterr().err
    assert "wrong_loss returned float, not a scalar tensor that depends on the outputs." in err
    assert "Traceback" not in err
    assert not (tmp_path / "m.pt2").exists()


# --- signature -----------------------------------------------------------------------------


def test_bind_matches_dict_batches_by_parameter_name() -> None:
    example = ModelInputs((), {"input_ids": torch.zeros(2, 4), "attention_mask": torch.ones(2, 4)})
    batch = {"attention_mask": torch.ones(3, 5), "labels": torch.tensor([1, 0, 2]),
             "idx": torch.arange(3), "input_ids": torch.zeros(3, 5)}  # fmt: skip
    bound = bind(batch, example, ("input_ids", "attention_mask", "token_type_ids"))
    assert list(bound.inputs.kwargs) == ["input_ids", "attention_mask"]  # the example's order
    assert bound.target.tolist() == [1, 0, 2] and bound.ignored == ("idx",)
    positional = ModelInputs((torch.zeros(2, 3),))
    bound = bind({"pixel_values": torch.ones(5, 3), "label": torch.tensor(1)}, positional,
                 ("pixel_values",))  # fmt: skip
    assert bound.inputs.args[0].shape == (5, 3) and int(bound.target) == 1
    with pytest.raises(SignatureError) as info:
        bind({"input_ids": torch.zeros(3, 5)}, example, ("input_ids", "attention_mask"))
    assert info.value.problem.startswith("the batch has no 'attention_mask'")


def test_prediction_picks_logits_then_the_first_float_leaf() -> None:
    logits, hidden = torch.rand(2, 3), torch.rand(2, 4, 8)
    assert prediction({"hidden": hidden, "logits": logits}) is logits
    assert prediction((torch.arange(3), hidden, logits)) is hidden
    assert prediction((torch.arange(3), hidden, logits), "2") is logits
    assert prediction({"a": {"b": hidden}}, "a.b") is hidden
    with pytest.raises(SignatureError) as info:
        prediction({"hidden": hidden, "logits": logits}, "pooled")
    assert info.value.fix == "Name one of its leaves (hidden, logits) or give its index (0 to 1)."


def test_token_labels_and_padding_in_loss_and_accuracy() -> None:
    task = Task()
    logits = torch.tensor([[[5.0, 0.0], [0.0, 5.0], [5.0, 0.0]]])  # (1, 3 tokens, 2 classes)
    labels = torch.tensor([[0, 0, -100]])  # the last token is padding
    assert task.score({"logits": logits}, None, labels, None, 1) == (1.0, 2)
    loss = task.loss_value({"logits": logits}, None, labels, None)
    expected = torch.nn.functional.cross_entropy(logits[0, :2], labels[0, :2])
    torch.testing.assert_close(loss, expected)
    with pytest.raises(TaskError):
        task.score({"logits": logits}, None, torch.tensor([[[1]]]), None, 1)


# --- data --------------------------------------------------------------------------------


def test_random_data_respects_token_ids_and_masks(bert: CapturedModel) -> None:
    data = load_data("random", bert.signature)
    batch = next(data.train_batches(64))
    ids, mask = batch.inputs.kwargs["input_ids"], batch.inputs.kwargs["attention_mask"]
    example = bert.example_inputs.kwargs["input_ids"]
    assert ids.shape == (64, 16) and ids.dtype == torch.long
    assert int(ids.min()) >= int(example.min()) and int(ids.max()) <= int(example.max()) < 96
    assert set(mask.unique().tolist()) == {0, 1}
    # Padding masks: ones first, then zeros, at least one token kept.
    assert torch.equal(mask, mask.sort(dim=1, descending=True).values)
    assert bool((mask[:, 0] == 1).all()) and len(set(mask.sum(1).tolist())) > 4


def test_streamed_data_reads_only_what_it_uses(
    captured: dict[str, CapturedModel], digits_ptq: dict[str, Any]
) -> None:
    spec = f"{TASKS}:counted_batches"
    data = load_data(spec, captured["digits_cnn"].signature)
    name = "workbench_data_" + hashlib.sha1(str(TASKS.resolve()).encode()).hexdigest()[:12]
    read: list[int] = sys.modules[name].READ
    read.clear()
    calibrate(digits_ptq["prepared"], data, batches=3)
    # Batch 4 evaluates: training takes 0-3, then 5; three batches read five at most (0-4
    # are held until the fifth tells that there are at least five).
    assert read == [0, 1, 2, 3, 4]
    read.clear()
    evaluation = [int(b.targets[0]) for b in data.eval_batches()]
    assert evaluation == [4, 9] and read == list(range(12))
    train = [int(b.targets[0]) for b in itertools.islice(data.train_batches(64), 11)]
    assert train == [0, 1, 2, 3, 5, 6, 7, 8, 0, 1, 0]  # batches 10 and 11, then pass 2
    assert evaluate(captured["digits_cnn"].graph_module(), data) >= 0
    assert data.eval_size == 16


@pytest.mark.parametrize(
    ("function", "problem"),
    [
        ("bert_without_mask", "has no 'attention_mask': it has keys 'input_ids', 'labels', "
         "the model takes input_ids, attention_mask."),
        ("bert_too_long", "does not fit the model: input_ids has 80 in dim 1, the model takes "
         "at most 64; attention_mask has 80 in dim 1, the model takes at most 64."),
    ],
)  # fmt: skip
def test_dict_batches_that_do_not_fit_say_which_input(
    bert: CapturedModel, function: str, problem: str
) -> None:
    spec = f"{HF}:{function}"
    with pytest.raises(DataError) as info:
        load_data(spec, bert.signature)
    assert info.value.problem == f"training batch 0 of {spec} {problem}"


def test_unlabelled_batches_mean_agreement_and_an_unknown_output_is_refused(
    bert: CapturedModel,
) -> None:
    data = load_data(f"{HF}:bert_unlabelled", bert.signature)
    assert (data.quality, data.has_targets) == ("agreement", False)
    with pytest.raises(RecipeError):
        build(bert, Recipe(output="hidden"), data="random", out=Path("/nonexistent/x.pt2"))


def test_the_exported_stage_keeps_keyword_inputs(bert: CapturedModel) -> None:
    stage = exported_stage(bert)
    prepared = prepare(bert, Recipe())
    for gm in (stage.graph_module, prepared.graph_module):
        out = call(gm, bert.example_inputs)
        assert type(out).__name__ == "SequenceClassifierOutput"


@pytest.mark.slow
def test_a_saved_hf_program_loads_in_a_fresh_process(bert: CapturedModel, tmp_path: Path) -> None:
    # torch.export.load needs the ModelOutput type registered: the loader imports transformers.
    import subprocess

    source = tmp_path / "bert_float.pt2"
    torch.export.save(bert.program, str(source))
    out = tmp_path / "q.pt2"
    done = subprocess.run(
        [sys.executable, "-m", "workbench", "quantize", "--model", str(source), "--data",
         f"{HF}:bert_loader", "--steps", "2", "--out", str(out), "--quiet"],
        capture_output=True, text=True, timeout=300, cwd=MODELS.parents[1],
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "dynamic input_ids:1 (seq, 2..64)" in done.stderr
    assert out.is_file()


def test_a_model_output_defined_while_another_thread_exports_still_captures(
    tmp_path: Path,
) -> None:
    """transformers skips registering a ModelOutput class as a pytree node while torch says
    it is compiling, which another thread's export makes true for every thread (the app's
    pattern-cache warm-up, another session). Capture registers it with an eager call."""
    source = tmp_path / "late_output.py"
    source.write_text(
        "from dataclasses import dataclass\n"
        "from unittest import mock\n"
        "import torch\n"
        "from transformers.utils import ModelOutput\n"
        "with mock.patch('torch.compiler.is_compiling', return_value=True):\n"
        "    @dataclass\n"
        "    class LateOutput(ModelOutput):\n"
        "        logits: torch.Tensor | None = None\n"
        "class Net(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.fc = torch.nn.Linear(4, 3)\n"
        "        self.bn = torch.nn.BatchNorm1d(3)\n"
        "    def forward(self, x):\n"
        "        return LateOutput(logits=self.bn(self.fc(x)))\n"
        "def build():\n"
        "    return Net(), (torch.rand(8, 4),)\n"
    )
    import torch.utils._pytree as pytree

    from workbench.model.capture import capture

    captured = capture(f"{source}:build")
    assert captured.outputs == ("logits",)
    (late,) = [c for c in pytree.SUPPORTED_NODES if c.__name__ == "LateOutput"]
    assert late.__module__.startswith("workbench_user_")
    # The eager call changed nothing: train-mode BatchNorm statistics are as they were.
    bn = captured.program.state_dict["bn.running_mean"]
    assert torch.equal(bn, torch.zeros(3))
