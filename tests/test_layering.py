"""The library never imports the UI: importing every library module leaves streamlit out."""

from __future__ import annotations

import subprocess
import sys

CHECK = """
import sys
import workbench, workbench.capture, workbench.graph, workbench.render, workbench.cli
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
    assert int(count) >= 5  # workbench and the four modules were really imported
