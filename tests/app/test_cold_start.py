"""The view cache (workbench.drawing.viewcache) and the cold start that draws from it (ui.boot)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from workbench.drawing import viewcache
from workbench.drawing.viewcache import CachedView, ViewCache, view_key

ROOT = Path(__file__).resolve().parents[2]
APP = str(ROOT / "app.py")
SVG = '<svg viewBox="0 0 10 10"><g id="conv2d" class="node"><path d="M0 0"/></g></svg>'
GOOD = {"format": 1, "spec": "s", "nodes": 1, "boxes": 1, "collapse_depth": None,
        "auto_collapsed": False, "svg": SVG}  # fmt: skip


def _entry(spec: str = "sample:digits_cnn", **changes: object) -> CachedView:
    fields = {"spec": spec, "nodes": 45, "boxes": 19, "collapse_depth": None,
              "auto_collapsed": False, "svg": SVG, **changes}  # fmt: skip
    return CachedView(**fields)  # type: ignore[arg-type]


# --- the key ---


def test_key_follows_the_model_file_the_torch_version_and_the_options(tmp_path: Path) -> None:
    model = tmp_path / "model.py"
    model.write_text("def build(): ...\n")
    spec = f"{model}:build"
    key = view_key(spec, torch="2.13.0")
    assert key is not None and key == view_key(spec, torch="2.13.0")
    assert view_key(spec, torch="2.14.0") != key
    assert view_key(spec, "screen:depth=1", torch="2.13.0") != key
    assert view_key(f"{model}:other", torch="2.13.0") != key
    model.write_text("def build(): return 1\n")
    assert view_key(spec, torch="2.13.0") != key


def test_key_of_a_pt2_follows_its_bytes_and_a_missing_file_has_none(tmp_path: Path) -> None:
    pt2 = tmp_path / "m.pt2"
    pt2.write_bytes(b"one")
    first = view_key(str(pt2))
    pt2.write_bytes(b"two")
    assert first is not None and view_key(str(pt2)) != first
    assert view_key(str(tmp_path / "missing.pt2")) is None
    assert view_key(f"{tmp_path / 'missing.py'}:build") is None
    assert view_key("sample:no_such_sample") is None


def test_key_of_a_sample_covers_its_code_and_weights() -> None:
    files = viewcache.model_files("sample:digits_cnn")
    assert files is not None
    names = {p.name for p in files}
    assert {"digits_cnn.py", "digits_cnn.pt", "__init__.py"} <= names
    assert "mobilenet.pt" not in names  # another sample's weights do not matter
    assert view_key("sample:digits_cnn") != view_key("sample:mobilenet")


# --- the entries ---


def test_an_entry_reads_back_as_written(tmp_path: Path) -> None:
    cache = ViewCache(tmp_path / "views")
    assert cache.get("k") is None and not cache.has("k")
    entry = _entry(collapse_depth=2, auto_collapsed=True)
    cache.put("k", entry)
    assert cache.get("k") == entry and cache.has("k")
    assert json.loads(cache.path("k").read_text())["format"] == viewcache.FORMAT


@pytest.mark.parametrize(
    "text",
    [
        "{not json",
        "[1, 2]",
        json.dumps({"format": 999, "spec": "s"}),
        json.dumps({**GOOD, "nodes": "many"}),
        json.dumps({**GOOD, "svg": "<script>"}),
        json.dumps({**GOOD, "svg": '<svg onload="alert(1)"></svg>'}),
        json.dumps({**GOOD, "svg": "<svg><script>alert(1)</script></svg>"}),
        json.dumps({**GOOD, "format": 0}),
        json.dumps({"format": 1, "unknown": 1}),
    ],
)
def test_a_corrupt_entry_is_a_miss(tmp_path: Path, text: str) -> None:
    cache = ViewCache(tmp_path)
    cache.path("good").write_text(json.dumps(GOOD))
    assert cache.get("good") is not None  # the cases below differ from this in one way
    cache.path("k").write_text(text)
    assert cache.get("k") is None


def test_the_oldest_entries_are_dropped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(viewcache, "MAX_ENTRIES", 2)
    cache = ViewCache(tmp_path)
    for i, key in enumerate("abc"):
        cache.put(key, _entry())
        os.utime(cache.path(key), (i, i))  # distinct ages, oldest first
    cache.put("d", _entry())
    assert sorted(p.stem for p in tmp_path.glob("*.json")) == ["c", "d"]


# --- agreement with the modules the cold start may not import ---


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


def test_warm_writes_what_the_app_would_draw(tmp_path: Path) -> None:
    cache = ViewCache(tmp_path)
    entry = viewcache.warm("sample:digits_cnn", cache)
    assert entry is not None and (entry.nodes, entry.boxes) == (45, 19)
    assert cache.get(view_key("sample:digits_cnn") or "") == entry
    assert entry.svg.count('class="node"') == 19


# --- the cold page ---


def _cold_graph_page() -> None:
    from ui.boot import _graph
    from workbench.drawing.viewcache import CachedView

    SVG = '<svg viewBox="0 0 10 10"><g id="conv2d" class="node"><path d="M0 0"/></g></svg>'
    _graph(CachedView("sample:digits_cnn", 450, 19, 1, True, SVG))


def _payload(at: AppTest) -> dict:
    found = []

    def walk(node: object) -> None:
        for child in getattr(node, "children", {}).values():
            if type(child).__name__ == "UnknownElement" and child.type == "bidi_component":
                found.append(json.loads(child.proto.json))
            walk(child)

    walk(at._tree)
    assert len(found) == 1
    return found[0]


def test_the_cold_graph_page_draws_the_entry_and_keeps_a_click() -> None:
    from ui.boot import PENDING_KEY

    at = AppTest.from_function(_cold_graph_page).run()
    assert not at.exception
    assert [t.value for t in at.title] == ["Graph · sample:digits_cnn"]
    assert "450 nodes are over the screen budget" in at.info[0].value
    data = _payload(at)
    assert data["svg"] == SVG and data["selected"] is None
    at.session_state["graph"] = {"clicked": "conv2d"}
    at.run()
    assert not at.exception
    assert at.session_state[PENDING_KEY] == "conv2d"
    assert _payload(at)["selected"] == "conv2d"
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
    assert entry is not None and entry.nodes == 45 and entry.svg == _payload(at)["svg"]


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
    assert entry.boxes < entry.nodes and entry.svg == _payload(at)["svg"]


@pytest.mark.browser
@pytest.mark.skipif(not Path("/usr/bin/chromium").exists(), reason="no Debian chromium")
def test_in_chromium_the_cached_graph_comes_first_and_a_click_on_it_is_kept(
    tmp_path: Path,
) -> None:
    """A fresh server with a warm view cache: the graph is drawn while the model loads, a
    click then is applied once it has loaded."""
    from playwright.sync_api import sync_playwright

    from benchmarks import cold_start as bench

    workspace = tmp_path / "workspace"
    bench.warm_cache(workspace, "sample:digits_cnn")
    env = {**os.environ, "WORKBENCH_WORKSPACE": str(workspace)}
    port = bench._free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", f"--server.port={port}",
         "--server.address=127.0.0.1", "--server.headless=true",
         "--browser.gatherUsageStats=false", "--server.fileWatcherType=none"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    try:
        bench._wait_healthy(url, proc)
        with sync_playwright() as pw:
            context = pw.chromium.launch_persistent_context(
                str(tmp_path / "profile"), executable_path=bench.CHROMIUM, headless=True,
                args=bench.CHROMIUM_ARGS, viewport={"width": 1500, "height": 1000},
            )  # fmt: skip
            try:
                page = context.new_page()
                page.goto(url)
                page.locator('g.node[id="conv2d_1"]').wait_for(timeout=90_000)
                loading = page.get_by_text("Starting torch: the controls appear in a moment.")
                if loading.count():  # still the cold page: the click waits for the model
                    page.locator('g.node[id="conv2d_1"]').click()
                    page.get_by_text("Loading the model: its details").first.wait_for(
                        timeout=30_000
                    )
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
            finally:
                context.close()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
