"""The view cache: keys that follow what the drawing depends on, entries that survive
corruption and age, and `warm`, which writes what the app would draw."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from workbench.drawing import viewcache
from workbench.drawing.viewcache import CachedView, ViewCache, view_key

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


def test_warm_writes_what_the_app_would_draw(tmp_path: Path) -> None:
    cache = ViewCache(tmp_path)
    entry = viewcache.warm("sample:digits_cnn", cache)
    assert entry is not None and (entry.nodes, entry.boxes) == (45, 19)
    assert cache.get(view_key("sample:digits_cnn") or "") == entry
    assert entry.svg.count('class="node"') == 19
