"""The cold start that draws from the view cache (ui.boot): no torch, the cached graph first."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from apptree import graph_payload
from streamlit.testing.v1 import AppTest

from workbench.drawing import viewcache
from workbench.drawing.viewcache import ViewCache, view_key

ROOT = Path(__file__).resolve().parents[2]
APP = str(ROOT / "app.py")
SVG = '<svg viewBox="0 0 10 10"><g id="conv2d" class="node"><path d="M0 0"/></g></svg>'


def test_light_lookups_agree_with_the_workspace_and_the_app(workspace: Path) -> None:
    from sample_models import DEFAULT_SAMPLE
    from ui import boot, state
    from workbench.artifacts.workspace import ENV_VAR, Workspace

    assert viewcache.ENV_VAR == ENV_VAR
    assert f"sample:{DEFAULT_SAMPLE}" == viewcache.DEFAULT_SPEC
    assert boot.STATE_KEY == state.STATE_KEY
    space = Workspace.default()
    assert viewcache.default_folder() == space.folder
    assert viewcache.last_spec(space.folder) is None
    space.remember("sample:mobilenet")
    assert viewcache.last_spec(space.folder) == space.last_spec() == "sample:mobilenet"


def test_the_cold_start_imports_no_torch() -> None:
    code = (
        "import sys, ui.boot, workbench.drawing.viewcache; "
        "assert 'torch' not in sys.modules, 'torch'; "
        "import workbench.drawing.viewcache as v; assert v.view_key('sample:digits_cnn')"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


# --- the cold page ---


def _cold_graph_page() -> None:
    # AppTest.from_function runs this function's source alone: it imports what it uses.
    from ui.boot import _graph
    from workbench.drawing.viewcache import CachedView

    SVG = '<svg viewBox="0 0 10 10"><g id="conv2d" class="node"><path d="M0 0"/></g></svg>'
    _graph(CachedView("sample:digits_cnn", 450, 19, 1, True, SVG))


def test_the_cold_graph_page_draws_the_entry_and_keeps_a_click() -> None:
    from ui.boot import PENDING_KEY

    at = AppTest.from_function(_cold_graph_page).run()
    assert not at.exception
    assert [t.value for t in at.title] == ["Graph · sample:digits_cnn"]
    assert "450 nodes are over the screen budget" in at.info[0].value
    data = graph_payload(at)
    assert data["svg"] == SVG and data["selected"] is None
    at.session_state["graph"] = {"clicked": "conv2d"}
    at.run()
    assert not at.exception
    assert at.session_state[PENDING_KEY] == "conv2d"
    assert graph_payload(at)["selected"] == "conv2d"
    assert [s.value for s in at.subheader] == ["conv2d"]


def test_a_cold_start_ends_in_the_app_with_the_click_applied(workspace: Path) -> None:
    from ui.boot import PENDING_KEY

    key = view_key("sample:digits_cnn")
    assert key is not None
    at = AppTest.from_file(APP, default_timeout=180)
    at.session_state[PENDING_KEY] = "conv2d_1"  # clicked on the cached graph
    at.run()
    assert not at.exception
    assert [t.value for t in at.title] == ["Graph · sample:digits_cnn"]
    assert at.session_state["workbench"].selected == "conv2d_1"
    assert [s.value for s in at.subheader] == ["conv2d_1"]
    entry = ViewCache(workspace / "views").get(key)  # written by the cold start's capture
    assert entry is not None and entry.nodes == 45 and entry.svg == graph_payload(at)["svg"]


def test_the_entry_of_a_model_that_opens_collapsed_is_what_the_graph_page_opens_with(
    workspace: Path,
) -> None:
    spec = f"{ROOT / 'benchmarks' / 'models.py'}:deep_stack_600"
    workspace.mkdir(parents=True)
    (workspace / "last.json").write_text(json.dumps({"spec": spec}))
    at = AppTest.from_file(APP, default_timeout=300).run()
    assert not at.exception
    assert [t.value for t in at.title] == [f"Graph · {spec}"]
    entry = ViewCache(workspace / "views").get(view_key(spec) or "")
    assert entry is not None and entry.collapse_depth is not None
    assert entry.boxes < entry.nodes and entry.svg == graph_payload(at)["svg"]


@pytest.mark.browser
@pytest.mark.skipif(not Path("/usr/bin/chromium").exists(), reason="no Debian chromium")
def test_in_chromium_the_cached_graph_comes_first_and_a_click_on_it_is_kept(
    tmp_path: Path,
) -> None:
    """A fresh server with a warm view cache: the graph is drawn while the model loads, a
    click then is applied once it has loaded."""
    from benchmarks import cold_start as bench
    from benchmarks.harness import chromium, streamlit_server

    workspace = tmp_path / "workspace"
    bench.warm_cache(workspace, "sample:digits_cnn")
    env = {"WORKBENCH_WORKSPACE": str(workspace)}
    with (
        streamlit_server("app.py", env=env, log_name="streamlit-cold-start.log") as url,
        chromium(tmp_path / "profile") as context,
    ):
        page = context.new_page()
        page.goto(url)
        page.locator('g.node[id="conv2d_1"]').wait_for(timeout=90_000)
        loading = page.get_by_text("Starting torch: the controls appear in a moment.")
        if loading.count():  # still the cold page: the click waits for the model
            page.locator('g.node[id="conv2d_1"]').click()
            page.get_by_text("Loading the model: its details").first.wait_for(timeout=30_000)
        else:  # the model loaded first (a fast machine): click the real page
            page.locator('g.node[id="conv2d_1"]').click()
        page.get_by_text("block1.conv1 (Conv2d)").first.wait_for(timeout=90_000)
        page.get_by_text("Colour by").first.wait_for()
        # The cold page's graph goes once the real page's run has ended: one graph.
        deadline = time.monotonic() + 60
        while page.locator("g.node").count() != 19 and time.monotonic() < deadline:
            page.wait_for_timeout(200)
        assert page.locator("g.node").count() == 19
        selected = page.locator('g.node[id="conv2d_1"]').first.get_attribute("class")
        assert "wb-selected" in (selected or "")
