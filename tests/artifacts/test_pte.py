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
    QUANTIZED_KERNELS_LINE,
    Lowered,
    LoweringError,
    check,
    load_pte,
    lower,
    run,
    save_pte,
    source_placement,
)
from workbench.artifacts.report import pte_report
from workbench.data.datasets import load_data
from workbench.drawing.overlays import PLACEMENT_COLOURS, placement_overlay
from workbench.graph.view import GraphView
from workbench.model.capture import CapturedModel, capture
from workbench.model.signature import ModelInputs, prediction
from workbench.quantization.recipe import Override, QuantSetting, Recipe
from workbench.stages.build import PteBuild, lower_stages, quantize
from workbench.stages.stage import Stages

XNNPACK = dataclasses.replace(Recipe(), backend="xnnpack")
# XNNPACK takes int8 activations only: a uint8 input for conv2d_1 is requantized outside it.
UINT8_CONV = dataclasses.replace(
    XNNPACK, overrides=(Override("node", "conv2d_1", QuantSetting(activation_dtype="uint8")),)
)
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
    return lower_stages(captured["digits_cnn"], XNNPACK, digits_data, digits_xnnpack)


@pytest.fixture(scope="module")
def uint8_conv(captured: dict[str, CapturedModel], digits_data: Any) -> tuple[Stages, Lowered]:
    stages = _stages(captured["digits_cnn"], digits_data, UINT8_CONV)
    gm = stages.converted.graph_module
    return stages, _lowered(captured["digits_cnn"], gm, "the converted model")


def _where(stages: Stages, lowered: Lowered) -> dict[str, str]:
    placed = source_placement(stages.converted.graph_module, lowered.placement)
    return {name: p.where for name, p in placed.items()}


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
    section = pte_report(digits_pte, pt2, ModelInputs((torch.rand(4, 1, 8, 8),)))
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
    assert section["load"] == (  # no q/dq outside the delegate: no quantized kernels needed
        "import torch\n"
        "from executorch.runtime import Runtime\n"
        "\n"
        'program = Runtime.get().load_program("model.pte")\n'
        'method = program.load_method("forward")\n'
        f"# inputs in the program's order, a batch of {digits_pte.lowered.max_batch} at most\n"
        "output = method.execute([torch.randn(4, 1, 8, 8)])\n"
    )


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
    captured: dict[str, CapturedModel], digits_data: Any, digits_ptq: dict[str, Any]
) -> None:
    # The x86_inductor quantizer's uint8 q/dq are not XNNPACK's: it leaves them outside the
    # delegate, to portable kernels. The program would run, slowly; it is refused instead.
    stages = Stages(*(digits_ptq[k] for k in ("exported", "prepared", "calibrated", "converted")))
    with pytest.raises(LoweringError) as error:
        lower_stages(captured["digits_cnn"], Recipe(), digits_data, stages)
    problem = error.value.problem
    assert problem.startswith("The recipe quantizes for x86_inductor, not for XNNPACK")
    assert "quantize_per_tensor_default (quantize_per_tensor)" in problem
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
    assert err.startswith("error: The recipe quantizes for x86_inductor, not for XNNPACK")
    assert "fix: Quantize with the xnnpack backend" in err
    assert "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_a_recipe_change_moves_a_node_out_of_the_delegate(
    views: dict[str, GraphView], digits_xnnpack: Stages, digits_pte: PteBuild,
    uint8_conv: tuple[Stages, Lowered],
) -> None:  # fmt: skip
    stages, lowered = uint8_conv
    before, after = _where(digits_xnnpack, digits_pte.lowered), _where(stages, lowered)
    assert before["conv2d_1"] == "xnnpack"
    assert after["conv2d_1"] == "partly portable"
    placed = source_placement(stages.converted.graph_module, lowered.placement)["conv2d_1"]
    assert placed.nodes["portable"] == ("quantize_per_tensor_default_2",)  # its input's requantize
    assert "conv2d_1" in placed.nodes["xnnpack"]  # the conv itself stays in a delegate
    assert {k: v for k, v in after.items() if k != "conv2d_1"} == {
        k: v for k, v in before.items() if k != "conv2d_1"
    }
    assert before["flatten"] == "portable"  # a reshape with a dynamic batch
    assert "batch_norm" not in before  # folded into its conv by prepare: not in the program
    assert (digits_pte.lowered.counts["portable"], lowered.counts["portable"]) == (1, 2)
    assert lowered.delegates == digits_pte.lowered.delegates + 1  # the delegate is cut there

    # The Graph page's colours and counts follow.
    view = views["digits_cnn"]
    drawn_before, drawn_after = placement_overlay(view, before), placement_overlay(view, after)
    changed = {k for k, v in drawn_after.fills.items() if drawn_before.fills[k] != v}
    assert changed == {"conv2d_1"}
    assert drawn_before.fills["conv2d_1"] == PLACEMENT_COLOURS["xnnpack"]
    assert drawn_after.fills["conv2d_1"] == PLACEMENT_COLOURS["partly portable"]
    assert drawn_after.fills["batch_norm"] == PLACEMENT_COLOURS["not in program"]
    assert list(drawn_before.legend) == [
        "XNNPACK delegate (12)",
        "partly on portable kernels (0)",
        "portable kernels (1)",
        "not in the program (4)",
    ]
    assert list(drawn_after.legend) == [
        "XNNPACK delegate (11)",
        "partly on portable kernels (1)",
        "portable kernels (1)",
        "not in the program (4)",
    ]


def test_module_boxes_show_the_mix_of_their_nodes(
    views: dict[str, GraphView], uint8_conv: tuple[Stages, Lowered]
) -> None:
    from workbench.drawing.boxes import box_of

    view = views["digits_cnn"]
    overlay = placement_overlay(view, _where(*uint8_conv), collapse_depth=1)
    conv1 = next(n for n in view.nodes if n.name == "conv2d_1")
    box = box_of(conv1, 1)
    assert box.startswith("module/")
    assert overlay.fills[box] == PLACEMENT_COLOURS["partly portable"]
    assert overlay.fills["conv2d_1"] == PLACEMENT_COLOURS["partly portable"]  # expanded


@pytest.mark.slow
def test_pte_with_a_portable_quantize_runs_in_a_plain_script(
    tmp_path: Path, captured: dict[str, CapturedModel], digits_data: Any,
    uint8_conv: tuple[Stages, Lowered],
) -> None:  # fmt: skip
    """The report's loading lines run the file in a fresh interpreter; without the
    quantized-kernels import the runtime cannot load the method."""
    import os

    from workbench.artifacts.pte import pte_loading_lines

    stages, lowered = uint8_conv
    model = captured["digits_cnn"]
    checked = check(lowered, stages.converted.graph_module, digits_data,
                    example_inputs=model.example_inputs, batches=1)  # fmt: skip
    save_pte(lowered, tmp_path / "model.pte", checked=checked, example_inputs=model.example_inputs)
    lines = pte_loading_lines(lowered, model.example_inputs)
    assert lines.splitlines()[0] == QUANTIZED_KERNELS_LINE
    script = tmp_path / "run_pte.py"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}

    def run_lines(text: str) -> subprocess.CompletedProcess[str]:
        script.write_text(text + "print('SHAPES', [list(t.shape) for t in output])\n"
                          "import sys; print('WORKBENCH', [m for m in sys.modules "
                          "if m.split('.')[0] == 'workbench'])\n")  # fmt: skip
        return subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=300)  # fmt: skip

    done = run_lines(lines)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "SHAPES [[4, 10]]" in done.stdout and "WORKBENCH []" in done.stdout
    without = run_lines(lines.replace(QUANTIZED_KERNELS_LINE + "\n", ""))
    assert without.returncode != 0
    assert "quantize_per_tensor" in without.stderr
