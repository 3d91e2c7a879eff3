"""Cold start of the app: from `/_stcore/health` answering to the graph's first node in Chromium.

Each run starts a fresh `streamlit run app.py --model SPEC` on a free port with its own
workspace, opens the page in headless Debian Chromium (launched before the server, so its own
start is not counted) and times, from the first "ok" of the health endpoint, the first
`g.node` of the graph in the DOM and the Graph page's controls (the app ready to use).

Cases: the view cache warm (an entry written by `python -m workbench.drawing.viewcache warm`), the
cache empty (a fresh clone's first start), and the old start (`WORKBENCH_COLD_START=off`:
torch imported and the model captured before anything is drawn), which is the baseline.

`python -m benchmarks.cold_start [--runs N] [--model SPEC]` prints one JSON line per case.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.harness import ROOT, chromium, free_port, start_streamlit, stop, wait_healthy

DEFAULT_MODEL = "sample:digits_cnn"
BIG_MODEL = "benchmarks/models.py:resnet50"  # an HF ResNet-50, 497 graph nodes
CASES = ("warm", "empty", "old")


@dataclass(frozen=True)
class Timing:
    """One cold start, in seconds from the health endpoint's first "ok"."""

    graph: float  # the first g.node of the graph in the DOM
    ready: float  # the Graph page's controls (the model loaded)
    boxes: int  # g.node elements once ready


def _env(workspace: Path, case: str) -> dict[str, str]:
    env = {**os.environ, "WORKBENCH_WORKSPACE": str(workspace), "HF_HUB_OFFLINE": "1"}
    if case == "old":
        env["WORKBENCH_COLD_START"] = "off"
    return env


def warm_cache(workspace: Path, model: str) -> None:
    """Write the model's view cache entry as `make run` does before starting the server."""
    subprocess.run(
        [sys.executable, "-m", "workbench.drawing.viewcache", "warm", "--model", model],
        cwd=ROOT, env=_env(workspace, "warm"), check=True, capture_output=True,
    )  # fmt: skip


def cold_start(model: str, case: str, workspace: Path) -> Timing:
    """Start the app on `workspace` and time one cold start (see the module docstring)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with chromium() as context:
        page = context.new_page()
        proc = start_streamlit(port, "app.py", ("--model", model), env=_env(workspace, case))
        try:
            wait_healthy(url, proc)
            healthy = time.perf_counter()
            page.goto(url)
            page.locator("g.node").first.wait_for(timeout=180_000)
            graph = time.perf_counter() - healthy
            page.get_by_text("Colour by").first.wait_for(timeout=180_000)
            ready = time.perf_counter() - healthy
            return Timing(graph, ready, page.locator("g.node").count())
        finally:
            stop(proc)


def graph_size(model: str, workspace: Path) -> tuple[int, int] | None:
    """(nodes, boxes drawn) of the model's view cache entry in `workspace`, if it has one."""
    from workbench.drawing.viewcache import ViewCache, view_key

    key = view_key(model)
    entry = ViewCache(workspace / "views").get(key) if key is not None else None
    return (entry.nodes, entry.boxes) if entry is not None else None


def measure(
    model: str, runs: int, cases: tuple[str, ...] = CASES
) -> tuple[dict[str, list[Timing]], tuple[int, int] | None]:
    """`runs` cold starts of each case, interleaved so drift in machine load hits all, and
    the graph's (nodes, boxes)."""
    found: dict[str, list[Timing]] = {case: [] for case in cases}
    with tempfile.TemporaryDirectory() as folder:
        warmed = Path(folder) / "warm"
        warm_cache(warmed, model)
        size = graph_size(model, warmed)
        for run in range(runs):
            for case in cases:
                workspace = warmed if case == "warm" else Path(folder) / f"{case}-{run}"
                found[case].append(cold_start(model, case, workspace))
    return found, size


def median(timings: list[Timing], what: str) -> float:
    return statistics.median(getattr(t, what) for t in timings)


def rows(runs: int) -> list[tuple[str, str, str, str, str]]:
    """Table rows (what, workbench, baseline, ratio, goal) for `python -m benchmarks`: the
    default model warm and empty, the ResNet-50 warm, each against the old start of the run."""
    found = []
    for model, label, cases, goal in (
        (DEFAULT_MODEL, "digits CNN", CASES, 3.0),
        (BIG_MODEL, "HF ResNet-50", ("warm", "old"), 5.0),
    ):
        timings, size = measure(model, runs, cases)
        old = median(timings["old"], "graph")
        nodes, boxes = size or (0, timings["old"][-1].boxes)
        for case in cases[:-1]:
            graph, ready = median(timings[case], "graph"), median(timings[case], "ready")
            cache = "view cache warm" if case == "warm" else "view cache empty (first start)"
            found.append((
                f"cold start, {label} ({nodes:,} nodes, {boxes:,} boxes): health → first "
                f"graph node in Chromium, "
                f"{cache} (median of {runs})",
                f"{graph:.2f} s (app ready {ready:.2f} s)",
                f"{old:.2f} s old start (torch + capture first)",
                f"{graph / old:.3f}",
                f"<= {goal:.0f} s" if case == "warm" else "",
            ))  # fmt: skip
    return found


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cold_start")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--cases", default=",".join(CASES), help="warm,empty,old")
    args = parser.parse_args()
    cases = tuple(c for c in args.cases.split(",") if c)
    timings_by_case, size = measure(args.model, args.runs, cases)
    for case, timings in timings_by_case.items():
        graph, ready = median(timings, "graph"), median(timings, "ready")
        print(json.dumps({"model": args.model, "case": case, "graph_s": round(graph, 2),
                          "ready_s": round(ready, 2), "boxes": timings[-1].boxes,
                          "nodes": size[0] if size else None,
                          "load": round(os.getloadavg()[0], 2)}))  # fmt: skip


if __name__ == "__main__":
    main()
