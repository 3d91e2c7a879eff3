"""`make bench`: ratios of the workbench against bare torchao/torch, measured side by side.

Prints a table and writes it to benchmarks/RESULTS.md with the machine it ran on.
"""

from __future__ import annotations

import argparse
import logging
import platform
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

HERE = Path(__file__).resolve().parent
GOALS = {"repeat": 0.05, "oneshot": 0.4, "recording": 1.05, "screen": 2.0}


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


def bench_repeat(rows: list[Row], repeats: int) -> None:
    """Repeat prepare_qat + convert of the digits CNN: cached workbench vs bare torchao."""
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_qat_pt2e

    from workbench.capture import capture
    from workbench.pattern_cache import (
        install_pattern_cache,
        uninstall_pattern_cache,
        warm_pattern_cache,
    )
    from workbench.pipeline import convert, prepare
    from workbench.quantizer import base_quantizer
    from workbench.recipe import Recipe

    captured = capture("sample:digits_cnn")
    x = captured.example_inputs

    def bare() -> None:
        prepared = prepare_qat_pt2e(
            captured.graph_module(), base_quantizer("x86_inductor", is_qat=True)
        )
        prepared(*x)
        move_exported_model_to_eval(prepared)
        convert_pt2e(prepared)

    def workbench() -> None:
        stage = prepare(captured, Recipe(mode="qat"))
        stage.graph_module(*x)
        convert(stage)

    uninstall_pattern_cache()
    bare_times = [timed(bare) for _ in range(2)]
    install_pattern_cache()
    warm_pattern_cache()
    wb_times = [timed(workbench) for _ in range(repeats)]
    b, w = statistics.median(bare_times), statistics.median(wb_times)
    rows.append(
        Row(
            "repeat prepare_qat + convert, digits CNN (median)",
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


def bench_recording(rows: list[Row], rounds: int) -> None:
    """A QAT step with every fake quantizer's ranges recorded vs the same step without."""
    from torchao.quantization.pt2e import move_exported_model_to_train

    from workbench.capture import capture
    from workbench.data import load_data
    from workbench.pipeline import prepare
    from workbench.qat import RangeRecorder
    from workbench.recipe import Recipe

    captured = capture("sample:digits_cnn")
    data = load_data("digits", captured.example_inputs)
    model = prepare(captured, Recipe(mode="qat")).copy_module()
    move_exported_model_to_train(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-5)
    batches = data.train_batches(64)
    steps = 10
    recorder = RangeRecorder(model, capacity=rounds * steps + 1)

    def step(record: bool, index: int) -> None:
        inputs, targets = next(batches)
        loss = nn.functional.cross_entropy(model(*inputs), targets)
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
    from workbench.capture import export_model
    from workbench.graph import describe
    from workbench.render import dot_to_svg, render_for_screen, to_dot

    for target in sizes:
        blocks = max(1, round((target / 4) ** 0.5 / 2))
        layers = max(1, round(target / 4 / blocks))
        model = _deep_model(blocks, layers)
        x = (torch.rand(4, 4),)
        start = time.perf_counter()
        program, _, _ = export_model(model, x)
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
    import tempfile

    from workbench.capture import capture
    from workbench.data import load_data
    from workbench.export import program_for, program_size, save_program
    from workbench.pipeline import calibrate, convert, exported_stage, prepare
    from workbench.recipe import Recipe

    captured = capture("sample:digits_cnn")
    data = load_data("digits", captured.example_inputs)
    converted = convert(calibrate(prepare(captured, Recipe()), data, batches=8)).graph_module
    float_gm = exported_stage(captured).graph_module
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
    from workbench.capture import capture
    from workbench.data import load_data
    from workbench.latency import eval_batch, measure_latency
    from workbench.pipeline import calibrate, convert, exported_stage, prepare
    from workbench.recipe import Recipe

    captured = capture("sample:digits_cnn")
    data = load_data("digits", captured.example_inputs)
    converted = convert(calibrate(prepare(captured, Recipe()), data, batches=8)).graph_module
    float_gm = exported_stage(captured).graph_module
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


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    parser.add_argument("--quick", action="store_true", help="fewer repeats and smaller graphs")
    parser.add_argument("--no-write", action="store_true", help="do not update RESULTS.md")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.getLogger("torch").setLevel(logging.ERROR)
    rows: list[Row] = []
    sizes = [200, 1000] if args.quick else [200, 1000, 3000, 10000]
    steps: list[tuple[str, Callable[[], None]]] = [
        ("graphs", lambda: bench_graphs(rows, sizes)),
        ("export", lambda: bench_export(rows)),
        ("latency", lambda: bench_latency(rows, [64] if args.quick else [64, 512])),
        ("recording", lambda: bench_recording(rows, 4 if args.quick else 8)),
        ("oneshot", lambda: bench_oneshot(rows, 2 if args.quick else 3)),
        ("repeat", lambda: bench_repeat(rows, 3 if args.quick else 5)),
    ]
    for name, run in steps:
        print(f"running {name} …", file=sys.stderr, flush=True)
        run()
    text = (
        f"# Benchmark results\n\nMachine: {machine()}\n\nRun: {time.strftime('%Y-%m-%d %H:%M')}"
        f"{' (--quick)' if args.quick else ''}; every ratio is workbench / baseline measured "
        f"side by side in this run.\n\n{table(rows)}\n"
    )
    print(text)
    if not args.no_write:
        (HERE / "RESULTS.md").write_text(text)


if __name__ == "__main__":
    main()
