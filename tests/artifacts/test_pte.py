"""ExecuTorch .pte with XNNPACK: lowering, where each node runs, the runtime check, the file.

Bounds: the int8 .pte and the converted model both run int8 kernels with float rescaling, so
they differ by a few quantization steps of the logits (measured: 0.072 digits_cnn, 0.21
mobilenet, 0.54 attention_mlp, 0.016 HF resnet); the float .pte matches the float model to
1e-5. Predicted classes agree exactly on the example batch.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from workbench.artifacts.export import program_for
from workbench.artifacts.pte import (
    PLACEMENTS,
    Lowered,
    LoweringError,
    check,
    load_pte,
    lower,
    run,
    save_pte,
)
from workbench.artifacts.report import pte_report
from workbench.data.datasets import load_data
from workbench.model.capture import CapturedModel, capture
from workbench.model.signature import ModelInputs, prediction
from workbench.quantization.recipe import Recipe
from workbench.stages.build import PteBuild, lower_stages, quantize
from workbench.stages.stage import Stages

XNNPACK = dataclasses.replace(Recipe(), backend="xnnpack")
BOUND = {"digits_cnn": 0.3, "mobilenet": 0.6, "attention_mlp": 1.2, "resnet": 0.1}
HF_MODELS = Path(__file__).resolve().parents[1] / "models" / "hf_models.py"


def _stages(captured: CapturedModel, data: Any, recipe: Recipe = XNNPACK) -> Stages:
    return quantize(captured, recipe, data, batches=2, batch_size=32)


def _lowered(captured: CapturedModel, gm: torch.fx.GraphModule, what: str) -> Lowered:
    program = program_for(gm, captured.example_inputs, dims=captured.dynamic_dims,
                          parameters=captured.parameters, keep_debug=True)  # fmt: skip
    return lower(program, what=what, source=gm)


def _op_nodes(gm: torch.fx.GraphModule) -> list[str]:
    return [n.name for n in gm.graph.nodes if n.op == "call_function"]


@pytest.fixture(scope="module")
def digits_xnnpack(captured: dict[str, CapturedModel], digits_data: Any) -> Stages:
    return _stages(captured["digits_cnn"], digits_data)


@pytest.fixture(scope="module")
def digits_pte(
    captured: dict[str, CapturedModel], digits_data: Any, digits_xnnpack: Stages
) -> PteBuild:
    return lower_stages(captured["digits_cnn"], digits_data, digits_xnnpack)


def _round_trip(
    tmp_path: Path, name: str, captured: CapturedModel, gm: torch.fx.GraphModule,
    lowered: Lowered, data: Any,
) -> None:  # fmt: skip
    """Save the .pte, run the file from disk, compare with `gm` on the example batch."""
    checked = check(lowered, gm, data, example_inputs=captured.example_inputs, batches=1)
    saved = save_pte(lowered, tmp_path / f"{name}.pte", checked=checked,
                     example_inputs=captured.example_inputs)  # fmt: skip
    assert saved.path.read_bytes() == lowered.buffer
    program = load_pte(saved.path, in_spec=lowered.in_spec, out_spec=lowered.out_spec)
    inputs = captured.example_inputs
    with torch.no_grad():
        want = prediction(inputs.call(gm))
    got = prediction(program(inputs))
    assert float((want - got).abs().max()) <= BOUND[name]
    assert torch.equal(want.argmax(-1), got.argmax(-1))
    counts = lowered.counts
    assert sum(counts.values()) == len(_op_nodes(gm))
    assert set(lowered.placement) == set(_op_nodes(gm))
    assert counts["xnnpack"] > counts["portable"]
    assert checked.agreement == 100.0


def test_digits_cnn_pte_runs_from_disk(
    tmp_path: Path, captured: dict[str, CapturedModel], digits_data: Any,
    digits_xnnpack: Stages, digits_pte: PteBuild,
) -> None:  # fmt: skip
    gm = digits_xnnpack.converted.graph_module
    _round_trip(tmp_path, "digits_cnn", captured["digits_cnn"], gm, digits_pte.lowered,
                digits_data)  # fmt: skip
    lowered = digits_pte.lowered
    # Everything but the flatten (a portable view_copy between two delegates) is delegated.
    assert lowered.counts == {"xnnpack": len(_op_nodes(gm)) - 1, "portable": 1,
                              "not in program": 0}  # fmt: skip
    assert [(n.node, n.op, n.kernel) for n in lowered.outside] == [
        ("flatten", "flatten", "aten::view_copy")
    ]
    assert lowered.delegates == 2
    assert lowered.bytes < digits_pte.float_lowered.bytes


def test_dynamic_batch_within_the_planned_bound(
    captured: dict[str, CapturedModel], digits_test_x: torch.Tensor,
    digits_xnnpack: Stages, digits_pte: PteBuild,
) -> None:  # fmt: skip
    lowered = digits_pte.lowered
    assert lowered.max_batch is not None and lowered.max_batch >= 4  # planned, read back
    program = lowered.program()
    assert program.max_batch == lowered.max_batch
    gm = digits_xnnpack.converted.graph_module
    for size in (1, 7, 360):
        x = digits_test_x[:size]
        got = program(ModelInputs((x,)))
        assert got.shape == (size, 10)
        with torch.no_grad():
            assert torch.equal(got.argmax(-1), gm(x).argmax(-1)) or size > 7
    # Chunked beyond the planned size: same outputs as one call.
    small = dataclasses.replace(program, max_batch=max(1, program.max_batch // 2))
    x = digits_test_x[:250]
    assert torch.equal(small(ModelInputs((x,))), program(ModelInputs((x,))))
    assert run(lowered, ModelInputs((x[:3],))).shape == (3, 10)


def test_check_figures(digits_pte: PteBuild) -> None:
    checked, float_checked = digits_pte.checked, digits_pte.float_checked
    assert checked.batch_sizes == (128, 128, 104, 4)  # 4 evaluation batches, then the example
    assert 0 < checked.max_abs_diff < 0.3
    assert checked.sqnr_db > 30
    assert checked.agreement >= 99.0
    assert float_checked.max_abs_diff < 1e-4
    assert float_checked.sqnr_db > 100
    assert float_checked.agreement == 100.0


def test_report_section(digits_pte: PteBuild, tmp_path: Path) -> None:
    from workbench.artifacts.export import SavedModel

    pt2 = SavedModel(tmp_path / "m.pt2", 70_000, 0.1, 0.1, 0.0, True, 1, ())
    section = pte_report(digits_pte, pt2)
    assert section["bytes"] == digits_pte.lowered.bytes
    assert section["pt2_bytes"] == 70_000
    assert section["float_pte_bytes"] == digits_pte.float_lowered.bytes
    assert section["ratio_to_pt2"] == round(section["bytes"] / 70_000, 4)
    assert set(section["placement_counts"]) == set(PLACEMENTS)
    assert section["outside_delegate"] == [
        {"node": "flatten", "op": "flatten", "kernel": "aten::view_copy"}
    ]
    assert set(section["check"]) >= {"max_abs_diff", "sqnr_db", "agreement", "batches"}
    assert set(section["float"]) == {"placement_counts", "outside_delegate", "check"}
    assert section["file"] is None  # not saved yet


def test_save_pte_writes_nothing_on_failure(
    tmp_path: Path, captured: dict[str, CapturedModel], digits_pte: PteBuild
) -> None:
    lowered = digits_pte.lowered
    broken = dataclasses.replace(lowered, buffer=lowered.buffer[:1000])
    with pytest.raises(LoweringError, match="cannot load"):
        save_pte(broken, tmp_path / "m.pte", checked=digits_pte.checked,
                 example_inputs=captured["digits_cnn"].example_inputs)  # fmt: skip
    assert list(tmp_path.iterdir()) == []


def test_x86_recipe_is_refused_with_the_nodes_that_stop_it(
    captured: dict[str, CapturedModel], digits_ptq: dict[str, Any]
) -> None:
    # The x86_inductor quantizer's q/dq around ops XNNPACK does not take stay outside the
    # delegate, and ExecuTorch has no out-variant kernels for quantized_decomposed ops.
    gm = digits_ptq["converted"].graph_module
    with pytest.raises(LoweringError) as error:
        _lowered(captured["digits_cnn"], gm, "the converted model")
    problem = error.value.problem
    assert "quantized_decomposed::quantize_per_tensor" in problem
    assert "quantize_per_tensor_default (quantize_per_tensor)" in problem
    assert "flatten (flatten)" not in problem  # a portable kernel exists for it
    assert "--backend xnnpack" in error.value.fix


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mobilenet", "attention_mlp"])
def test_sample_models_go_to_pte(
    name: str, tmp_path: Path, captured: dict[str, CapturedModel], digits_data: Any
) -> None:
    model = captured[name]
    data = load_data("digits", model.signature)
    gm = _stages(model, data).converted.graph_module
    _round_trip(tmp_path, name, model, gm, _lowered(model, gm, name), data)


@pytest.mark.slow
def test_hf_resnet_goes_to_pte(tmp_path: Path) -> None:
    model = capture(f"{HF_MODELS}:resnet")
    data = load_data("random", model.signature)
    gm = _stages(model, data).converted.graph_module
    lowered = _lowered(model, gm, "resnet")
    _round_trip(tmp_path, "resnet", model, gm, lowered, data)
    assert [n.op for n in lowered.outside] == ["flatten"]
    assert isinstance(lowered.program()(model.example_inputs), dict)  # the ModelOutput


@pytest.mark.slow
def test_cli_writes_a_checked_pte(tmp_path: Path) -> None:
    out, report = tmp_path / "model.pte", tmp_path / "report.json"
    done = subprocess.run(
        [sys.executable, "-m", "workbench", "quantize", "--model", "sample:digits_cnn",
         "--backend", "xnnpack", "--steps", "2", "--eval-samples", "64", "--quiet",
         "--out", str(out), "--report", str(report)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    import json

    section = json.loads(report.read_text())["pte"]
    assert section["file"] == str(out)
    assert section["bytes"] == out.stat().st_size
    assert (tmp_path / "model.pt2").stat().st_size == section["pt2_bytes"]
    assert section["outside_delegate"] == [
        {"node": "flatten", "op": "flatten", "kernel": "aten::view_copy"}
    ]
    assert "nodes on XNNPACK" in done.stderr
    program = load_pte(out)
    assert program(ModelInputs((torch.rand(3, 1, 8, 8),))).shape == (3, 10)


def test_cli_bad_recipe_for_pte_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from workbench.cli import EXIT_BAD_INPUT, main

    out = tmp_path / "model.pte"
    status = main(["quantize", "--model", "sample:digits_cnn", "--backend", "x86_inductor",
                   "--steps", "1", "--eval-samples", "32", "--quiet", "--no-pattern-cache",
                   "--out", str(out)])  # fmt: skip
    err = capsys.readouterr().err
    assert status == EXIT_BAD_INPUT
    assert err.startswith("error: ExecuTorch cannot make a program of the converted model")
    assert "fix: Quantize with the xnnpack backend" in err
    assert "Traceback" not in err
    assert list(tmp_path.iterdir()) == []
