"""`python -m workbench quantize` (and `inspect --stage`) as a user runs them: real subprocesses.

All commands are independent, so one module fixture runs them up front on two workers
(slowest first); the tests then check exit codes, stderr, the files written and the report.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from workbench.quantization.recipe import Recipe

# Whole quantize runs in subprocesses: whole suite only.
pytestmark = pytest.mark.slow

ENGINE_DATA = Path(__file__).resolve().parent / "models" / "engine_data.py"
WORKERS = 2

RECIPES = {
    "minmax_fc": '{"overrides": [{"match": {"module": "fc"}, "set": {"observer": "minmax"}}]}',
    "keep_linear": '{"overrides": [{"match": {"op": "linear"}, "set": {"keep_float": true}}]}',
    "bad_json": '{\n  "mode": "ptq",\n}\n',
    "unknown_field": '{"mode": "ptq", "colour": "red"}',
    "unknown_value": '{"default": {"weight_dtype": "int7"}}',
    "missing_node": '{"overrides": [{"match": {"node": "conv2d_11"}, '
                    '"set": {"keep_float": true}}]}',
    "missing_module": '{"overrides": [{"match": {"module": "block3"}, '
                      '"set": {"observer": "minmax"}}]}',
}  # fmt: skip


@dataclass(frozen=True)
class Run:
    returncode: int
    stdout: str
    stderr: str
    folder: Path  # the command's own output folder
    seconds: float


def _quantize(*args: str) -> list[str]:
    return [sys.executable, "-m", "workbench", "quantize", "--model", "sample:digits_cnn", *args]


def _commands(recipes: Path) -> dict[str, list[str]]:
    """Each case's command line; OUT/REPORT stand for files in the case's own folder."""

    def recipe(name: str) -> str:
        return str(recipes / f"{name}.json")

    bad = ["--data", "digits", "--steps", "2", "--out", "OUT", "--report", "REPORT"]
    return {
        # The acceptance run: exactly as a user types it, default steps (120).
        "qat": _quantize("--mode", "qat", "--data", "digits", "--out", "m.pt2",
                         "--report", "r.json"),
        "ptq": _quantize("--recipe", recipe("minmax_fc"), "--data", "digits", "--steps", "4",
                         "--out", "OUT", "--report", "REPORT"),
        "inspect_prepared": [sys.executable, "-m", "workbench", "inspect", "--model",
                             "sample:digits_cnn", "--stage", "prepared", "--recipe",
                             recipe("keep_linear")],
        "inspect_converted": [sys.executable, "-m", "workbench", "inspect", "--model",
                              "sample:digits_cnn", "--stage", "converted", "--recipe",
                              recipe("keep_linear")],
        "missing_node": _quantize("--recipe", recipe("missing_node"), *bad),
        "missing_module": _quantize("--recipe", recipe("missing_module"), *bad),
        "nan_data": _quantize("--data", f"{ENGINE_DATA}:nan_batches", "--steps", "2",
                              "--out", "OUT", "--report", "REPORT"),
        "bad_json": _quantize("--recipe", recipe("bad_json"), *bad),
        "unknown_field": _quantize("--recipe", recipe("unknown_field"), *bad),
        "unknown_value": _quantize("--recipe", recipe("unknown_value"), *bad),
        "out_not_pt2": _quantize("--data", "digits", "--out", "OUTDIR/m.onnx"),
        "out_missing_folder": _quantize("--data", "digits", "--out", "OUTDIR/missing/m.pt2"),
    }  # fmt: skip


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Run]:
    files = tmp_path_factory.mktemp("quantize_cli")
    recipes = files / "recipes"
    recipes.mkdir()
    for name, text in RECIPES.items():
        (recipes / f"{name}.json").write_text(text, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    env["OMP_NUM_THREADS"] = "1"  # two processes share two cores

    def run(item: tuple[str, list[str]]) -> tuple[str, Run]:
        name, argv = item
        folder = files / "out" / name
        folder.mkdir(parents=True)
        names = {"OUT": "m.pt2", "REPORT": "r.json"}
        argv = [str(folder / names[a]) if a in names else a for a in argv]
        argv = [a.replace("OUTDIR", str(folder)) for a in argv]
        start = time.perf_counter()
        done = subprocess.run(
            argv, cwd=folder, env=env, capture_output=True, text=True, timeout=400, check=False
        )
        seconds = time.perf_counter() - start
        return name, Run(done.returncode, done.stdout, done.stderr, folder, seconds)

    with ThreadPoolExecutor(max_workers=WORKERS) as pool:  # dict order: slowest first
        results = dict(pool.map(run, _commands(recipes).items()))
    print("\n" + ", ".join(f"{name} {r.seconds:.1f} s" for name, r in results.items()))
    return results


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_ptq_success_and_report(runs: dict[str, Run]) -> None:
    run = runs["ptq"]
    assert run.returncode == 0, run.stderr
    assert run.stdout == ""
    assert "Traceback" not in run.stderr
    assert _files(run.folder) == ["m.pt2", "m.recipe.json", "r.json"]  # no temp folder left
    report = json.loads((run.folder / "r.json").read_text(encoding="utf-8"))
    quality = report["quality"]
    files = report["files"]
    print(
        f"\nPTQ CLI: float {quality['float']:.2f} %, quantized {quality['quantized']:.2f} %, "
        f"{files['bytes']} bytes vs float {files['float_bytes']}"
    )
    assert (quality["metric"], quality["data"], quality["eval_samples"]) == (
        "accuracy", "digits", 360,
    )  # fmt: skip
    assert round(quality["float"], 2) == 99.44
    assert abs(quality["quantized"] - quality["float"]) <= 0.5
    assert files["bytes"] < files["float_bytes"]
    assert files["bytes"] == (run.folder / "m.pt2").stat().st_size
    assert files["ratio_to_float"] == round(files["bytes"] / files["float_bytes"], 4)
    check = report["reload_check"]
    assert check["max_abs_diff"] == 0
    assert (check["bit_equal"], check["dynamic_batch"], check["batches"]) == (True, True, 4)
    sqnr = report["per_node_sqnr_db"]
    assert sqnr and {e["exported"] for e in sqnr} >= {"conv2d", "conv2d_3", "linear"}
    assert all(e["sqnr_db"] is None or e["sqnr_db"] > 10 for e in sqnr)
    ops = report["converted_ops"]
    assert "batch_norm" not in ops
    assert (ops["quantize_per_tensor"], ops["dequantize_per_channel"]) == (8, 5)
    recipe = Recipe.from_json(RECIPES["minmax_fc"])
    assert report["recipe"] == recipe.as_dict()
    assert report["overrides_applied"] == {
        "linear": {"rule": "module:fc", "setting": {"observer": "minmax"}}
    }
    assert report["stages"]["calibrated"]["created_by"] == "calibrate: 4 batches of 64 from digits"
    saved_recipe = (run.folder / "m.recipe.json").read_text(encoding="utf-8")
    assert saved_recipe == recipe.to_json()
    assert Recipe.from_json(saved_recipe) == recipe


def test_ptq_success_prints_summary(runs: dict[str, Run]) -> None:
    run = runs["ptq"]
    assert run.returncode == 0
    assert "wrote " in run.stderr and "calibrate 4/4" in run.stderr


def test_qat_acceptance(runs: dict[str, Run]) -> None:
    run = runs["qat"]
    assert run.returncode == 0, run.stderr
    assert _files(run.folder) == ["m.pt2", "m.recipe.json", "r.json"]
    report = json.loads((run.folder / "r.json").read_text(encoding="utf-8"))
    quality = report["quality"]
    print(
        f"\nQAT acceptance ({run.seconds:.1f} s): float {quality['float']:.2f} %, "
        f"fake-quant {quality['fake_quant']:.2f} %, quantized {quality['quantized']:.2f} %, "
        f"{report['files']['bytes']} bytes vs float {report['files']['float_bytes']}"
    )
    assert abs(quality["quantized"] - quality["float"]) <= 0.5
    assert report["stages"]["trained"]["created_by"] == "QAT: 120 steps of 64 from digits"
    assert report["recipe"]["mode"] == "qat"
    assert report["reload_check"]["max_abs_diff"] == 0
    assert "batch_norm" not in report["converted_ops"]
    assert report["files"]["bytes"] < report["files"]["float_bytes"]


def test_inspect_prepared_with_recipe(runs: dict[str, Run]) -> None:
    run = runs["inspect_prepared"]
    assert run.returncode == 0, run.stderr
    doc = json.loads(run.stdout)
    assert (doc["model"], doc["stage"]) == ("sample:digits_cnn", "prepared")
    observers = [n for n in doc["nodes"] if n["family"] == "observer"]
    # 13 with the default recipe; keep_float on linear drops the fc weight's and flatten's.
    assert len(observers) == 11
    assert all(n["op"] == "call_module" for n in observers)
    linear = next(n for n in doc["nodes"] if n["name"] == "linear")
    assert linear["inputs"] == ["flatten", "fc_weight", "fc_bias"]


def test_inspect_converted_with_recipe(runs: dict[str, Run]) -> None:
    run = runs["inspect_converted"]
    assert run.returncode == 0, run.stderr
    doc = json.loads(run.stdout)
    assert doc["stage"] == "converted"
    quant = [n["op_name"] for n in doc["nodes"] if n["family"] == "quant"]
    assert {op: quant.count(op) for op in sorted(set(quant))} == {
        "dequantize_per_channel": 4,
        "dequantize_per_tensor": 8,
        "quantize_per_tensor": 7,
    }
    assert not any(n["family"] == "observer" for n in doc["nodes"])
    linear = next(n for n in doc["nodes"] if n["name"] == "linear")
    assert linear["inputs"] == ["flatten", "fc_weight", "fc_bias"]


BAD_INPUTS = {
    "bad_json": ["bad_json.json is not valid JSON: ", "at line 3, column 1.",
                 "Fix the JSON syntax (a missing comma or quote is the usual cause)."],
    "unknown_field": ["unknown field(s): colour.",
                      "Known fields: backend, default, loss, metric, mode, output"],
    "unknown_value": ["weight_dtype is 'int7', which is not a known value.",
                      "Use one of: int8, uint8, int4."],
    "missing_node": ["node 'conv2d_11' (closest: conv2d_1, conv2d_3, conv2d_2)",
                     "python -m workbench inspect"],
    "missing_module": ["module 'block3' (closest: block2, block1, block2.bn)"],
    "nan_data": ["training batch 0 of", "contain NaN or infinite values (x, samples [5])",
                 "Clean or drop those samples"],
    "out_not_pt2": ["m.onnx does not end in .pt2 or .pte.",
                    "Name the file MODEL.pt2 (torch.export) or MODEL.pte"],
    "out_missing_folder": ["missing does not exist.", "Create it first."],
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_exits_2(runs: dict[str, Run], case: str) -> None:
    run = runs[case]
    assert run.returncode == 2, run.stderr
    assert run.stdout == ""
    assert "Traceback" not in run.stderr
    lines = run.stderr.splitlines()
    assert len(lines) == 2, run.stderr
    assert lines[0].startswith("error: ") and lines[1].startswith("fix: ")
    for words in BAD_INPUTS[case]:
        assert words in run.stderr
    assert _files(run.folder) == []  # no .pt2, report, recipe or temp folder
