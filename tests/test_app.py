"""The app as a user sees it, through Streamlit's AppTest (no browser, no JavaScript)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parents[1] / "app.py")


def _component_data(at: AppTest) -> dict:
    """The data payload of the graph component (an unknown element to AppTest)."""
    found = []

    def walk(node: object) -> None:
        for child in getattr(node, "children", {}).values():
            if type(child).__name__ == "UnknownElement" and child.type == "bidi_component":
                found.append(child.proto)
            walk(child)

    walk(at._tree)
    assert len(found) == 1, "expected exactly one graph component"
    assert found[0].component_name == "workbench.graph_view"
    return json.loads(found[0].json)


@pytest.fixture
def app() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=180).run()
    assert not at.exception
    return at


def test_opens_with_the_default_sample_and_its_graph(app: AppTest) -> None:
    assert [t.value for t in app.title] == ["sample:digits_cnn"]
    metrics = {m.label: m.value for m in app.metric}
    assert metrics["Parameters"] == "9,850"
    assert metrics["Graph nodes"] == "45"
    assert metrics["Batch"] == "dynamic"
    svg = _component_data(app)["svg"]
    assert svg.count('class="node"') == 19  # 45 nodes less 26 folded parameters
    for name in ("x", "conv2d", "batch_norm", "add", "linear", "output"):
        assert f'<g id="{name}" class="node">' in svg


def test_clicking_a_node_shows_its_details(app: AppTest) -> None:
    app.session_state["graph"] = {"clicked": "conv2d_1"}
    app.run()
    assert [s.value for s in app.subheader] == ["conv2d_1"]
    text = " ".join(m.value for m in app.markdown)
    assert "Module `block1.conv1` (Conv2d)" in text
    assert "`block1.conv1.weight` 16×16×3×3 float32" in text
    assert [c.value for c in app.code] == ["out = self.relu1(self.bn1(self.conv1(x)))"]
    assert _component_data(app)["selected"] == "conv2d_1"


def test_collapse_depth_draws_modules_as_boxes(app: AppTest) -> None:
    app.select_slider[0].set_value(1).run()
    svg = _component_data(app)["svg"]
    assert '<g id="module/block1" class="node">' in svg
    assert '<g id="conv2d_1" class="node">' not in svg


def test_bad_spec_shows_an_error_and_keeps_the_model(app: AppTest) -> None:
    app.sidebar.text_input[0].input("no/such/file.py:build").run()
    app.sidebar.button[0].click().run()
    assert len(app.error) == 1
    assert "No such file: no/such/file.py" in app.error[0].value
    assert [t.value for t in app.title] == ["sample:digits_cnn"]
    assert len(_component_data(app)["svg"]) > 1000


def test_loading_another_sample(app: AppTest) -> None:
    app.sidebar.selectbox[0].select("sample:attention_mlp").run()
    app.sidebar.button[0].click().run()
    assert not app.error
    assert [t.value for t in app.title] == ["sample:attention_mlp"]
    assert {m.label: m.value for m in app.metric}["Graph nodes"] == "55"
    assert '<g id="softmax" class="node">' in _component_data(app)["svg"]
