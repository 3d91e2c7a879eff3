"""A ~600-node graph in headless Chromium: it opens as module groups at a legible scale, a
click on a group expands it in place, its frame title collapses it, the minimap and Fit
selection work. Fixtures and flags as tests/app/test_browser.py."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]  # fmt: skip
SPEC = "benchmarks/models.py:deep_stack_600"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium is not installed"),
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`streamlit run app.py -- --model SPEC` with a fresh workspace, stopped by PID."""
    port = _free_port()
    ARTIFACTS.mkdir(exist_ok=True)
    log = ARTIFACTS.joinpath("streamlit-graphs.log").open("w")
    workspace = tmp_path_factory.mktemp("workspace")
    env = {**os.environ, "WORKBENCH_WORKSPACE": str(workspace), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", f"--server.port={port}",
         "--server.address=127.0.0.1", "--server.headless=true",
         "--browser.gatherUsageStats=false", "--server.fileWatcherType=none", "--",
         "--model", SPEC],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as reply:
                    if reply.read() == b"ok":
                        break
            except OSError:
                pass
            assert proc.poll() is None, "streamlit exited; see artifacts/streamlit-graphs.log"
            assert time.monotonic() < deadline, "streamlit did not become healthy in 90 s"
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


@pytest.fixture
def page(tmp_path: Path) -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True,
            args=CHROMIUM_ARGS, viewport={"width": 1500, "height": 1000},
        )  # fmt: skip
        try:
            yield context.new_page()
        finally:
            context.close()


def test_a_group_click_expands_it_and_its_title_collapses_it(server: str, page) -> None:  # type: ignore[no-untyped-def]
    page.goto(server)
    box = page.locator('g.node[id="module/0"]')
    box.wait_for(timeout=120_000)
    graph = page.locator(".wb-graph")
    # Legible at first sight: at least 0.9 px per point (Graphviz text is 10 pt).
    assert float(graph.get_attribute("data-scale") or 0) >= 0.9
    assert page.locator("g.node").count() == 7  # x, 5 stages, output
    assert not page.locator(".wb-mini").is_visible()  # the whole graph is on screen
    box.click()
    page.locator('g.cluster[id="cluster/0"]').wait_for(timeout=60_000)
    page.locator('g.node[id="linear"]').wait_for()
    page.locator('g.cluster.wb-selected[id="cluster/0"]').wait_for()  # selected and centred
    assert page.locator('g.node[id="module/1"]').count() == 1  # the others stay collapsed
    assert page.locator(".wb-mini").is_visible()  # now taller than the box: a minimap
    page.get_by_text("Expanded: click its frame's title").wait_for(timeout=30_000)
    # Zooming out stops at the legibility limit; the overview shows everything.
    graph.hover()
    for _ in range(30):
        page.mouse.wheel(0, 100)
    assert float(graph.get_attribute("data-scale") or 0) >= 0.9 - 1e-3
    page.get_by_role("button", name="Overview").click()
    assert float(graph.get_attribute("data-scale") or 0) < 0.9
    page.get_by_role("button", name="Fit selection").click()
    assert float(graph.get_attribute("data-scale") or 0) >= 0.9 - 1e-3
    page.locator('g.cluster[id="cluster/0"] > text').first.dispatch_event("click")
    page.locator('g.node[id="module/0"]').wait_for(timeout=60_000)
    assert page.locator('g.node[id="linear"]').count() == 0
