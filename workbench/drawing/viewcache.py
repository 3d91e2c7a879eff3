"""A disk cache of laid-out graphs, so the app can draw a model's graph before torch loads.

An entry holds what the Graph page first shows of a model (its title, node count and the SVG
of the screen layout) as JSON, keyed by the bytes the graph comes from: the model's files
(for `sample:NAME` the sample package's code and NAME's weights, for `file.py:FUNC` the file,
for a `.pt2` the file), the torch version, the workbench's own code and the view options.
Change any of them and the key changes; a corrupt or foreign entry reads as a miss.

This module imports neither torch nor streamlit (the cold start reads it before torch is
imported); `warm` imports the library when it is called.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import re
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from workbench.drawing.dot import Rendered
    from workbench.graph.view import GraphView

__all__ = [
    "DEFAULT_SPEC",
    "ENV_VAR",
    "FORMAT",
    "MAX_ENTRIES",
    "SCREEN_DEFAULT",
    "CachedView",
    "ViewCache",
    "default_folder",
    "entry_for",
    "last_spec",
    "main",
    "model_files",
    "opening",
    "torch_version",
    "view_key",
    "warm",
]

log = logging.getLogger(__name__)

FORMAT = 1
MAX_ENTRIES = 32  # the oldest entries beyond these are removed when one is written
ENV_VAR = "WORKBENCH_WORKSPACE"  # the same variable as workbench.artifacts.workspace.ENV_VAR
DEFAULT_SPEC = "sample:digits_cnn"  # the same as f"sample:{sample_models.DEFAULT_SAMPLE}"
SCREEN_DEFAULT = "screen:auto"  # the options of the Graph page as a model opens
_PACKAGE = Path(__file__).resolve().parent
# Graphviz writes neither scripts nor event handlers: an entry with one is not ours.
_ACTIVE = re.compile(r"<script|\son[a-z]+\s*=|javascript:", re.IGNORECASE)


def default_folder() -> Path:
    """The workspace folder `Workspace.default()` uses, found without importing torch."""
    return Path(os.environ.get(ENV_VAR) or Path.cwd() / "workspace")


def last_spec(folder: Path) -> str | None:
    """The workspace's last model (`Workspace.last_spec`), read without importing torch."""
    try:
        data = json.loads((folder / "last.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    spec = data.get("spec") if isinstance(data, dict) else None
    return spec if isinstance(spec, str) else None


def torch_version() -> str:
    """The installed torch's version, read from its metadata (no import)."""
    try:
        return importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return "none"


def _sample_files(name: str) -> list[Path] | None:
    found = importlib.util.find_spec("sample_models")
    if found is None or not found.submodule_search_locations:
        return None
    folder = Path(next(iter(found.submodule_search_locations)))
    if not (folder / f"{name}.py").is_file():
        return None
    weights = folder / "weights" / f"{name}.pt"
    return sorted(folder.glob("*.py")) + ([weights] if weights.is_file() else [])


def model_files(spec: str) -> list[Path] | None:
    """The files a spec's graph is made from; None when a spec names none that exist."""
    text = spec.strip()
    if text.startswith("sample:"):
        return _sample_files(text.removeprefix("sample:"))
    if text.endswith(".pt2"):
        path = Path(text)
    else:
        path = Path(text.rsplit(":", 1)[0]) if ":" in text else Path(text)
    return [path] if path.is_file() else None


def _digest(paths: list[Path]) -> str:
    sha = hashlib.sha256()
    for path in paths:
        sha.update(path.name.encode() + b"\0")
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 20):
                sha.update(chunk)
        sha.update(b"\0")
    return sha.hexdigest()


def view_key(spec: str, options: str = SCREEN_DEFAULT, *, torch: str | None = None) -> str | None:
    """The cache key of a model's laid-out graph; None when the spec names no file.

    `torch` overrides the installed torch version (for tests).
    """
    files = model_files(spec)
    if files is None:
        return None
    try:
        model = _digest(files)
    except OSError:
        return None
    library = _digest(sorted(_PACKAGE.glob("*.py")))
    material = json.dumps([FORMAT, spec.strip(), model, torch or torch_version(), library,
                           options])  # fmt: skip
    return hashlib.sha256(material.encode()).hexdigest()


@dataclass(frozen=True)
class CachedView:
    """What the Graph page first shows of a model, as a cache entry holds it."""

    spec: str
    nodes: int  # nodes in the captured graph
    boxes: int  # boxes drawn (fewer than nodes when collapsed)
    collapse_depth: int | None
    auto_collapsed: bool
    svg: str

    def __post_init__(self) -> None:
        valid = (
            isinstance(self.spec, str) and isinstance(self.svg, str) and "<svg" in self.svg
            and not _ACTIVE.search(self.svg)
            and isinstance(self.nodes, int) and isinstance(self.boxes, int)
            and isinstance(self.auto_collapsed, bool)
            and (self.collapse_depth is None or isinstance(self.collapse_depth, int))
        )  # fmt: skip
        if not valid:
            raise ValueError("a cached view needs spec, nodes, boxes, collapse_depth, "
                             "auto_collapsed and an SVG of the right types")  # fmt: skip


class ViewCache:
    """A folder of JSON entries, one per key (`<key>.json`), written atomically."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def path(self, key: str) -> Path:
        return self.folder / f"{key}.json"

    def get(self, key: str) -> CachedView | None:
        """The entry under `key`; None if there is none or it cannot be read."""
        path = self.path(key)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(data, dict) or data.pop("format", None) != FORMAT:
                raise ValueError("not a view cache entry of this format")
            return CachedView(**data)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError) as exc:
            log.warning("ignoring unreadable view cache entry %s: %s", path, exc)
            return None

    def has(self, key: str) -> bool:
        return self.path(key).is_file()

    def put(self, key: str, view: CachedView) -> Path:
        """Write an entry (a temporary file renamed into place) and drop the oldest extras."""
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.path(key)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"format": FORMAT, **asdict(view)}), encoding="utf-8")
        os.replace(tmp, path)
        self._prune()
        return path

    def _prune(self) -> None:
        entries = sorted(self.folder.glob("*.json"), key=_mtime, reverse=True)
        for old in entries[MAX_ENTRIES:]:
            old.unlink(missing_ok=True)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def opening(view: GraphView) -> Rendered:
    """The screen render the Graph page opens with: at `opening_depth`, no group expanded
    but the single-node modules, no search (what its "auto" choice and empty query give)."""
    from workbench.drawing.dot import opening_depth, render_for_screen, reveal

    depth = opening_depth(view)
    expanded = reveal(view, (), frozenset(), collapse_depth=depth)
    return render_for_screen(view, collapse_depth=depth, expanded=expanded)


def entry_for(spec: str, view: GraphView, rendered: Rendered, svg: str) -> CachedView:
    """The cache entry of a model's opening render and its SVG."""
    return CachedView(spec=spec, nodes=len(view), boxes=rendered.boxes,
                      collapse_depth=rendered.collapse_depth,
                      auto_collapsed=rendered.auto_collapsed, svg=svg)  # fmt: skip


def warm(spec: str, cache: ViewCache) -> CachedView | None:
    """Capture `spec`, lay out its screen graph and write the entry; None if it has no key.

    Imports torch and the library: for `make run` before the server starts, not for the app
    (the app fills the cache from its own capture).
    """
    key = view_key(spec)
    if key is None:
        return None
    from workbench.drawing.dot import dot_to_svg
    from workbench.graph.view import describe
    from workbench.model.capture import capture

    view = describe(capture(spec).graph_module(), stage="exported")
    rendered = opening(view)
    entry = entry_for(spec, view, rendered, dot_to_svg(rendered.dot))
    cache.put(key, entry)
    return entry


def main(argv: list[str] | None = None) -> int:
    """`python -m workbench.drawing.viewcache warm --model SPEC`: fill a missing entry."""
    parser = argparse.ArgumentParser(prog="python -m workbench.drawing.viewcache")
    parser.add_argument("command", choices=["warm"])
    parser.add_argument("--model", default=None, help="default: the workspace's start-up model")
    args = parser.parse_args(argv)
    folder = default_folder()
    spec = args.model or last_spec(folder) or DEFAULT_SPEC
    cache = ViewCache(folder / "views")
    key = view_key(spec)
    if key is None or cache.has(key):
        return 0
    logging.basicConfig(level=logging.WARNING)
    try:
        warm(spec, cache)
    except Exception as exc:  # the app shows the model's errors; warming is only a head start
        log.warning("could not warm the graph cache for %s: %s", spec, exc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
