"""The real app in headless Debian Chromium: graph, click, annotate, table, recipe download."""

from __future__ import annotations

import json
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


@pytest.fixture
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`streamlit run app.py` with a fresh workspace on a free loopback port, stopped by PID."""
    port = _free_port()
    ARTIFACTS.mkdir(exist_ok=True)
    log = ARTIFACTS.joinpath("streamlit.log").open("w")
    env = {**os.environ, "WORKBENCH_WORKSPACE": str(tmp_path_factory.mktemp("workspace"))}
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", f"--server.port={port}",
         "--server.address=127.0.0.1", "--server.headless=true",
         "--browser.gatherUsageStats=false", "--server.fileWatcherType=none"],
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
            assert proc.poll() is None, "streamlit exited; see artifacts/streamlit.log"
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
            args=CHROMIUM_ARGS, viewport={"width": 1500, "height": 1000}, accept_downloads=True,
        )  # fmt: skip
        try:
            yield context.new_page()
        finally:
            context.close()


def _choose(page, label: str, option: str) -> None:  # type: ignore[no-untyped-def]
    """Pick an option of a Streamlit selectbox by its label."""
    page.get_by_role("combobox", name=label, exact=True).first.click()
    page.get_by_role("option", name=option, exact=True).click()


def test_click_a_conv_and_keep_it_float(server: str, page, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    page.goto(server)
    page.locator('g.node[id="conv2d"]').wait_for(timeout=90_000)
    assert page.locator("g.node").count() == 19
    page.screenshot(path=str(ARTIFACTS / "graph_page.png"))

    start = time.perf_counter()
    page.locator('g.node[id="conv2d_1"]').click()
    page.get_by_text("block1.conv1 (Conv2d)").first.wait_for(timeout=30_000)
    click_to_detail = time.perf_counter() - start
    assert "wb-selected" in (page.locator('g.node[id="conv2d_1"]').get_attribute("class") or "")
    page.get_by_text("backend defaults").first.wait_for()

    _choose(page, "Keep float", "yes")
    page.get_by_role("button", name="Apply").click()
    page.get_by_text("keep float", exact=False).filter(has_text="Annotation").first.wait_for(
        timeout=30_000
    )
    page.get_by_text("Colour by").first.wait_for()
    page.get_by_text("annotation", exact=True).click()
    page.wait_for_function(
        """() => {
            const host = [...document.querySelectorAll('*')].find(e => e.shadowRoot &&
                e.shadowRoot.querySelector('g.node[id="conv2d_1"]'));
            const shape = host && host.shadowRoot.querySelector('g.node[id="conv2d_1"] path');
            return shape && shape.getAttribute('fill') === '#9ecae1';
        }""",
        timeout=30_000,
    )
    page.screenshot(path=str(ARTIFACTS / "annotation_editor.png"))

    page.get_by_role("link", name="Recipe").click()
    page.get_by_text("quantizable nodes").first.wait_for(timeout=60_000)
    # The rule list and the table (its accessible grid mirrors the canvas) both show it.
    page.get_by_text("keep_float=True").first.wait_for(timeout=30_000)
    # The grid draws on a canvas; its accessible table holds the visible cells as text.
    keep_float = page.locator(
        'xpath=//tr[td[@aria-colindex="1" and normalize-space()="conv2d_1"]]/td[@aria-colindex="6"]'
    )
    keep_float.wait_for(state="attached", timeout=30_000)
    assert keep_float.text_content() == "true"
    page.screenshot(path=str(ARTIFACTS / "recipe_page.png"))
    with page.expect_download() as download:
        page.get_by_role("button", name="Download recipe.json").click()
    target = tmp_path / "recipe.json"
    download.value.save_as(target)
    assert json.loads(target.read_text())["overrides"] == [
        {"match": {"node": "conv2d_1"}, "set": {"keep_float": True}}
    ]
    # An upload that names a node the model does not have is refused with the closest names.
    bad = tmp_path / "bad.json"
    bad.write_text('{"overrides": [{"match": {"node": "conv2d_11"}, "set": {"keep_float": true}}]}')
    page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files(str(bad))
    page.get_by_role("button", name="Use uploaded recipe").click()
    page.get_by_text("node 'conv2d_11' (closest: conv2d_1").first.wait_for(timeout=30_000)
    page.get_by_text("keep_float=True").first.wait_for()  # the recipe in use is unchanged
    (ARTIFACTS / "timings.txt").write_text(
        f"click to node detail in browser: {click_to_detail:.3f} s\n"
    )


def test_diff_page_highlights_a_fused_group_on_both_sides(server: str, page) -> None:  # type: ignore[no-untyped-def]
    page.goto(server)
    page.locator('g.node[id="conv2d"]').wait_for(timeout=90_000)
    page.get_by_role("link", name="Recipe").click()
    page.get_by_text("No rules yet").wait_for(timeout=60_000)
    _choose(page, "Mode", "qat")
    page.wait_for_timeout(1500)
    page.get_by_role("link", name="Diff").click()
    removed = page.locator('g.node[id="batch_norm_5"]')
    removed.wait_for(timeout=120_000)
    page.locator('g.node[id="conv2d_8"]').wait_for(timeout=60_000)
    removed.click()
    page.locator('g.node.wb-selected[id="conv2d_8"]').wait_for(timeout=30_000)
    assert "wb-selected" in (removed.get_attribute("class") or "")
    for name in ("conv2d_5", "mul_1"):  # the fusion's conv and weight scaling, before
        assert "wb-match" in (page.locator(f'g.node[id="{name}"]').get_attribute("class") or "")
    assert "wb-match" in (
        page.locator('g.node[id="dequantize_per_channel_1"]').get_attribute("class") or ""
    )
    page.get_by_text("Group conv2d_1").first.wait_for(timeout=30_000)
    page.screenshot(path=str(ARTIFACTS / "diff_page.png"))
