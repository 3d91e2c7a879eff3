"""How the code is layered: the library never imports the UI, and no module imports another in
a cycle (counting imports inside functions too, which only hide a cycle from Python)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHECK = """
import sys, pkgutil, importlib
import workbench
names = [m.name for m in pkgutil.walk_packages(workbench.__path__, "workbench.")
         if m.name != "workbench.__main__"]
for name in names:
    importlib.import_module(name)
loaded = sorted(m for m in sys.modules if m == "streamlit" or m.startswith("streamlit."))
print(len([m for m in sys.modules if m.startswith("workbench")]), loaded)
assert "streamlit" not in sys.modules, loaded
"""


def test_library_does_not_import_streamlit() -> None:
    done = subprocess.run(
        [sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    count, loaded = done.stdout.split(" ", 1)
    assert loaded.strip() == "[]"
    assert int(count) >= 35  # every module of the library was really imported


def import_graph(*packages: str) -> dict[str, set[str]]:
    """Module name -> the modules of `packages` it imports (anywhere in its body)."""
    files: dict[str, Path] = {}
    for package in packages:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        imported: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                imported.add(node.module)  # `from pkg import module` names a module too
                imported.update(f"{node.module}.{alias.name}" for alias in node.names)
        graph[name] = {m for m in imported if m in files and m != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for other in sorted(graph[module]):
            if other not in index:
                visit(other)
                low[module] = min(low[module], low[other])
            elif other in stack:
                low[module] = min(low[module], index[other])
        if low[module] == index[module]:
            component = [stack.pop()]
            while component[-1] != module:
                component.append(stack.pop())
            if len(component) > 1:
                found.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return found


def test_cycle_finder_sees_a_lazy_import_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_imports_another_in_a_cycle() -> None:
    graph = import_graph("workbench", "ui")
    assert len(graph) >= 45  # every module of the library and the app was read
    assert "workbench.errors" in graph["workbench.cli"]  # and their imports were seen
    assert cycles(graph) == []


def module_exports(path: Path) -> set[str] | None:
    """The names in a module's `__all__`, None when it has none."""
    for node in ast.parse(path.read_text(), str(path)).body:
        if isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets):
                assert node.value is not None
                return set(ast.literal_eval(node.value))
    return None


def test_every_library_module_says_what_it_exports() -> None:
    missing = [
        str(path.relative_to(ROOT))
        for path in sorted((ROOT / "workbench").rglob("*.py"))
        if path.name not in ("__init__.py", "__main__.py") and module_exports(path) is None
    ]
    assert missing == []


def test_modules_import_only_public_names_from_each_other() -> None:
    """Across modules of the library and the app, only names in the other module's __all__."""
    modules = {
        ".".join(path.relative_to(ROOT).with_suffix("").parts): path
        for package in ("workbench", "ui")
        for path in (ROOT / package).rglob("*.py")
        if path.name != "__init__.py"
    }
    importers = [*modules.values(), *(ROOT / "app_pages").glob("*.py"), ROOT / "app.py",
                 *(ROOT / "benchmarks").glob("*.py")]  # fmt: skip
    wrong = []
    for path in importers:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.ImportFrom) or node.module not in modules:
                continue
            exports = module_exports(modules[node.module])
            for alias in node.names:
                private = alias.name.startswith("_")
                unlisted = exports is not None and alias.name not in exports
                if private or unlisted:
                    wrong.append(f"{path.relative_to(ROOT)}: {node.module}.{alias.name}")
    assert wrong == []
