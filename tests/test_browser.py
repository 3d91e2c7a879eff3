"""The real app in headless Debian Chromium: the graph appears, a click opens a node."""

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

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]  # fmt: skip

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium is not installed"),
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """`streamlit run app.py` on a free loopback port, stopped by PID afterwards."""
    port = _free_port()
    ARTIFACTS.mkdir(exist_ok=True)
    log = ARTIFACTS.joinpath("streamlit.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", f"--server.port={port}",
         "--server.address=127.0.0.1", "--server.headless=true",
         "--browser.gatherUsageStats=false", "--server.fileWatcherType=none"],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
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
            assert proc.poll() is None, "streamlit exited; see artifacts/streamlit.log"
            assert time.monotonic() < deadline, "streamlit did not become healthy in 90 s"
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


@pytest.fixture
def page(tmp_path: Path) -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True,
            args=CHROMIUM_ARGS, viewport={"width": 1400, "height": 1000},
        )  # fmt: skip
        try:
            yield context.new_page()
        finally:
            context.close()


def test_graph_appears_and_a_click_opens_the_node(server: str, page) -> None:  # type: ignore[no-untyped-def]
    page.goto(server)
    page.locator('g.node[id="conv2d"]').wait_for(timeout=90_000)
    assert page.locator("g.node").count() == 19
    assert page.get_by_text("sample:digits_cnn").first.is_visible()

    page.locator('g.node[id="conv2d_1"]').click()
    page.get_by_text("block1.conv1 (Conv2d)").first.wait_for(timeout=30_000)
    selected = page.locator('g.node[id="conv2d_1"]')
    assert "wb-selected" in (selected.get_attribute("class") or "")
    page.screenshot(path=str(ARTIFACTS / "graph_page.png"))
