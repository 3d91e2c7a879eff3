"""The Graph page on a graph over OPEN_COLLAPSED_ABOVE nodes, through AppTest (no browser):
it opens as module groups, a click expands one, search opens the groups of its matches."""

from __future__ import annotations

from pathlib import Path

from apptree import graph_payload
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[2]
APP = str(ROOT / "app.py")
SPEC = f"{ROOT / 'benchmarks' / 'models.py'}:deep_stack_600"


def _click(at: AppTest, box: str) -> None:
    at.session_state["graph"] = {"clicked": box}
    at.run()
    assert not at.exception


def test_a_big_graph_opens_as_groups_and_a_click_expands_one(workspace: Path) -> None:
    at = AppTest.from_file(APP, default_timeout=180).run()
    at.switch_page("app_pages/model.py").run()
    at.radio[0].set_value("Python file").run()
    next(t for t in at.text_input if t.label == "Spec").input(SPEC).run()
    at.button[0].click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    at.switch_page("app_pages/graph.py").run()
    assert at.select_slider[0].value == "auto"
    assert "602 nodes drawn as 7 boxes: modules at depth 1 are one box each." in at.caption[0].value
    svg = graph_payload(at)["svg"]
    assert [f'<g id="module/{i}" class="node">' in svg for i in range(6)] == [True] * 5 + [False]
    assert '<g id="linear" class="node">' not in svg

    _click(at, "module/0")  # the first stage opens to its 25 cells' ops; the others stay boxes
    data = graph_payload(at)
    assert '<g id="cluster/0" class="cluster">' in data["svg"]
    assert '<g id="linear" class="node">' in data["svg"]
    assert '<g id="module/1" class="node">' in data["svg"]
    assert data["selected"] == data["center"] == "cluster/0"
    assert [s.value for s in at.subheader] == ["0"]  # the group's details

    _click(at, "cluster/0")  # its frame's title closes it again
    data = graph_payload(at)
    assert '<g id="module/0" class="node">' in data["svg"] and data["selected"] == "module/0"

    at.text_input(key="graph-search").input("linear_110").run()  # in the last stage, 4
    data = graph_payload(at)
    assert '<g id="linear_110" class="node">' in data["svg"]
    assert '<g id="module/4" class="node">' not in data["svg"]
    assert data["highlight"] == ["linear_110"] and data["center"] == "linear_110"
    at.text_input(key="graph-search").input("").run()
    assert '<g id="module/4" class="node">' in graph_payload(at)["svg"]  # search opens for a query

    _click(at, "module/2")
    # AppTest keeps a trigger's value across runs (a browser's is one-shot): clear the click.
    at.session_state["graph"] = {"clicked": None}
    next(b for b in at.button if b.label == "Collapse all").click().run()
    assert '<g id="module/2" class="node">' in graph_payload(at)["svg"]
    at.select_slider[0].set_value("expanded").run()
    assert '<g id="linear_110" class="node">' in graph_payload(at)["svg"]
