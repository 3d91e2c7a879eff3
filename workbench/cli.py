"""Headless command line: `python -m workbench inspect ...` replays what the app does."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

from workbench.errors import WorkbenchError

EXIT_OK, EXIT_INTERNAL, EXIT_BAD_INPUT = 0, 1, 2
log = logging.getLogger("workbench")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 ok, 1 internal error, 2 bad input)."""
    args = _parser().parse_args(argv)
    _configure_logging(args.debug)
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
    inspect.set_defaults(handler=_inspect)
    return parser


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
    parser.add_argument("--debug", action="store_true", help="show tracebacks and torch logs")


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
    from workbench.capture import capture
    from workbench.graph import describe
    from workbench.render import DEFAULT_NODE_BUDGET, dot_to_svg, render_for_screen, to_dot

    if args.collapse_depth is not None and args.collapse_depth < 1:
        raise WorkbenchError(
            f"--collapse-depth {args.collapse_depth} is not a module depth.",
            "Use 1 for the model's direct children, 2 for theirs, and so on.",
        )
    captured = capture(args.model, input_shape=args.input_shape)
    for note in captured.notes:
        log.warning(note)
    view = describe(captured.graph_module(), stage="exported")
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


def _write(text: str, out: Path | None) -> None:
    if out is None:
        sys.stdout.write(text)
        return
    if not out.parent.is_dir():
        raise WorkbenchError(
            f"Cannot write {out}: the folder {out.parent} does not exist.", "Create it first."
        )
    # Write beside the target and rename, so a failure never leaves a half-written file.
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes the file private; give it the usual mode
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
