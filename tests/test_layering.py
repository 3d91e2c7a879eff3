"""The library never imports the UI: importing every library module leaves streamlit out."""

from __future__ import annotations

import subprocess
import sys

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
