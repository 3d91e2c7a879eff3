"""Headless command line: `python -m workbench inspect ...` replays what the app does."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import io
import json
import logging
import os
import signal
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from workbench.errors import WorkbenchError

if TYPE_CHECKING:
    from torch.fx import GraphModule

    from workbench.model.capture import CapturedModel
    from workbench.quantization.recipe import Recipe
    from workbench.stages.distributed import DistributedContext

__all__ = ["EXIT_BAD_INPUT", "EXIT_INTERNAL", "EXIT_OK", "main"]

EXIT_OK, EXIT_INTERNAL, EXIT_BAD_INPUT = 0, 1, 2
log = logging.getLogger("workbench")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 ok, 1 internal error, 2 bad input)."""
    args = _parser().parse_args(argv)
    args.stderr = sys.stderr  # our own messages go here even while torch's noise is swallowed
    _configure_logging(args.debug)
    if not args.no_pattern_cache:
        from workbench.quantization.pattern_cache import install_pattern_cache

        install_pattern_cache()
    try:
        if args.debug:
            return int(args.handler(args))
        # torch prints partial graphs straight to stderr on export failures; our log handler
        # keeps the real stderr, so only that noise is swallowed.
        with contextlib.redirect_stderr(io.StringIO()):
            return int(args.handler(args))
    except WorkbenchError as exc:
        if args.debug:
            log.exception("bad input")
        print(f"error: {exc.problem}\nfix: {exc.fix}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.debug:
            log.exception("internal error")
        print(
            f"internal error: {type(exc).__name__}: {exc}\n(run again with --debug for the "
            "traceback, and please report it)",
            file=sys.stderr,
        )
        return EXIT_INTERNAL


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m workbench", description="Quantization Workbench, headless."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    inspect = commands.add_parser("inspect", help="describe or draw a model's captured graph")
    _add_model_args(inspect)
    inspect.add_argument("--format", choices=("json", "dot", "svg"), default="json")
    inspect.add_argument("--out", type=Path, help="write here instead of standard output")
    inspect.add_argument(
        "--collapse-depth",
        type=int,
        default=None,
        help="draw each module at this depth as one box (1 = the model's direct children)",
    )
    inspect.add_argument(
        "--node-budget",
        type=int,
        default=None,
        help="dot/svg: collapse further until at most this many boxes are drawn "
        "(default 1500; 0 draws everything)",
    )
    inspect.add_argument(
        "--stage", choices=("exported", "prepared", "converted"), default="exported"
    )
    _add_recipe_args(inspect)
    inspect.add_argument(
        "--data", default=None, help="prepared/converted: calibration data (default: see quantize)"
    )
    inspect.set_defaults(handler=_inspect)

    quantize = commands.add_parser(
        "quantize", help="PTQ or QAT a model and write a reload-checked .pt2 (or .pte) and a report"
    )
    _add_model_args(quantize)
    _add_recipe_args(quantize)
    quantize.add_argument(
        "--data",
        default=None,
        help="digits | random | path/to/file.py:FUNC (default: digits for 1x8x8 inputs, "
        "else random)",
    )
    quantize.add_argument(
        "--steps", type=int, default=None, help="QAT steps (120) or PTQ calibration batches (16)"
    )
    quantize.add_argument("--batch-size", type=int, default=64)
    quantize.add_argument(
        "--eval-samples", type=int, default=None,
        help="evaluate on the first N evaluation samples (default: all of them)",
    )  # fmt: skip
    quantize.add_argument("--lr", type=float, default=1e-4, help="QAT learning rate")
    quantize.add_argument("--optimizer", choices=("adam", "sgd"), default="adam", help="QAT")
    quantize.add_argument(
        "--freeze-bn-step", type=int, default=None,
        help="QAT step after which BatchNorm statistics freeze (default: 60%% of the steps)",
    )  # fmt: skip
    quantize.add_argument(
        "--freeze-observer-step", type=int, default=None,
        help="QAT step after which observer ranges freeze (default: 80%% of the steps)",
    )  # fmt: skip
    quantize.add_argument(
        "--qat-keep", choices=("best", "last"), default="best",
        help="QAT: convert the best evaluated state (the calibrated start included; default) "
        "or the last",
    )  # fmt: skip
    quantize.add_argument(
        "--device", choices=("cpu", "cuda", "auto"), default="cpu",
        help="where calibration, training and evaluation run (auto: cuda when there is a "
        "GPU); convert and export run on the CPU. Under torchrun: gloo on cpu, NCCL on cuda",
    )  # fmt: skip
    quantize.add_argument(
        "--checkpoint-dir", type=Path, default=None, metavar="DIR",
        help="QAT: write a resumable checkpoint here every 10 steps (under torchrun rank 0 "
        "alone writes it; it resumes on one process)",
    )  # fmt: skip
    quantize.add_argument(
        "--out", type=Path, required=True,
        help="the .pt2 to write, or a .pte: lowered to ExecuTorch with XNNPACK, checked in "
        "its runtime, with the .pt2 written beside it",
    )  # fmt: skip
    quantize.add_argument("--report", type=Path, default=None, help="the JSON report to write")
    quantize.add_argument(
        "--recipe-out",
        type=Path,
        default=None,
        help="where to save the recipe used (default: beside --out as NAME.recipe.json)",
    )
    quantize.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    quantize.add_argument(
        "--explorer-data", type=Path, default=None, metavar="DIR",
        help="write our per-node numbers (SQNR, ranges, annotation, delegation) as node data "
        "for Google's Model Explorer on the written .pt2, one JSON file per overlay",
    )  # fmt: skip
    quantize.set_defaults(handler=_quantize)

    search = commands.add_parser(
        "search", help="find per-node precision overrides that keep quality within a budget"
    )
    _add_model_args(search)
    _add_recipe_args(search)
    search.add_argument("--data", default=None, help="as for quantize")
    search.add_argument(
        "--max-drop", type=float, required=True, metavar="PP",
        help="the most quality may fall below float's (accuracy/agreement points, or MSE)",
    )  # fmt: skip
    search.add_argument("--objective", choices=("size", "latency"), default="size",
                        help="what the give-back steps lower (latency: compiled int8)")  # fmt: skip
    search.add_argument("--steps", type=int, default=16, help="calibration batches per convert")
    search.add_argument("--batch-size", type=int, default=64)
    search.add_argument("--eval-samples", type=int, default=None,
                        help="evaluate on the first N evaluation samples")  # fmt: skip
    search.add_argument("--max-candidates", type=int, default=32,
                        help="nodes measured alone, lowest own SQNR first")  # fmt: skip
    search.add_argument("--out", type=Path, required=True, help="the recipe JSON to write")
    search.add_argument(
        "--report", type=Path, default=None,
        help="JSON: every recipe converted, the candidates, the reasons",
    )  # fmt: skip
    search.add_argument(
        "--plot", type=Path, default=None,
        help="HTML: quality against size or latency, the chosen recipe marked",
    )  # fmt: skip
    search.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    search.set_defaults(handler=_search)
    return parser


def _add_recipe_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--recipe", type=Path, default=None, help="recipe JSON (see README)")
    parser.add_argument(
        "--reference-representation", action="store_true",
        help="convert to torchao's reference representation (integer ops in place of q/dq "
        "pairs; rewrites int8-activation patterns, as xnnpack's); saved in the recipe",
    )  # fmt: skip
    parser.add_argument(
        "--mode", choices=("ptq", "qat"), default=None, help="overrides the recipe's mode"
    )
    parser.add_argument(
        "--backend",
        choices=("x86_inductor", "xnnpack"),
        default=None,
        help="overrides the recipe's backend",
    )
    parser.add_argument(
        "--output", default=None,
        help="the output leaf that is the prediction: a name (logits) or an index "
        "(default: logits, else the first floating-point output); saved in the recipe",
    )  # fmt: skip
    parser.add_argument(
        "--loss", default=None,
        help="path/to/file.py:FUNC, FUNC(outputs, batch) -> scalar tensor: the QAT loss; "
        "saved in the recipe",
    )  # fmt: skip
    parser.add_argument(
        "--metric", default=None,
        help="path/to/file.py:FUNC, FUNC(outputs, batch) -> float, higher is better: the "
        "quality; saved in the recipe",
    )  # fmt: skip


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", required=True, help="sample:NAME | path/to/file.py:FUNC | path/to/model.pt2"
    )
    parser.add_argument(
        "--input-shape",
        type=_shape,
        default=None,
        help="example input shape, batch first, e.g. 4,1,8,8 (replaces the model's own)",
    )
    parser.add_argument(
        "--dynamic", action="append", default=[], metavar="INPUT:DIM",
        help="make this dim of this input dynamic too (repeatable), e.g. input_ids:1; the "
        "batch and the sequence length of integer inputs are dynamic where they can be",
    )  # fmt: skip
    parser.add_argument("--debug", action="store_true", help="show tracebacks and torch logs")
    parser.add_argument(
        "--no-pattern-cache",
        action="store_true",
        help="use torchao's pattern export on every call (slow; for comparison)",
    )


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(part) for part in text.replace("x", ",").split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"'{text}' is not a shape; write sizes separated by commas, e.g. 4,1,8,8"
        ) from None
    if not shape or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"'{text}' is not a shape of positive sizes")
    return shape


def _inspect(args: argparse.Namespace) -> int:
    from workbench.drawing.dot import DEFAULT_NODE_BUDGET, dot_to_svg, render_for_screen, to_dot
    from workbench.graph.view import describe

    if args.collapse_depth is not None and args.collapse_depth < 1:
        raise WorkbenchError(
            f"--collapse-depth {args.collapse_depth} is not a module depth.",
            "Use 1 for the model's direct children, 2 for theirs, and so on.",
        )
    captured = _capture(args)
    view = describe(_stage_module(args, captured), stage=args.stage)
    if args.format == "json":
        document = {"model": str(captured.spec), **view.as_dict()}
        text = json.dumps(document, indent=2) + "\n"
    else:
        budget = DEFAULT_NODE_BUDGET if args.node_budget is None else args.node_budget
        if budget > 0:
            rendered = render_for_screen(
                view, collapse_depth=args.collapse_depth, node_budget=budget
            )
            if rendered.auto_collapsed:
                log.warning(
                    "the graph has more boxes than the node budget (%d): drawn collapsed at "
                    "depth %s%s; pass --node-budget 0 to draw everything",
                    budget,
                    rendered.collapse_depth,
                    f", loose nodes in chunks of {rendered.chunk_size}"
                    if rendered.chunk_size
                    else "",
                )
            text = rendered.dot
        else:
            text = to_dot(view, collapse_depth=args.collapse_depth)
        if args.format == "svg":
            text = dot_to_svg(text)
    _write(text, args.out)
    return EXIT_OK


def _stage_module(args: argparse.Namespace, captured: CapturedModel) -> GraphModule:
    from workbench.data.datasets import load_data
    from workbench.stages.steps import calibrate, convert, prepare

    if args.stage == "exported":
        if args.recipe is not None:
            from workbench.graph.view import describe
            from workbench.quantization.recipe import validate

            validate(_recipe(args), describe(captured.graph_module()))
        return captured.graph_module()
    prepared = prepare(captured, _recipe(args))
    if args.stage == "prepared":
        return prepared.graph_module
    recipe = _recipe(args)
    data = load_data(_default_data(args.data, captured), captured.signature, task=recipe.task())
    return convert(calibrate(prepared, data, batches=4)).graph_module


def _recipe(args: argparse.Namespace) -> Recipe:
    from workbench.quantization.recipe import Recipe, RecipeError

    recipe = Recipe()
    if args.recipe is not None:
        try:
            text = args.recipe.read_text(encoding="utf-8")
        except OSError as exc:
            raise RecipeError(
                f"Cannot read the recipe {args.recipe}: {exc.strerror}.", "Check the path."
            ) from exc
        recipe = Recipe.from_json(text, source=str(args.recipe))
    given = ("mode", "backend", "output", "loss", "metric", "reference_representation")
    changes = {k: getattr(args, k) for k in given if getattr(args, k)}
    return dataclasses.replace(recipe, **changes) if changes else recipe


def _capture(args: argparse.Namespace) -> CapturedModel:
    from workbench.model.capture import DimRequest, capture

    dynamic = [request for text in args.dynamic for request in DimRequest.parse(text)]
    captured = capture(args.model, input_shape=args.input_shape, dynamic=dynamic)
    for note in captured.notes:
        log.warning(note)
    return captured


def _default_data(data: str | None, captured: CapturedModel) -> str:
    from workbench.data.datasets import default_data_spec

    return data if data is not None else default_data_spec(captured.example_inputs)


def _quantize(args: argparse.Namespace) -> int:
    from workbench.stages.distributed import resolve_device, start_distributed, stop_distributed

    device = resolve_device(args.device)  # no GPU for --device cuda: bad input, before any work
    context = start_distributed(device)  # under torchrun: this rank's place (see distributed.py)
    previous = signal.getsignal(signal.SIGTERM)
    if context is not None:
        # torchrun stops the other ranks with SIGTERM when one fails: say so, don't just vanish.
        signal.signal(signal.SIGTERM, functools.partial(_stopped_by_torchrun, context.rank))
    try:
        return _quantize_on(args, device, context)
    finally:
        signal.signal(signal.SIGTERM, previous)
        stop_distributed(context)


def _stopped_by_torchrun(rank: int, *_: object) -> None:
    raise WorkbenchError(
        f"Rank {rank} was stopped by torchrun (SIGTERM): another rank failed.",
        "See torchrun's summary for the rank that failed first; a --checkpoint-dir checkpoint "
        "(rank 0 writes it) resumes on one process.",
    )


def _quantize_on(args: argparse.Namespace, device: str, context: DistributedContext | None) -> int:
    from workbench.stages.build import build

    recipe = _recipe(args)
    main_rank = context is None or context.is_main
    if context is not None and context.world_size > 1 and recipe.mode != "qat":
        raise WorkbenchError(
            f"torchrun started {context.world_size} processes for PTQ, which calibrates "
            "on a few batches in one process.",
            "Run PTQ as plain python -m workbench quantize, or pass --mode qat to train on "
            "every process.",
        )
    if args.eval_samples is not None and args.eval_samples < 1:
        raise WorkbenchError(f"--eval-samples {args.eval_samples} is not a number of samples.",
                             "Give a positive count, or leave it out to evaluate on all of "
                             "them.")  # fmt: skip
    if args.out.suffix not in (".pt2", ".pte"):
        raise WorkbenchError(
            f"--out {args.out} does not end in .pt2 or .pte.",
            "Name the file MODEL.pt2 (torch.export) or MODEL.pte (ExecuTorch with XNNPACK).",
        )
    from workbench.artifacts.export import check_writable

    pt2 = args.out.with_suffix(".pt2")
    for path in (args.out, pt2, args.report, args.recipe_out, args.checkpoint_dir):
        if path is not None and main_rank:
            check_writable(path)
    captured = _capture(args)
    recipe_out = args.recipe_out or args.out.with_name(args.out.stem + ".recipe.json")
    result = build(
        captured, recipe, data=_default_data(args.data, captured), out=args.out,
        report_path=args.report, recipe_path=recipe_out, steps=args.steps,
        batch_size=args.batch_size, eval_samples=args.eval_samples, lr=args.lr,
        optimizer=args.optimizer, freeze_bn_step=args.freeze_bn_step,
        freeze_observer_step=args.freeze_observer_step, qat_keep=args.qat_keep,
        progress=None if args.quiet or not main_rank
        else functools.partial(_progress_line, args.stderr),
        device=device, distributed=context, checkpoint_dir=args.checkpoint_dir,
    )  # fmt: skip
    if result is None:  # a rank other than 0: it trained, rank 0 writes
        return EXIT_OK
    quality = result.report["quality"]
    files = result.report["files"]
    unit = "" if quality["metric"] == "mse" else " %"
    print(
        f"wrote {pt2} ({files['bytes']:,} bytes, {files['ratio_to_float']:.2f}x float); "
        f"{quality['metric']} float {quality['float']:.2f}{unit}, "
        f"quantized {quality['quantized']:.2f}{unit}; reload check max |diff| "
        f"{result.saved.max_abs_diff:.3g} over {len(result.saved.outputs)} output(s)"
        + "".join(f"; dynamic {d}" for d in result.saved.dynamic_dims),
        file=args.stderr,
    )
    if "qat" in result.report:
        from workbench.stages.training import qat_lines

        print("\n".join(qat_lines(result.report["qat"])), file=args.stderr)
    if "pte" in result.report:
        pte = result.report["pte"]
        counts = pte["placement_counts"]
        outside = ", ".join(f"{n['node']} ({n['op']})" for n in pte["outside_delegate"])
        print(
            f"wrote {args.out} ({pte['bytes']:,} bytes, float .pte {pte['float_pte_bytes']:,}); "
            f"nodes on XNNPACK {counts['xnnpack']}, portable {counts['portable']}"
            f"{f' ({outside})' if outside else ''}, not in program {counts['not in program']}; "
            f"runtime check max |diff| {pte['check']['max_abs_diff']:.3g}, SQNR "
            f"{pte['check']['sqnr_db']} dB, agreement {pte['check']['agreement']:.1f} %",
            file=args.stderr,
        )
    if args.explorer_data is not None:
        from workbench.artifacts.model_explorer import write_node_data

        written = write_node_data(
            args.explorer_data, pt2, result.stages.converted.graph_module,
            comparison=result.comparison, effective=result.stages.converted.applied,
            placement=result.pte.lowered.placement if result.pte is not None else None,
        )  # fmt: skip
        print(f"wrote Model Explorer node data: {', '.join(str(p) for p in written)}",
              file=args.stderr)  # fmt: skip
    return EXIT_OK


def _search(args: argparse.Namespace) -> int:
    from workbench.analysis.mixed_precision import search_precision
    from workbench.artifacts.export import check_writable
    from workbench.data.datasets import load_data
    from workbench.quantization.recipe import check_output

    for flag, value in (("--steps", args.steps), ("--batch-size", args.batch_size),
                        ("--max-candidates", args.max_candidates),
                        ("--eval-samples", args.eval_samples)):  # fmt: skip
        if value is not None and value < 1:
            raise WorkbenchError(f"{flag} {value} is not a positive count.", "Give 1 or more.")
    for path in (args.out, args.report, args.plot):
        if path is not None:
            check_writable(path)
    recipe = _recipe(args)
    captured = _capture(args)
    check_output(recipe, captured.outputs)
    spec = _default_data(args.data, captured)
    data = load_data(spec, captured.signature, task=recipe.task())
    if args.eval_samples is not None:
        data = data.limited(args.eval_samples)

    def line(done: int, total: int, info: dict[str, object]) -> None:
        print(f"search {done}/{total}: {info['label']} {info['quality']:.4g}",
              file=args.stderr, flush=True)  # fmt: skip

    result = search_precision(
        captured, recipe, data, max_drop=args.max_drop, objective=args.objective,
        calibration_batches=args.steps, batch_size=args.batch_size,
        max_candidates=args.max_candidates, progress=None if args.quiet else line,
    )  # fmt: skip
    from workbench.artifacts.export import write_text

    write_text(args.out, result.chosen.to_json())
    if args.report is not None:
        write_text(args.report, json.dumps(result.as_dict(), indent=2) + "\n")
    if args.plot is not None:
        from workbench.drawing.charts import search_figure

        write_text(args.plot, search_figure(result).to_html(include_plotlyjs=True))
    for reason in result.reasons:
        print(reason, file=args.stderr)
    replay = (f"python -m workbench quantize --model {args.model} --recipe {args.out} "
              f"--data {spec} --steps {args.steps} --out model.pt2")  # fmt: skip
    print(f"wrote {args.out}; replay: {replay}", file=args.stderr)
    if not result.met:
        print(
            f"error: no recipe found keeps {result.metric} within {args.max_drop:g} of float "
            f"({result.chosen_quality:.4g} against {result.float_quality:.4g}); the best one "
            "found is written.\nfix: allow a larger --max-drop, measure more nodes "
            "(--max-candidates) or start from a higher-precision default.",
            file=args.stderr,
        )
        return EXIT_BAD_INPUT
    return EXIT_OK


def _progress_line(
    stream: TextIO, stage: str, done: int, total: int, info: dict[str, object]
) -> None:
    step = max(1, total // 4)
    if done == total or done % step == 0:
        loss = f" loss {info['loss']:.4f}" if "loss" in info else ""
        print(f"{stage} {done}/{total}{loss}", file=stream, flush=True)


def _write(text: str, out: Path | None) -> None:
    from workbench.artifacts.export import check_writable, write_text

    if out is None:
        sys.stdout.write(text)
        return
    check_writable(out)
    write_text(out, text)


def _configure_logging(debug: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING, format="%(levelname)s: %(message)s"
    )
    if not debug:
        import torch  # noqa: F401  (torch sets its loggers' levels on import; override after)

        # torch logs whole tracebacks and graph dumps for errors we explain in one line.
        for name in ("torch", "torchao"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
        warnings.filterwarnings("ignore")
        os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")
