"""The workspace folder: autosaved recipes, uploaded models and the last model, per user machine.

Everything is written atomically (a temporary file renamed into place) under a file lock, so
two browser tabs on one server can save at the same time without corrupting anything; the
last write wins.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

from workbench.artifacts.export import write_text
from workbench.quantization.recipe import Recipe, RecipeError

__all__ = ["ENV_VAR", "Workspace"]

log = logging.getLogger(__name__)
ENV_VAR = "WORKBENCH_WORKSPACE"


class Workspace:
    """A folder holding `recipes/`, `uploads/`, `exports/` and `last.json`.

    Recipes, data choices, uploads and checkpoints are shared by every browser session on
    purpose (a second tab, a restarted server, the CLI see them); built files are not: each
    session's builds go under `exports/SESSION/`.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        for sub in ("recipes", "uploads"):
            (self.folder / sub).mkdir(parents=True, exist_ok=True)

    @classmethod
    def default(cls) -> Workspace:
        """$WORKBENCH_WORKSPACE, or ./workspace in the current directory."""
        return cls(Path(os.environ.get(ENV_VAR) or Path.cwd() / "workspace"))

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.folder / ".lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def recipe_path(self, spec: str) -> Path:
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", spec)[-60:].strip("_.") or "model"
        digest = hashlib.sha1(spec.encode()).hexdigest()[:8]
        return self.folder / "recipes" / f"{slug}-{digest}.recipe.json"

    def save_recipe(self, spec: str, recipe: Recipe) -> Path:
        path = self.recipe_path(spec)
        with self._locked():
            write_text(path, recipe.to_json())
            write_text(self.folder / "last.json", json.dumps({"spec": spec}) + "\n")
        return path

    def recipe_text(self, spec: str) -> str | None:
        """The autosaved recipe's text as it is on disk now; None if there is none."""
        with self._locked():
            try:
                return self.recipe_path(spec).read_text(encoding="utf-8")
            except OSError:
                return None

    def save_recipe_unless_changed(self, spec: str, recipe: Recipe, seen: str | None) -> str | None:
        """Autosave `recipe` unless someone else (another tab) changed the file since it
        read `seen`; returns None when saved, else the text that is there now."""
        path = self.recipe_path(spec)
        with self._locked():
            try:
                now: str | None = path.read_text(encoding="utf-8")
            except OSError:
                now = None
            if now is not None and now != seen and now != recipe.to_json():
                return now
            write_text(path, recipe.to_json())
            write_text(self.folder / "last.json", json.dumps({"spec": spec}) + "\n")
        return None

    def build_folder(self, session: str, build: str) -> Path:
        """Where one session's build writes its files: exports/SESSION/BUILD/, made afresh;
        the session's earlier builds are removed (a download gives only this session's)."""
        session_folder = self.folder / "exports" / re.sub(r"\W+", "_", session)
        if session_folder.is_dir():
            for old in session_folder.iterdir():
                if old.is_dir() and old.name != build:
                    shutil.rmtree(old, ignore_errors=True)
        folder = session_folder / re.sub(r"\W+", "_", build)
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def load_recipe(self, spec: str) -> Recipe | None:
        """The autosaved recipe for `spec`; None if there is none or it cannot be read."""
        path = self.recipe_path(spec)
        with self._locked():
            if not path.is_file():
                return None
            text = path.read_text(encoding="utf-8")
        try:
            return Recipe.from_json(text, source=str(path))
        except RecipeError as exc:
            log.warning("ignoring unreadable autosaved recipe %s: %s", path, exc.problem)
            return None

    def save_data_spec(self, spec: str, data_spec: str) -> Path:
        """Remember the data chosen for the model `spec` (beside its autosaved recipe)."""
        path = self._data_path(spec)
        with self._locked():
            write_text(path, json.dumps({"data": data_spec}) + "\n")
        return path

    def load_data_spec(self, spec: str) -> str | None:
        """The data last chosen for the model `spec`; None if none was saved."""
        try:
            saved = json.loads(self._data_path(spec).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        data = saved.get("data") if isinstance(saved, dict) else None
        return data if isinstance(data, str) else None

    def _data_path(self, spec: str) -> Path:
        recipe = self.recipe_path(spec)
        return recipe.with_name(recipe.name.removesuffix(".recipe.json") + ".data.json")

    def last_spec(self) -> str | None:
        try:
            data = json.loads((self.folder / "last.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        spec = data.get("spec") if isinstance(data, dict) else None
        return spec if isinstance(spec, str) else None

    def remember(self, spec: str) -> None:
        with self._locked():
            write_text(self.folder / "last.json", json.dumps({"spec": spec}) + "\n")

    def save_upload(self, name: str, data: bytes) -> Path:
        """Keep an uploaded .pt2 (content-addressed) so that a restart can reload it."""
        digest = hashlib.sha256(data).hexdigest()[:16]
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(name).stem)[:40] or "upload"
        path = self.folder / "uploads" / f"{stem}-{digest}.pt2"
        if not path.exists():
            with self._locked():
                tmp = path.with_name(f".{path.name}.tmp")
                tmp.write_bytes(data)
                os.replace(tmp, path)
        return path
