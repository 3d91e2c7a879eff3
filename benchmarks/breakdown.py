"""Where a cold `python -m workbench quantize` spends its time, phase by phase.

`python -m benchmarks.breakdown -- ARGS...` runs the real CLI (`workbench.cli.main(ARGS)`) in
this fresh process, with timers wrapped around the functions the build calls (their module
globals are replaced, so the code that runs is the library's own), and prints one JSON object:
{"imports": {...}, "phases": {label: [seconds, calls]}, "cache": {...}, "total": seconds}.
Phase times are inclusive: a phase that calls another timed one contains it (the benchmark's
table says which nest). Imports are timed apart first: torch, torchao's PT2E, the workbench
modules the CLI loads, and transformers (which the model factory would otherwise import
inside the capture).
"""

from __future__ import annotations

import time

START = time.perf_counter()

import dataclasses  # noqa: E402
import functools  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
PHASES: dict[str, list[float]] = {}


def _timed(label: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            entry = PHASES.setdefault(label, [0.0, 0])
            entry[0] += time.perf_counter() - start
            entry[1] += 1

    return wrapper


def _patch(module: Any, name: str, label: str) -> None:
    setattr(module, name, _timed(label, getattr(module, name)))


def _patch_calls(module: Any, name: str, labels: list[str]) -> None:
    """Time the first, second, ... call of `module.name` under `labels[0]`, `labels[1]`, ..."""
    fn = getattr(module, name)
    count = [0]

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        label = labels[min(count[0], len(labels) - 1)]
        count[0] += 1
        return _timed(label, fn)(*args, **kwargs)

    setattr(module, name, wrapper)


def main() -> None:
    argv = sys.argv[1:]
    if argv[:1] == ["--"]:
        argv = argv[1:]
    imports: dict[str, float] = {}
    mark = time.perf_counter()
    imports["interpreter to main"] = mark - START  # tiny: START is set when this module runs

    def lap(name: str) -> None:
        nonlocal mark
        now = time.perf_counter()
        imports[name] = now - mark
        mark = now

    import torch

    lap("torch")
    import torchao.quantization.pt2e
    import torchao.quantization.pt2e.quantize_pt2e  # noqa: F401

    lap("torchao pt2e")
    import workbench.cli as cli
    import workbench.stages.build as flow

    lap("workbench (cli, flow and what they import)")
    import transformers

    # The names the HF factories use: transformers imports model code lazily, on access.
    for name in ("ResNetConfig", "ResNetForImageClassification", "BertConfig",
                 "BertForSequenceClassification"):  # fmt: skip
        getattr(transformers, name)
    lap("transformers (+ ResNet/BERT model code)")

    import workbench.analysis.compare as compare
    import workbench.artifacts.export as export
    import workbench.artifacts.report as report
    import workbench.model.capture as capture
    import workbench.stages.stage as stage
    import workbench.stages.training as training

    _patch(capture, "capture", "capture")
    _patch(capture, "load_model", "capture: build model (factory)")
    _patch(capture, "export_model", "capture: torch.export")
    capture.CapturedModel.graph_module = _timed(  # type: ignore[method-assign]
        "captured.graph_module() (unlift + deepcopy)", capture.CapturedModel.graph_module
    )
    _patch(flow, "load_data", "data")
    _patch(flow, "exported_stage", "float stage")
    _patch(flow, "prepare", "prepare")
    _patch(flow, "train_qat", "train")
    training.QatRun.__init__ = _timed("train: QatRun setup", training.QatRun.__init__)  # type: ignore[method-assign]
    training.QatRun.step = _timed("train: steps", training.QatRun.step)  # type: ignore[method-assign]
    training.QatRun.state = _timed("train: state snapshots", training.QatRun.state)  # type: ignore[method-assign]
    training.QatRun.stage = _timed("train: trained stage", training.QatRun.stage)  # type: ignore[method-assign]
    _patch(training, "_loss", "train: steps: forward + loss")
    _patch(flow, "calibrate", "calibrate")
    _patch(flow, "convert", "convert")
    _patch(flow, "program_for", "export (converted)")
    _patch(report, "program_for", "float re-export (size ratio)")
    _patch(flow, "save_program", "save + reload check")
    saves = [
        "save + reload check: torch.export.save",
        "report: float size (save): torch.export.save",
    ]
    _patch_calls(torch.export, "save", saves)
    _patch(torch.export, "load", "save + reload check: torch.export.load")
    _patch(export, "compare_outputs", "save + reload check: compare outputs")
    _patch(flow, "make_report", "report")
    _patch(stage, "trained_float", "report: trained float graph")
    _patch(report, "compare", "report: compare")
    _patch_calls(compare, "evaluate", ["report: compare: evaluate float",
                                       "report: compare: evaluate int8"])  # fmt: skip
    _patch(compare, "per_node_sqnr", "report: compare: per-node SQNR")
    _patch(report, "evaluate", "report: evaluate fake-quant")
    _patch(report, "program_size", "report: float size (save)")
    _patch(report, "signature_report", "report: signature")
    _patch(flow, "write_text", "write report + recipe")
    _patch(flow, "build", "build")
    status = _timed("cli main", cli.main)(argv)
    from workbench.quantization.pattern_cache import installed_cache

    cache = installed_cache()
    stats = cache.stats if cache is not None else None
    print(
        json.dumps(
            {
                "status": status,
                "imports": {k: round(v, 4) for k, v in imports.items()},
                "phases": {k: [round(v[0], 4), v[1]] for k, v in PHASES.items()},
                "cache": None if stats is None else dataclasses.asdict(stats),
                "total": round(time.perf_counter() - START, 4),
            }
        )
    )


if __name__ == "__main__":
    main()
