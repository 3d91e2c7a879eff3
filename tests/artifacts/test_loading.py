"""The .pt2 loading lines (export.loading_lines) run as a plain script: a fresh interpreter
that imports nothing of the workbench loads the saved int8 program and calls it.

Negative controls drop one import line each and check the load then fails, so every line
given is one a user needs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from workbench.artifacts.export import loading_lines, program_for, save_program
from workbench.data.datasets import load_data
from workbench.model.capture import CapturedModel, capture
from workbench.quantization.recipe import Recipe
from workbench.stages.steps import Stage, calibrate, convert, prepare

pytestmark = pytest.mark.slow  # subprocess runs

HF = Path(__file__).resolve().parents[1] / "models" / "hf_models.py"
TORCHAO_LINE = "import torchao  # registers the quantized_decomposed ops the int8 program calls"
HF_LINE = "import transformers.modeling_outputs  # defines the model's input/output types (pytrees)"

# Appended to the lines: what the script got, and whether anything of the workbench came in.
REPORT = """
import json as _json
import sys as _sys
import torch.utils._pytree as _pytree
print("RESULT " + _json.dumps({
    "type": type(output).__name__,
    "shapes": [list(t.shape) for t in _pytree.tree_leaves(output)],
    "workbench": sorted(
        m for m in _sys.modules if m.split(".")[0] in ("workbench", "sample_models")
    ),
}))
"""


def run_script(lines: str, folder: Path) -> subprocess.CompletedProcess[str]:
    script = folder / "load_model.py"
    script.write_text(lines + REPORT, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["HF_HUB_OFFLINE"] = "1"
    return subprocess.run(
        [sys.executable, str(script)], cwd=folder, env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip


def result(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert len(found) == 1, proc.stdout[-2000:]
    return json.loads(found[0].removeprefix("RESULT "))


def save_int8(captured: CapturedModel, converted: Stage, path: Path) -> Path:
    gm = converted.graph_module
    program = program_for(gm, captured.example_inputs, dims=captured.dynamic_dims,
                          parameters=captured.parameters)  # fmt: skip
    save_program(program, path, reference=gm, check_inputs=[captured.example_inputs],
                 parameters=captured.parameters)  # fmt: skip
    return path


@pytest.fixture(scope="module")
def digits_int8(
    captured: dict[str, CapturedModel], digits_ptq: dict[str, Stage],
    tmp_path_factory: pytest.TempPathFactory,
) -> Path:  # fmt: skip
    folder = tmp_path_factory.mktemp("digits-int8")
    return save_int8(captured["digits_cnn"], digits_ptq["converted"], folder / "model.pt2")


@pytest.fixture(scope="module")
def resnet() -> CapturedModel:
    return capture(f"{HF}:resnet")


@pytest.fixture(scope="module")
def resnet_int8(resnet: CapturedModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = load_data("random", resnet.signature)
    converted = convert(calibrate(prepare(resnet, Recipe()), data, batches=1))
    folder = tmp_path_factory.mktemp("resnet-int8")
    return save_int8(resnet, converted, folder / "model.pt2")


def test_lines_for_the_digits_cnn(captured: dict[str, CapturedModel]) -> None:
    assert loading_lines(captured["digits_cnn"], "model.pt2") == (
        "import torch\n"
        f"{TORCHAO_LINE}\n"
        "\n"
        "# torch.export.load may unpickle parts of the file: load only files you trust.\n"
        'program = torch.export.load("model.pt2")\n'
        "model = program.module()\n"
        "# dynamic: x:0 (batch, 1..4096)\n"
        "output = model(torch.randn(4, 1, 8, 8))\n"
    )


def test_int8_digits_cnn_loads_in_a_plain_script(
    captured: dict[str, CapturedModel], digits_int8: Path
) -> None:
    lines = loading_lines(captured["digits_cnn"], "model.pt2")
    got = result(run_script(lines, digits_int8.parent))
    assert got == {"type": "Tensor", "shapes": [[4, 10]], "workbench": []}


def test_float_digits_pt2_loads_with_the_same_lines(
    captured: dict[str, CapturedModel], digits_pt2: Path
) -> None:
    lines = loading_lines(captured["digits_cnn"], digits_pt2.name)
    got = result(run_script(lines, digits_pt2.parent))
    assert got == {"type": "Tensor", "shapes": [[4, 10]], "workbench": []}


def test_without_torchao_the_int8_program_does_not_load(
    captured: dict[str, CapturedModel], digits_int8: Path
) -> None:
    lines = loading_lines(captured["digits_cnn"], "model.pt2")
    assert TORCHAO_LINE in lines.splitlines()
    proc = run_script(lines.replace(TORCHAO_LINE + "\n", ""), digits_int8.parent)
    assert proc.returncode != 0
    assert "error when deserializing the saved file" in proc.stderr


def test_hf_model_output_loads_in_a_plain_script(resnet: CapturedModel, resnet_int8: Path) -> None:
    lines = loading_lines(resnet, "model.pt2")
    assert lines.splitlines()[1:3] == [TORCHAO_LINE, HF_LINE]
    assert "output = model(torch.randn(4, 3, 32, 32))" in lines
    got = result(run_script(lines, resnet_int8.parent))
    assert got == {
        "type": "ImageClassifierOutputWithNoAttention", "shapes": [[4, 4]], "workbench": [],
    }  # fmt: skip


def test_without_the_output_module_the_hf_program_does_not_load(
    resnet: CapturedModel, resnet_int8: Path
) -> None:
    # `import transformers` alone is lazy: it does not define (register) the ModelOutput class.
    lines = loading_lines(resnet, "model.pt2").replace(HF_LINE, "import transformers")
    proc = run_script(lines, resnet_int8.parent)
    assert proc.returncode != 0
    assert "error when deserializing the saved file" in proc.stderr


def test_keyword_and_integer_inputs_are_written_as_such() -> None:
    bert = capture(f"{HF}:bert")
    lines = loading_lines(bert, "m.pt2")
    assert lines.endswith(
        "output = model(\n"
        "    input_ids=torch.randint(0, 96, (4, 16), dtype=torch.int64),\n"
        "    attention_mask=torch.randint(0, 2, (4, 16), dtype=torch.int64),\n"
        ")\n"
    )
    namespace: dict[str, Any] = {"torch": torch}
    call = lines[lines.index("output = model(") :].replace("output = model", "inputs = dict", 1)
    exec(call, namespace)
    assert {k: (tuple(v.shape), v.dtype) for k, v in namespace["inputs"].items()} == {
        "input_ids": ((4, 16), torch.int64), "attention_mask": ((4, 16), torch.int64),
    }  # fmt: skip


def test_readme_shows_the_lines_for_the_default_sample(captured: dict[str, CapturedModel]) -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    section = readme.split("### Loading the .pt2", 1)[1]
    block = section.split("```python\n", 1)[1].split("```", 1)[0]
    assert block == loading_lines(captured["digits_cnn"], "model.pt2")
