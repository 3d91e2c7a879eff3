"""`python -m workbench search` as a user runs it: a recipe out, replayed by `quantize`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from workbench.quantization.recipe import Recipe

pytestmark = pytest.mark.slow

INT4 = '{"version": 1, "default": {"weight_dtype": "int4", "activation_dtype": "int4"}}'
CLI = [sys.executable, "-m", "workbench"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, subprocess.CompletedProcess[str]]:
    folder = tmp_path_factory.mktemp("search")
    (folder / "int4.json").write_text(INT4)
    (folder / "missing.json").write_text(
        '{"overrides": [{"match": {"node": "conv2d_11"}, "set": {"keep_float": true}}]}'
    )
    common = ["--data", "digits", "--recipe", str(folder / "int4.json")]
    commands = {
        "digits": [*CLI, "search", "--model", "sample:digits_cnn", *common, "--max-drop", "0.5",
                   "--out", "chosen.json", "--report", "report.json", "--plot", "plot.html"],
        "unmet": [*CLI, "search", "--model", "sample:mobilenet", *common, "--max-drop", "0.5",
                  "--steps", "4", "--max-candidates", "1", "--out", "best.json"],
        "missing": [*CLI, "search", "--model", "sample:digits_cnn", "--recipe",
                    str(folder / "missing.json"), "--max-drop", "0.5", "--out", "never2.json"],
    }  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}

    def run(item: tuple[str, list[str]]) -> tuple[str, subprocess.CompletedProcess[str]]:
        name, argv = item
        done = subprocess.run(argv, cwd=folder, env=env, capture_output=True, text=True,
                              timeout=400, check=False)  # fmt: skip
        return name, done

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = dict(pool.map(run, commands.items()))
    replay = [*CLI, "quantize", "--model", "sample:digits_cnn", "--recipe", "chosen.json",
              "--data", "digits", "--steps", "16", "--out", "m.pt2", "--report", "q.json",
              "--quiet", "--explorer-data", "explorer"]  # fmt: skip
    results["replay"] = subprocess.run(replay, cwd=folder, env=env, capture_output=True,
                                       text=True, timeout=400, check=False)  # fmt: skip
    results["folder"] = folder  # type: ignore[assignment]
    return results


def test_search_writes_an_ordinary_recipe_that_quantize_replays(runs: dict[str, Any]) -> None:
    done, folder = runs["digits"], runs["folder"]
    assert done.returncode == 0, done.stderr
    report = json.loads((folder / "report.json").read_text())
    chosen = Recipe.from_json((folder / "chosen.json").read_text())
    assert chosen.as_dict() == report["recipe"]
    assert report["met"] and report["float"] - report["chosen"] <= 0.5
    assert 0 < len(report["raised"]) < report["quantized_nodes"] / 3
    assert report["sizes"]["chosen"] < report["sizes"]["int8"] < report["sizes"]["float"]
    # what it chose and why, and how to replay it, on stderr
    assert f"Chose {len(report['raised'])} of 13 quantized nodes" in done.stderr
    assert "replay: python -m workbench quantize --model sample:digits_cnn" in done.stderr
    replay = runs["replay"]
    assert replay.returncode == 0, replay.stderr
    quantized = json.loads((folder / "q.json").read_text())["quality"]["quantized"]
    assert quantized == pytest.approx(report["chosen"])
    # the replay wrote Model Explorer node data on its .pt2, the chosen rules' nodes among them
    annotation = json.loads((folder / "explorer" / "annotation.json").read_text())
    sqnr = json.loads((folder / "explorer" / "sqnr.json").read_text())
    assert set(annotation["graph"]["results"]) >= set(report["raised"])
    assert len(sqnr["graph"]["results"]) >= 9
    assert "wrote Model Explorer node data" in replay.stderr
    html = (folder / "plot.html").read_text()
    assert "plotly" in html and "chosen (verified)" in html


def test_a_budget_it_cannot_meet_exits_2_and_still_writes_the_best_recipe(
    runs: dict[str, Any],
) -> None:
    done, folder = runs["unmet"], runs["folder"]
    assert done.returncode == 2
    assert "error: no recipe found keeps accuracy within 0.5 of float" in done.stderr
    assert "fix: allow a larger --max-drop" in done.stderr
    assert "Traceback" not in done.stderr
    assert Recipe.from_json((folder / "best.json").read_text()).overrides


@pytest.mark.parametrize(
    ("name", "message"),
    [("missing", "error: The recipe names what this model does not have: node 'conv2d_11'")],
)  # fmt: skip
def test_bad_input_exits_2_with_the_problem_and_writes_nothing(
    runs: dict[str, Any], name: str, message: str
) -> None:
    done, folder = runs[name], runs["folder"]
    assert done.returncode == 2
    assert message in done.stderr and "fix:" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (folder / "never2.json").exists()
