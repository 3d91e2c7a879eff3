"""A ~600-node graph in headless Chromium: it opens as module groups at a legible scale, a
click on a group expands it in place, its frame title collapses it, the minimap and Fit
selection work. The server and the page are tests/app/conftest.py's."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.harness import CHROMIUM

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "artifacts"
SPEC = "benchmarks/models.py:deep_stack_600"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium is not installed"),
]


@pytest.fixture
def app_args() -> tuple[str, ...]:
    return ("--model", SPEC)


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
