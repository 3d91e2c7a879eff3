"""Reading what AppTest cannot: the graph component's payloads in a script run's tree."""

from __future__ import annotations

import json

from streamlit.testing.v1 import AppTest


def graph_payloads(at: AppTest) -> list[dict]:
    """The data payloads of every graph component on the page (AppTest knows them only as
    unknown elements), in page order."""
    found = []

    def walk(node: object) -> None:
        for child in getattr(node, "children", {}).values():
            if type(child).__name__ == "UnknownElement" and child.type == "bidi_component":
                assert child.proto.component_name == "workbench.graph_view"
                found.append(json.loads(child.proto.json))
            walk(child)

    walk(at._tree)
    return found


def graph_payload(at: AppTest) -> dict:
    """The data payload of the page's one graph component."""
    found = graph_payloads(at)
    assert len(found) == 1, f"expected exactly one graph component, found {len(found)}"
    return found[0]
