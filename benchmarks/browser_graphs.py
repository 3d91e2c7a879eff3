"""Click -> pixels in headless Chromium: expanding a module group of a big graph.

The time from a click on a collapsed group box to its expanded layout painted (the Python
rerun, the new Graphviz layout, the new SVG in the DOM), on the Graph page of the real app
(a synthetic ~5,000-node model and an HF ResNet-50) and on a Diff of the ResNet-50's
prepared and converted stages (`benchmarks/diff_app.py`, the diff precomputed here). The
baseline, measured in the same run, is Graphviz laying out the same graph fully expanded:
what every redraw would cost without groups. Screenshots of the collapsed ResNet-50 Graph and
Diff go to artifacts/.

`python -m benchmarks --only browser` writes the rows; `python -m benchmarks.browser_graphs`
prints them.
"""

from __future__ import annotations

import pickle
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from benchmarks.harness import ARTIFACTS, CHROMIUM, chromium, streamlit_server

RESNET = "benchmarks/models.py:resnet50"
SYNTHETIC = "benchmarks/models.py:deep_stack"
GOAL_S = 2.0
CLICKS = 3
Row = tuple[str, str, str, str, str]  # what, workbench, baseline, ratio, goal


@contextmanager
def serve(script: str, *args: str, env: dict[str, str] | None = None) -> Iterator[str]:
    """`streamlit run SCRIPT -- ARGS` (see `benchmarks.harness`); yields its URL."""
    with streamlit_server(script, *args, env=env, log_name=f"bench-{Path(script).stem}.log") as url:
        yield url


@contextmanager
def browser() -> Iterator[Any]:
    """A Chromium page (Playwright, Debian's /usr/bin/chromium), 1600x1000."""
    with chromium(width=1600) as context:
        yield context.pages[0] if context.pages else context.new_page()


def painted(page: Any) -> None:
    """Return once the browser has painted what is in the DOM (two animation frames)."""
    page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")


def settled(page: Any, timeout: float = 60_000) -> None:
    """Wait until the script has finished its run (after the content expected was seen)."""
    page.locator('[data-testid="stApp"][data-test-script-state="notRunning"]').wait_for(
        state="attached", timeout=timeout
    )


def click_to_pixels(
    page: Any, scope: str, path: str, others: tuple[str, ...] = ()
) -> tuple[float, float]:
    """Seconds from a click on group `path`'s box to its expanded frame painted, in `scope`
    and every scope of `others`; then from a click on its frame title to the box painted
    again (a rerun whose layout is cached: the rerun's own cost)."""
    box = page.locator(f'{scope} g.node[id="module/{path}"]')
    box.wait_for(timeout=60_000)
    settled(page)
    start = time.perf_counter()
    box.dispatch_event("click")
    for where in (scope, *others):
        page.locator(f'{where} g.cluster[id="cluster/{path}"]').wait_for(timeout=60_000)
    painted(page)
    seconds = time.perf_counter() - start
    settled(page)
    start = time.perf_counter()
    page.locator(f'{scope} g.cluster[id="cluster/{path}"] > text').first.dispatch_event("click")
    for where in (scope, *others):
        page.locator(f'{where} g.node[id="module/{path}"]').wait_for(timeout=60_000)
    painted(page)
    back = time.perf_counter() - start
    settled(page)
    return seconds, back


def _layout_seconds(dots: list[str]) -> float:
    from workbench.drawing.dot import dot_to_svg

    start = time.perf_counter()
    for dot in dots:
        dot_to_svg(dot, timeout=600)
    return time.perf_counter() - start


def _view(spec: str) -> Any:
    from workbench.graph.view import describe
    from workbench.model.capture import capture

    return describe(capture(spec).graph_module(), stage="exported")


def resnet_diff(path: Path) -> tuple[Any, Any, Any]:
    """Prepared and converted views of the ResNet-50 (2 calibration batches of 1) and their
    diff, pickled to `path` for `diff_app.py`."""
    from workbench.analysis.diff import diff_stages
    from workbench.data.datasets import default_data_spec, load_data
    from workbench.graph.view import describe
    from workbench.model.capture import capture
    from workbench.quantization.recipe import Recipe
    from workbench.stages.steps import calibrate, convert, prepare

    captured = capture(RESNET)
    prepared = prepare(captured, Recipe())
    data = load_data(default_data_spec(captured.example_inputs), captured.signature)
    converted = convert(calibrate(prepared, data, batches=2, batch_size=1))
    diff = diff_stages(prepared.graph_module, converted.graph_module,
                       before_stage="prepared", after_stage="converted")  # fmt: skip
    views = (describe(prepared.graph_module, stage="prepared"),
             describe(converted.graph_module, stage="converted"), diff)  # fmt: skip
    with path.open("wb") as file:
        pickle.dump(views, file)
    return views


def _row(what: str, times: list[tuple[float, float]], baseline: float, base_text: str) -> Row:
    clicks = [t[0] for t in times]
    median = statistics.median(clicks)
    back = statistics.median(t[1] for t in times)
    return (
        what,
        f"{median:.2f} s (median of {len(clicks)}, max {max(clicks):.2f} s; collapsing again, "
        f"layout cached: {back:.2f} s)",
        f"{baseline:.2f} s {base_text}",
        f"{median / baseline:.2f}",
        f"<= {GOAL_S:.0f} s",
    )


def graph_page(spec: str, label: str, screenshot: str | None) -> Row:
    """Click -> pixels on the app's Graph page opened on `spec`."""
    from workbench.drawing.dot import count_boxes, opening_depth, to_dot

    view = _view(spec)
    depth = opening_depth(view)
    assert depth is not None, f"{spec} does not open collapsed"
    full = _layout_seconds([to_dot(view)])
    with tempfile.TemporaryDirectory() as workspace, serve(
        "app.py", "--model", spec, env={"WORKBENCH_WORKSPACE": workspace}
    ) as url, browser() as page:  # fmt: skip
        page.goto(url)
        dot = to_dot(view, collapse_depth=depth)
        shown = re.findall(r'^\s*"(module/[^"]+)" \[label=', dot, flags=re.M)[:CLICKS]
        page.locator(f'g.node[id="{shown[0]}"]').wait_for(timeout=180_000)
        settled(page, 180_000)
        if screenshot:
            painted(page)
            page.screenshot(path=str(ARTIFACTS / screenshot), full_page=True)
        clicks = [click_to_pixels(page, "", b.split("/", 1)[1]) for b in shown]
    what = (f"click → pixels, expand a module group, Graph page, {label} ({len(view):,} nodes, "
            f"{count_boxes(view, collapse_depth=depth)} group boxes at depth {depth})")  # fmt: skip
    base = f"Graphviz layout of the whole graph ({count_boxes(view)} boxes)"
    return _row(what, clicks, full, base)


def diff_page(screenshot: str | None) -> Row:
    """Click -> pixels on the Diff of the ResNet-50's prepared and converted stages."""
    from workbench.drawing.diff import diff_opening_depth, diff_to_dot, grouped_view

    with tempfile.TemporaryDirectory() as folder:
        pickled = Path(folder) / "diff.pkl"
        before, after, diff = resnet_diff(pickled)
        depth = diff_opening_depth(before, after, diff)
        assert depth is not None
        full = _layout_seconds([diff_to_dot(before, diff, side="before"),
                                diff_to_dot(after, diff, side="after")])  # fmt: skip
        grouped = grouped_view(after, diff, side="after")
        dot = diff_to_dot(after, diff, side="after", collapse_depth=depth)
        paths = [m.path for m in grouped.modules.walk() if f'"module/{m.path}" [label=' in dot]
        changed = [p for p in paths if "rewritten" in dot.split(f'"module/{p}" [label=', 1)[1]
                   .split("\n", 1)[0]][:CLICKS]  # fmt: skip
        with serve("benchmarks/diff_app.py", env={"WB_DIFF_PICKLE": str(pickled)}) as url, \
                browser() as page:  # fmt: skip
            page.goto(url)
            page.locator(f'.st-key-diff-after g.node[id="module/{changed[0]}"]').wait_for(
                timeout=180_000
            )
            settled(page)
            if screenshot:
                painted(page)
                page.screenshot(path=str(ARTIFACTS / screenshot), full_page=True)
            clicks = [click_to_pixels(page, ".st-key-diff-after", p, (".st-key-diff-before",))
                      for p in changed]  # fmt: skip
    counts = ", ".join(f"{n} {k}" for k, n in diff.counts().items() if n)
    what = (f"click → pixels, expand a module group on both sides, Diff page, HF ResNet-50 "
            f"prepared vs converted ({counts})")  # fmt: skip
    return _row(what, clicks, full, "Graphviz layout of both sides fully expanded")


def browser_rows(*, screenshots: bool = True) -> list[Row]:
    """The benchmark's rows (and, with `screenshots`, the ResNet-50 screenshots)."""
    if not Path(CHROMIUM).exists():
        print(f"skipping the browser step: no {CHROMIUM}", file=sys.stderr)
        return []
    shots = ("resnet50_graph_collapsed.png", "resnet50_diff_collapsed.png")
    if not screenshots:
        shots = (None, None)  # type: ignore[assignment]
    return [
        graph_page(SYNTHETIC, "synthetic deep stack", None),
        graph_page(RESNET, "HF ResNet-50", shots[0]),
        diff_page(shots[1]),
    ]


if __name__ == "__main__":
    for row in browser_rows():
        print(" | ".join(row))
