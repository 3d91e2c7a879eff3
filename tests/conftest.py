"""Shared fixtures: each sample model is captured once per test session.

The 10,002-node render check (tests/models/deep_render_report.py) spends 10-20 s exporting,
so it runs in a background process started right after collection, while the other tests run.
"""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # transformers models come from configs only
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

import sample_models
from workbench.graph.view import GraphView, describe
from workbench.model.capture import CapturedModel, capture

SAMPLE_NAMES = ("digits_cnn", "mobilenet", "attention_mlp")
MODELS_DIR = Path(__file__).resolve().parent / "models"
BAD_MODELS = MODELS_DIR / "bad_models.py"
DEEP_REPORT_SCRIPT = MODELS_DIR / "deep_render_report.py"

# Background work: name -> (process, report path). Started right after collection, and only
# when a selected test needs it; its output goes to files beside the report, not to pipes.
_BACKGROUND: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}


def _start_deep_report() -> None:
    folder = Path(tempfile.mkdtemp(prefix="workbench-deep-"))
    out = folder / "report.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(folder / "stdout.txt", "wb") as stdout, open(folder / "stderr.txt", "wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, str(DEEP_REPORT_SCRIPT), str(out)],
            env=env,
            stdout=stdout,
            stderr=stderr,
        )
    _BACKGROUND["deep_report"] = (proc, out)


def pytest_collection_finish(session: pytest.Session) -> None:
    if any("deep_report" in getattr(item, "fixturenames", ()) for item in session.items):
        _start_deep_report()


def pytest_sessionfinish(session: pytest.Session) -> None:
    for proc, out in _BACKGROUND.values():
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        shutil.rmtree(out.parent, ignore_errors=True)
    _BACKGROUND.clear()


@pytest.fixture(scope="session")
def deep_report() -> dict[str, Any]:
    """The JSON report of tests/models/deep_render_report.py (10,002-node graph, budget 1500)."""
    if "deep_report" not in _BACKGROUND:
        _start_deep_report()
    proc, out = _BACKGROUND["deep_report"]
    returncode = proc.wait(timeout=600)
    stderr = (out.parent / "stderr.txt").read_text(encoding="utf-8", errors="replace")
    assert returncode == 0, stderr[-4000:]
    return json.loads(out.read_text(encoding="utf-8"))


@pytest.fixture(scope="session")
def captured() -> dict[str, CapturedModel]:
    """`capture("sample:NAME")` of every sample, done once."""
    return {name: capture(f"sample:{name}") for name in SAMPLE_NAMES}


@pytest.fixture(scope="session")
def views(captured: dict[str, CapturedModel]) -> dict[str, GraphView]:
    """`describe()` of each captured sample's graph module."""
    return {name: describe(c.graph_module()) for name, c in captured.items()}


@pytest.fixture(scope="session")
def digits_pt2(
    captured: dict[str, CapturedModel], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The captured digits CNN saved with torch.export.save (a real .pt2 file)."""
    path = tmp_path_factory.mktemp("pt2") / "digits_cnn.pt2"
    torch.export.save(captured["digits_cnn"].program, str(path))
    return path


@pytest.fixture(scope="session")
def digits_test_x() -> torch.Tensor:
    return sample_models.load_digits_split().test_x


@pytest.fixture(scope="session")
def bad_models() -> Path:
    """Absolute path of tests/models/bad_models.py (factories for `path.py:FUNC` specs)."""
    return BAD_MODELS


# --- Engine tests (recipe, quantizer, pipeline): shared PTQ stages of the digits CNN. ---


@pytest.fixture(scope="session")
def digits_data(captured: dict[str, CapturedModel]) -> Any:
    """`load_data("digits", ...)` for the digits CNN (1,437 train / 360 eval images)."""
    from workbench.data.datasets import load_data

    return load_data("digits", captured["digits_cnn"].signature)


@pytest.fixture(scope="session")
def digits_ptq(captured: dict[str, CapturedModel], digits_data: Any) -> dict[str, Any]:
    """Stages of the digits CNN through PTQ with the default recipe (x86_inductor), 4 batches
    of 64 calibration images: exported, prepared, calibrated, converted."""
    from workbench.quantization.recipe import Recipe
    from workbench.stages.steps import calibrate, convert, exported_stage, prepare

    model = captured["digits_cnn"]
    prepared = prepare(model, Recipe())
    calibrated = calibrate(prepared, digits_data, batches=4)
    return {
        "exported": exported_stage(model),
        "prepared": prepared,
        "calibrated": calibrated,
        "converted": convert(calibrated),
    }


@pytest.fixture(scope="session", autouse=True)
def _pattern_cache() -> Iterator[None]:
    """Tests run with the pattern cache, as the CLI and the app do (test_pattern_cache.py
    compares it with bare torchao)."""
    from workbench.quantization.pattern_cache import install_pattern_cache, uninstall_pattern_cache

    install_pattern_cache()
    yield
    uninstall_pattern_cache()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Keep each phase's report on the test item (`report_call`...), so a fixture can see
    that its test failed (the browser tests then save screenshots)."""
    outcome = yield
    setattr(item, f"report_{call.when}", outcome.get_result())


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh workspace folder for the app (WORKBENCH_WORKSPACE), put back afterwards."""
    folder = tmp_path / "workspace"
    monkeypatch.setenv("WORKBENCH_WORKSPACE", str(folder))
    return folder
