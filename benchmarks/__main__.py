"""`make bench`: ratios of the workbench against bare torchao/torch, measured side by side.

Prints a table and writes it to benchmarks/RESULTS.md with the machine it ran on.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

HERE = Path(__file__).resolve().parent
GOALS = {"repeat": 0.05, "oneshot": 0.4, "recording": 1.05, "screen": 2.0, "stream_mb": 500}


@dataclass
class Row:
    what: str
    workbench: str
    baseline: str
    ratio: str
    goal: str = ""


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench_repeat(
    rows: list[Row],
    repeats: int,
    spec: str = "sample:digits_cnn",
    label: str = "digits CNN",
    *,
    warm_up: bool = False,
) -> None:
    """Repeat prepare_qat + convert of a model: cached workbench vs bare torchao.

    With `warm_up`, one untimed workbench run first fills the cache with the model's own
    patterns (a repeat is what follows a first build); else only `warm_pattern_cache` runs.
    """
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_qat_pt2e

    from workbench.model.capture import capture
    from workbench.quantization.pattern_cache import (
        install_pattern_cache,
        uninstall_pattern_cache,
        warm_pattern_cache,
    )
    from workbench.quantization.quantizer import base_quantizer
    from workbench.quantization.recipe import Recipe
    from workbench.stages.steps import convert, prepare

    captured = capture(spec)
    x = captured.example_inputs

    def bare() -> None:
        prepared = prepare_qat_pt2e(
            captured.graph_module(), base_quantizer("x86_inductor", is_qat=True)
        )
        x.call(prepared)
        move_exported_model_to_eval(prepared)
        convert_pt2e(prepared)

    def workbench() -> None:
        stage = prepare(captured, Recipe(mode="qat"))
        x.call(stage.graph_module)
        convert(stage)

    uninstall_pattern_cache()
    bare_times = [timed(bare) for _ in range(2)]
    install_pattern_cache()
    warm_pattern_cache()
    if warm_up:
        workbench()
    wb_times = [timed(workbench) for _ in range(repeats)]
    b, w = statistics.median(bare_times), statistics.median(wb_times)
    rows.append(
        Row(
            f"repeat prepare_qat + convert, {label} (median)",
            f"{w:.2f} s",
            f"{b:.2f} s bare torchao",
            f"{w / b:.3f}",
            f"<= {GOALS['repeat']}",
        )
    )


def bench_oneshot(rows: list[Row], runs: int) -> None:
    """A cold process doing capture + prepare_qat + convert, with and without the workbench."""

    def run(side: str) -> float:
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "benchmarks.oneshot", side],
            cwd=HERE.parent,
            check=True,
            capture_output=True,
        )
        return time.perf_counter() - start

    bare = statistics.median(run("bare") for _ in range(max(1, runs - 1)))
    wb = statistics.median(run("workbench") for _ in range(runs))
    rows.append(
        Row(
            "cold one-shot process: capture + prepare_qat + convert",
            f"{wb:.2f} s",
            f"{bare:.2f} s bare torchao",
            f"{wb / bare:.3f}",
            f"<= {GOALS['oneshot']}",
        )
    )


HF_MODELS = "tests/models/hf_models.py"
HF_LABELS = {"resnet": "HF ResNet", "bert": "HF BERT"}


def _python(*args: str) -> tuple[float, str]:
    """Run `python ARGS` in a fresh process from the repository root: (wall seconds, stdout)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, *args], cwd=HERE.parent, env=env, check=True, capture_output=True,
        text=True,
    )  # fmt: skip
    return time.perf_counter() - start, done.stdout


def _last_json(stdout: str) -> dict[str, Any]:
    return json.loads(stdout.strip().splitlines()[-1])


def _quantize_args(model: str, steps: int, folder: str, *extra: str) -> list[str]:
    return [
        "quantize", "--model", f"{HF_MODELS}:{model}", "--mode", "qat", "--data", "random",
        "--steps", str(steps), "--out", f"{folder}/{model}.pt2", "--report",
        f"{folder}/{model}.json", "--quiet", *extra,
    ]  # fmt: skip


def bench_hf_oneshot(rows: list[Row], runs: int, steps: int) -> None:
    """The real CLI's cold QAT build of an HF model against the bare torchao flow, each in a
    fresh process (benchmarks/bare_flow.py); runs interleaved, medians compared."""
    for model, label in HF_LABELS.items():
        bare_times, wb_times = [], []
        with tempfile.TemporaryDirectory() as folder:
            for _ in range(runs):
                bare = ["benchmarks.bare_flow", model, "--steps", str(steps)]
                bare_times.append(_python("-m", *bare, "--out", f"{folder}/bare.pt2")[0])
                wb_times.append(
                    _python("-m", "workbench", *_quantize_args(model, steps, folder))[0]
                )
        b, w = statistics.median(bare_times), statistics.median(wb_times)
        rows.append(
            Row(
                f"cold one-shot CLI quantize --mode qat --data random --steps {steps}, {label} "
                f"(median of {runs})",
                f"{w:.2f} s",
                f"{b:.2f} s bare torchao flow",
                f"{w / b:.3f}",
                f"<= {GOALS['oneshot']}",
            )
        )


def bench_hf_repeat(rows: list[Row], repeats: int) -> None:
    """Repeat prepare_qat + convert of the HF models (a warm-up build first)."""
    for model, label in HF_LABELS.items():
        bench_repeat(rows, repeats, f"{HF_MODELS}:{model}", label, warm_up=True)


# (label, workbench phase keys summed, bare phase keys summed); "· " marks a part of the row
# above. Workbench keys are benchmarks/breakdown.py's ("imports:" ones from its "imports").
BREAKDOWN: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = (
    ("imports: torch", ("imports:torch",), ("imports: torch",)),
    ("imports: torchao PT2E", ("imports:torchao pt2e",), ("imports: torchao pt2e",)),
    ("imports: transformers (+ ResNet/BERT code)",
     ("imports:transformers (+ ResNet/BERT model code)",), ("imports: transformers",)),
    ("imports: workbench modules", ("imports:workbench (cli, flow and what they import)",), ()),
    ("capture (build the model + torch.export)", ("capture",), ("build model", "export")),
    ("· torch.export", ("capture: torch.export",), ("export",)),
    ("data (--data random: 512 + 256 samples)", ("data",), ()),
    ("float stage", ("float stage",), ()),
    ("prepare (describe + validate + prepare_qat_pt2e)", ("prepare",), ("prepare",)),
    ("train", ("train",), ("train",)),
    ("· setup (copy, train mode, state snapshot)", ("train: QatRun setup",), ()),
    ("· steps", ("train: steps",), ()),
    ("· · forward + loss (teacher included)", ("train: steps: forward + loss",), ()),
    ("· trained stage (copy, eval mode)", ("train: trained stage",), ()),
    ("convert", ("convert",), ("convert",)),
    ("export of the converted model", ("export (converted)",), ("re-export",)),
    ("save + reload check", ("save + reload check",), ("save", "reload + check")),
    ("· torch.export.save", ("save + reload check: torch.export.save",), ("save",)),
    ("· torch.export.load", ("save + reload check: torch.export.load",), ()),
    ("report (evaluation, per-node SQNR, sizes)", ("report",), ()),
    ("· evaluate float (eval split)", ("report: compare: evaluate float",), ()),
    ("· evaluate int8 (eval split)", ("report: compare: evaluate int8",), ()),
    ("· evaluate fake-quant (eval split)", ("report: evaluate fake-quant",), ()),
    ("· per-node SQNR (one batch)", ("report: compare: per-node SQNR",), ()),
    ("· float re-export for the size ratio", ("float re-export (size ratio)",), ()),
    ("· float size (torch.export.save)", ("report: float size (save)",), ()),
    ("· signature (one float call)", ("report: signature",), ()),
    ("· trained float graph", ("report: trained float graph",), ()),
)  # fmt: skip
_BUILD_PARTS = ("data", "float stage", "prepare", "train", "convert", "export (converted)",
                "save + reload check", "report", "write report + recipe")  # fmt: skip


def bench_breakdown(sections: dict[str, str], steps: int) -> None:
    """Where a cold CLI QAT build spends its time (benchmarks/breakdown.py), per phase, beside
    the bare flow's phases, both in fresh processes of this run."""
    measured = {}
    with tempfile.TemporaryDirectory() as folder:
        for model in HF_LABELS:
            wall, out = _python("-m", "benchmarks.breakdown", "--",
                                *_quantize_args(model, steps, folder))  # fmt: skip
            wb = _last_json(out)
            if wb["status"] != 0:
                raise RuntimeError(f"the CLI failed on {model} (exit {wb['status']})")
            bare_wall, bare_out = _python("-m", "benchmarks.bare_flow", model, "--steps",
                                          str(steps), "--out", f"{folder}/bare.pt2")  # fmt: skip
            measured[model] = (wall, wb, bare_wall, _last_json(bare_out))

    def cell(value: float | None) -> str:
        return "" if value is None else f"{value:.2f}"

    header = " | ".join(f"{HF_LABELS[m]} workbench | {HF_LABELS[m]} bare" for m in measured)
    lines = [f"| phase (s) | {header} |", "|---|" + "---|" * (2 * len(measured))]

    def row(label: str, values: list[float | None]) -> None:
        lines.append(f"| {label} | " + " | ".join(cell(v) for v in values) + " |")

    def wb_value(wb: dict[str, Any], keys: tuple[str, ...]) -> float | None:
        found = []
        for key in keys:
            if key.startswith("imports:"):
                found.append(wb["imports"].get(key.removeprefix("imports:")))
            else:
                found.append(wb["phases"].get(key, [None])[0])
        return sum(v for v in found if v is not None) if any(v is not None for v in found) else None

    def bare_value(bare: dict[str, Any], keys: tuple[str, ...]) -> float | None:
        return sum(bare["phases"][k] for k in keys) if keys else None

    values: list[float | None] = []
    for wall, _, bare_wall, _ in measured.values():
        values += [wall, bare_wall]
    row("**process wall (parent clock)**", values)
    values = []
    for wall, wb, bare_wall, bare in measured.values():
        values += [wall - wb["total"], bare_wall - bare["total"]]
    row("interpreter start + exit", values)
    for label, wb_keys, bare_keys in BREAKDOWN:
        values = []
        for _, wb, _, bare in measured.values():
            values += [wb_value(wb, wb_keys), bare_value(bare, bare_keys)]
        row(label, values)
    values = []
    for _, wb, _, _ in measured.values():
        phases = wb["phases"]
        build_rest = phases["build"][0] - sum(phases.get(k, [0.0])[0] for k in _BUILD_PARTS)
        outside = wb["total"] - sum(wb["imports"].values()) - phases["capture"][0]
        outside -= phases["build"][0]
        values += [build_rest + outside, None]
    row("rest (argparse, recipe, checks, writing the report)", values)
    caches = ", ".join(
        f"{HF_LABELS[m]} {wb['cache']['hits']} hits / {wb['cache']['misses']} misses"
        for m, (_, wb, _, _) in measured.items()
        if wb["cache"]
    )
    sections["breakdown"] = (
        f"## Where a cold `quantize --mode qat --data random --steps {steps}` spends its time\n\n"
        "`python -m benchmarks --only breakdown`: the real CLI in a fresh process with timers "
        "around the functions it calls (benchmarks/breakdown.py), beside the bare torchao "
        "flow's phases (benchmarks/bare_flow.py), one run each, same machine and minute. "
        "Rows marked · are part of the row above. The workbench's report has no bare "
        "counterpart (the bare flow makes none); its export and reload check do more "
        "(dynamic dims, debug metadata stripped, every output leaf on four evaluation "
        "batches and the example). The bare flow imports torchao's X86InductorQuantizer up "
        "front (its torchao row), the workbench on first use (in its prepare). Pattern cache "
        f"in the cold process: {caches}.\n\n" + "\n".join(lines) + "\n"
    )


def bench_cold_start(rows: list[Row], runs: int) -> None:
    """Health -> graph of a fresh server in Chromium (benchmarks/cold_start.py), view cache
    warm and empty, against the old start (torch and the capture before anything is drawn)."""
    from benchmarks.cold_start import rows as cold_start_rows

    rows += [Row(*row) for row in cold_start_rows(runs)]


def bench_stream(rows: list[Row], gib: float) -> None:
    """GiB of generated batches through calibration in a fresh process: peak RSS growth."""
    _, out = _python("-m", "benchmarks.streaming", "--gib", str(gib))
    result = _last_json(out)
    growth = result["peak_growth"] / 2**20
    streamed = result["streamed_bytes"]
    shape = "x".join(str(d) for d in result["batch_shape"])
    rows.append(
        Row(
            f"streaming calibration: {streamed / 1e9:.2f} GB in {result['batches']} batches of "
            f"{shape} from a generator function, strided conv net (peak RSS growth)",
            f"+{growth:.0f} MB peak RSS, {result['seconds']:.1f} s",
            f"{result['bare_seconds']:.1f} s bare loop over the same batches",
            f"{result['seconds'] / result['bare_seconds']:.2f}",
            f"growth < {GOALS['stream_mb']} MB",
        )
    )


def bench_recording(rows: list[Row], rounds: int) -> None:
    """A QAT step with every fake quantizer's ranges recorded vs the same step without."""
    from torchao.quantization.pt2e import move_exported_model_to_train

    from workbench.data.datasets import load_data
    from workbench.model.capture import capture
    from workbench.quantization.recipe import Recipe
    from workbench.stages.ranges import RangeRecorder
    from workbench.stages.steps import prepare

    captured = capture("sample:digits_cnn")
    data = load_data("digits", captured.signature)
    model = prepare(captured, Recipe(mode="qat")).copy_module()
    move_exported_model_to_train(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-5)
    batches = data.train_batches(64)
    steps = 10
    recorder = RangeRecorder(model, capacity=rounds * steps + 1)

    def step(record: bool, index: int) -> None:
        batch = next(batches)
        loss = nn.functional.cross_entropy(batch.inputs.call(model), batch.targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if record:
            recorder.record(index)

    for i in range(5):
        step(False, i)  # warm-up
    bare, rec = [], []
    for r in range(rounds):  # interleaved, so drift in machine load hits both sides
        bare.append(timed(lambda: [step(False, 0) for _ in range(steps)]) / steps)
        rec.append(timed(lambda r=r: [step(True, r * steps + i) for i in range(steps)]) / steps)
    b, w = statistics.median(bare), statistics.median(rec)
    count = len(recorder.quantizers)
    rows.append(
        Row(
            f"QAT step recording {count} fake quantizers (batch 64)",
            f"{w * 1e3:.2f} ms",
            f"{b * 1e3:.2f} ms bare step",
            f"{w / b:.3f}",
            f"<= {GOALS['recording']}",
        )
    )


class _Block(nn.Sequential):
    pass


def _deep_model(blocks: int, layers: int) -> nn.Module:
    return nn.Sequential(
        *[
            _Block(*[m for _ in range(layers) for m in (nn.Linear(4, 4), nn.ReLU())])
            for _ in range(blocks)
        ]
    )


def bench_graphs(rows: list[Row], sizes: list[int]) -> None:
    """Capture + view + DOT + layout of synthetic deep models, and what the app draws."""
    from workbench.drawing.dot import dot_to_svg, render_for_screen, to_dot
    from workbench.graph.view import describe
    from workbench.model.capture import export_model
    from workbench.model.signature import ModelInputs

    for target in sizes:
        blocks = max(1, round((target / 4) ** 0.5 / 2))
        layers = max(1, round(target / 4 / blocks))
        model = _deep_model(blocks, layers)
        x = ModelInputs((torch.rand(4, 4),))
        start = time.perf_counter()
        program, _ = export_model(model, x)
        export_s = time.perf_counter() - start
        start = time.perf_counter()
        view = describe(program.module(check_guards=False))
        dot = to_dot(view)
        view_s = time.perf_counter() - start
        full = f"{timed(lambda d=dot: dot_to_svg(d)):.2f} s" if len(view) <= 3500 else "skipped"
        start = time.perf_counter()
        shown = render_for_screen(view)
        dot_to_svg(shown.dot)
        screen_s = time.perf_counter() - start
        how = (
            f"collapsed to depth {shown.collapse_depth}, {shown.boxes} boxes"
            if shown.auto_collapsed
            else f"{shown.boxes} boxes"
        )
        rows.append(
            Row(
                f"{len(view):,}-node graph: view + DOT; full layout {full}; screen ({how})",
                f"{view_s:.2f} s view, {screen_s:.2f} s screen",
                f"{export_s:.2f} s torch.export",
                f"{view_s / export_s:.3f}",
                f"screen < {GOALS['screen']:.0f} s",
            )
        )


def bench_export(rows: list[Row]) -> None:
    """Export + reload check of the converted digits CNN, and its size against the float one."""

    from workbench.artifacts.export import program_for, program_size, save_program
    from workbench.data.datasets import load_data
    from workbench.model.capture import capture
    from workbench.quantization.recipe import Recipe
    from workbench.stages.build import quantize

    captured = capture("sample:digits_cnn")
    data = load_data("digits", captured.signature)
    stages = quantize(captured, Recipe(), data, batches=8)
    float_gm, converted = stages.exported.graph_module, stages.converted.graph_module
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        float_program = program_for(float_gm, captured.example_inputs)
        float_s = time.perf_counter() - start
        start = time.perf_counter()
        program = program_for(converted, captured.example_inputs)
        saved = save_program(
            program,
            Path(folder) / "m.pt2",
            reference=converted,
            check_inputs=[captured.example_inputs],
        )
        export_s = time.perf_counter() - start
        float_bytes = program_size(float_program)
    rows.append(
        Row(
            "export + save + reload check, digits CNN int8 (PTQ)",
            f"{export_s:.2f} s (reload {saved.reload_seconds:.2f} s)",
            f"{float_s:.2f} s float re-export",
            f"{export_s / float_s:.2f}",
        )
    )
    rows.append(
        Row(
            "file size, digits CNN .pt2",
            f"{saved.bytes:,} B int8",
            f"{float_bytes:,} B float",
            f"{saved.bytes / float_bytes:.3f}",
            "< 1",
        )
    )


def bench_latency(rows: list[Row], batches: list[int]) -> None:
    """Converted digits CNN against float, both lowered with torch.compile(dynamic=False)."""
    from workbench.analysis.latency import eval_batch, measure_latency
    from workbench.data.datasets import load_data
    from workbench.model.capture import capture
    from workbench.quantization.recipe import Recipe
    from workbench.stages.build import quantize

    captured = capture("sample:digits_cnn")
    data = load_data("digits", captured.signature)
    stages = quantize(captured, Recipe(), data, batches=8)
    float_gm, converted = stages.exported.graph_module, stages.converted.graph_module
    for batch in batches:
        latency = measure_latency(float_gm, converted, eval_batch(data, batch))
        rows.append(
            Row(
                f"compiled latency at batch {batch}, digits CNN int8 vs float",
                f"{latency.int8_ms:.2f} ms (eager q/dq {latency.int8_eager_ms:.1f} ms)",
                f"{latency.float_ms:.2f} ms float compiled",
                f"{latency.int8_ms / latency.float_ms:.2f}",
                "< 1",
            )
        )


def bench_pte(rows: list[Row], batches: list[int], repeats: int) -> None:
    """int8 against float .pte of the digits CNN (xnnpack recipe) in the ExecuTorch runtime.

    Both programs are lowered with the XNNPACK partitioner as `quantize --out m.pte` does;
    each batch is timed as the median of `repeats` calls after two warm-up calls. A batch over
    a program's planned batch runs in chunks (the row says so), as `PteProgram` does.
    """
    import functools
    import statistics

    from workbench.analysis.latency import eval_batch
    from workbench.artifacts.export import program_for
    from workbench.artifacts.pte import lower
    from workbench.data.datasets import load_data
    from workbench.model.capture import capture
    from workbench.quantization.recipe import Recipe
    from workbench.stages.build import quantize

    captured = capture("sample:digits_cnn")
    data = load_data("digits", captured.signature)
    stages = quantize(captured, Recipe(backend="xnnpack"), data, batches=8)
    programs = {}
    for name, gm in (("int8", stages.converted.graph_module),
                     ("float", stages.exported.graph_module)):  # fmt: skip
        program = program_for(gm, captured.example_inputs, dims=captured.dynamic_dims,
                              parameters=captured.parameters, keep_debug=True)  # fmt: skip
        programs[name] = lower(program, what=name, source=gm)
    for batch in batches:
        inputs = eval_batch(data, batch)
        ms: dict[str, float] = {}
        for name, lowered in programs.items():
            run = lowered.program()
            for _ in range(2):
                run(inputs)
            call = functools.partial(run, inputs)
            ms[name] = 1000 * statistics.median(timed(call) for _ in range(repeats))
        chunked = [n for n, lowered in programs.items()
                   if lowered.max_batch is not None and batch > lowered.max_batch]  # fmt: skip
        note = "; " + ", ".join(f"{n} in chunks of {programs[n].max_batch}, its planned batch"
                                for n in chunked) if chunked else ""  # fmt: skip
        rows.append(
            Row(
                f"ExecuTorch runtime latency at batch {batch}, digits CNN .pte int8 vs float "
                f"(XNNPACK{note})",
                f"{ms['int8']:.2f} ms int8 ({programs['int8'].bytes:,} B)",
                f"{ms['float']:.2f} ms float ({programs['float'].bytes:,} B)",
                f"{ms['int8'] / ms['float']:.2f}",
                "< 1",
            )
        )


def bench_browser(rows: list[Row]) -> None:
    """Click -> pixels in Chromium on big graphs (benchmarks/browser_graphs.py)."""
    from benchmarks.browser_graphs import browser_rows

    rows += [Row(*row) for row in browser_rows()]


def machine() -> str:
    cpu = "unknown CPU"
    with open("/proc/cpuinfo") as handle:
        for line in handle:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    import torchao

    return (
        f"{cpu}, {torch.get_num_threads()} torch threads, {platform.python_version()}, "
        f"torch {torch.__version__}, torchao {torchao.__version__}"
    )


def table(rows: list[Row]) -> str:
    lines = [
        "| measurement | workbench | baseline (same run) | ratio | goal |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {r.what} | {r.workbench} | {r.baseline} | {r.ratio} | {r.goal} |" for r in rows]
    return "\n".join(lines)


# Each step's table rows, by how their measurement starts: a run of some steps (--only) keeps
# the other steps' rows of RESULTS.md as they were.
STEP_ROWS = {
    "graphs": r"[\d,]+-node graph:",
    "export": r"export \+ save|file size, digits CNN",
    "latency": r"compiled latency",
    "pte": r"ExecuTorch runtime latency",
    "recording": r"QAT step recording",
    "oneshot": r"cold one-shot process:",
    "oneshot-hf": r"cold one-shot CLI",
    "repeat": r"repeat prepare_qat \+ convert, digits CNN",
    "repeat-hf": r"repeat prepare_qat \+ convert, HF",
    "stream": r"streaming calibration",
    "browser": r"click → pixels",
    "coldstart": r"cold start,",
}
GROUPS = {"hf": ("oneshot-hf", "repeat-hf", "breakdown")}
STEPS = (*STEP_ROWS, "breakdown")


def _only(text: str) -> tuple[str, ...]:
    names: list[str] = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        if part not in STEPS and part not in GROUPS:
            raise argparse.ArgumentTypeError(
                f"unknown step {part!r}; choose from {', '.join((*STEPS, *GROUPS))}"
            )
        names += GROUPS.get(part, (part,))
    return tuple(dict.fromkeys(names))


def _merge(old: str, results: dict[str, list[Row]], sections: dict[str, str]) -> tuple[str, str]:
    """(table, sections) with the steps in `results` replaced and the others' kept from `old`."""
    first = old.split("\n## ", 1)[0]  # the table; sections follow under their headings
    old_rows = [line for line in first.splitlines() if line.startswith("| ") and "---" not in line]
    old_rows = old_rows[1:]  # the header
    old_sections = {}
    for part in old.split("\n## ")[1:]:
        if part.startswith("Where a cold"):
            old_sections["breakdown"] = "## " + part.rstrip() + "\n"
    lines = table([]).splitlines()
    claimed: set[str] = set()
    for step, pattern in STEP_ROWS.items():
        if step in results:
            lines += table(results[step]).splitlines()[2:]
            claimed |= {r for r in old_rows if re.match(rf"\| (?:{pattern})", r)}
        else:
            kept = [r for r in old_rows if re.match(rf"\| (?:{pattern})", r)]
            lines += kept
            claimed |= set(kept)
    lines += [r for r in old_rows if r not in claimed]  # rows no step claims stay at the end
    text = "\n".join(sections.get(k) or old_sections.get(k, "") for k in ("breakdown",))
    return "\n".join(lines), text


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    parser.add_argument("--quick", action="store_true", help="fewer repeats and smaller graphs")
    parser.add_argument("--no-write", action="store_true", help="do not update RESULTS.md")
    parser.add_argument(
        "--only", type=_only, default=None, metavar="STEP[,STEP]",
        help=f"run only these steps ({', '.join(STEPS)}; hf = oneshot-hf, repeat-hf, "
        "breakdown) and keep the other rows of RESULTS.md",
    )  # fmt: skip
    parser.add_argument(
        "--hf-steps", type=int, default=10, metavar="N",
        help="QAT steps of the HF one-shot and breakdown runs (default 10)",
    )  # fmt: skip
    parser.add_argument(
        "--stream-gib", type=float, default=4.0, help="GiB streamed through calibration (4)"
    )
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.getLogger("torch").setLevel(logging.ERROR)
    results: dict[str, list[Row]] = {}
    sections: dict[str, str] = {}
    sizes = [200, 1000] if args.quick else [200, 1000, 3000, 10000]
    runs = 2 if args.quick else 3
    repeats = 3 if args.quick else 5
    steps: dict[str, Callable[[list[Row]], None]] = {
        "graphs": lambda rows: bench_graphs(rows, sizes),
        "export": lambda rows: bench_export(rows),
        "latency": lambda rows: bench_latency(rows, [64] if args.quick else [64, 512]),
        "pte": lambda rows: bench_pte(rows, [1, 64] if args.quick else [1, 8, 64, 512], repeats),
        "recording": lambda rows: bench_recording(rows, 4 if args.quick else 8),
        "oneshot": lambda rows: bench_oneshot(rows, runs),
        "oneshot-hf": lambda rows: bench_hf_oneshot(rows, runs, args.hf_steps),
        "repeat": lambda rows: bench_repeat(rows, repeats),
        "repeat-hf": lambda rows: bench_hf_repeat(rows, repeats),
        "stream": lambda rows: bench_stream(rows, args.stream_gib),
        "browser": lambda rows: bench_browser(rows),
        "coldstart": lambda rows: bench_cold_start(rows, runs),
        "breakdown": lambda rows: bench_breakdown(sections, args.hf_steps),
    }
    chosen = args.only or tuple(steps)
    load_before = os.getloadavg()[0]
    for name in chosen:
        print(f"running {name} …", file=sys.stderr, flush=True)
        steps[name](results.setdefault(name, []))
    target = HERE / "RESULTS.md"
    load = f"load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after"
    now = time.strftime("%Y-%m-%d %H:%M")
    quick = " (--quick)" if args.quick else ""
    if args.only:
        old = target.read_text() if target.exists() else ""
        found = re.search(r"^Run: (.*?); every ratio is", old, re.M)
        run = f"{now}{quick} for {', '.join(chosen)} ({load})" + (
            f"; the other rows: {found.group(1).replace('the other rows: ', '')}" if found else ""
        )
        rows_text, extra = _merge(old, results, sections)
    else:
        run = f"{now}{quick} ({load})"
        rows_text = table([row for name in chosen for row in results[name]])
        extra = sections.get("breakdown", "")
    text = (
        f"# Benchmark results\n\nMachine: {machine()}\n\nRun: {run}; every ratio is "
        f"workbench / baseline measured side by side in the same run.\n\n{rows_text}\n"
        + (f"\n{extra}" if extra else "")
    )
    print(text)
    if not args.no_write:
        target.write_text(text)


if __name__ == "__main__":
    main()
