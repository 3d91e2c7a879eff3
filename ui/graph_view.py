"""A zoomable, pannable Graphviz SVG that reports which node was clicked (components v2)."""

from __future__ import annotations

import streamlit as st

from workbench.graph import NodeInfo
from workbench.render import format_shape

_CSS = """
.wb-graph { width: 100%; height: var(--wb-height, 70vh); overflow: hidden; cursor: grab;
            border: 1px solid #dde3ea; border-radius: 6px; background: #fff; position: relative; }
.wb-graph.dragging { cursor: grabbing; }
.wb-graph svg { width: 100%; height: 100%; user-select: none; }
.wb-graph g.node { cursor: pointer; }
.wb-graph g.node.wb-selected path, .wb-graph g.node.wb-selected polygon,
.wb-graph g.node.wb-selected ellipse { stroke: #d62728; stroke-width: 3px; }
.wb-hint { position: absolute; right: 8px; bottom: 6px; font: 11px sans-serif; color: #889; }
"""

_HTML = '<div class="wb-graph"></div>'

# Handlers are assigned (element.onclick = ...), never added: the function runs again on the
# same element whenever `data` changes, and added listeners would stack up.
_JS = """
export default function ({ data, parentElement, setTriggerValue }) {
  const box = parentElement.querySelector(".wb-graph");
  box.style.setProperty("--wb-height", data.height);
  if (box.dataset.svgKey !== data.svg_key) {
    box.innerHTML = data.svg + '<div class="wb-hint">scroll to zoom · drag to pan · ' +
                    'double-click: whole graph</div>';
    box.dataset.svgKey = data.svg_key;
    box._wbView = null;
  }
  const svg = box.querySelector("svg");
  if (!svg) return;
  svg.removeAttribute("width");
  svg.removeAttribute("height");
  const full = svg.viewBox.baseVal;
  const whole = [full.x, full.y, full.width, full.height];
  // Open readable: at most 1.5 px per point, top of the graph, centred across.
  const bw = box.clientWidth || 800, bh = box.clientHeight || 600;
  const px = Math.min(1.5, bw / full.width);
  const start = [full.x - (bw / px - full.width) / 2, full.y, bw / px, bh / px];
  let view = box._wbView || start;
  const apply = () => { box._wbView = view; svg.setAttribute("viewBox", view.join(" ")); };
  apply();
  box.querySelectorAll("g.node.wb-selected").forEach((g) => g.classList.remove("wb-selected"));
  if (data.selected) {
    const g = box.querySelector('g.node[id="' + CSS.escape(data.selected) + '"]');
    if (g) g.classList.add("wb-selected");
  }
  const toSvg = (ev) => {
    const r = svg.getBoundingClientRect();
    const s = Math.max(view[2] / r.width, view[3] / r.height);
    return [view[0] + (ev.clientX - r.left) * s, view[1] + (ev.clientY - r.top) * s, s];
  };
  box.onwheel = (ev) => {
    ev.preventDefault();
    const [x, y] = toSvg(ev);
    const k = ev.deltaY > 0 ? 1.15 : 1 / 1.15;
    view = [x - (x - view[0]) * k, y - (y - view[1]) * k, view[2] * k, view[3] * k];
    apply();
  };
  let drag = null;
  box.onmousedown = (ev) => { drag = { x: ev.clientX, y: ev.clientY, moved: false }; };
  box.onmousemove = (ev) => {
    if (!drag) return;
    const [, , s] = toSvg(ev);
    const dx = ev.clientX - drag.x, dy = ev.clientY - drag.y;
    if (Math.abs(dx) + Math.abs(dy) > 3) { drag.moved = true; box.classList.add("dragging"); }
    view = [view[0] - dx * s, view[1] - dy * s, view[2], view[3]];
    drag.x = ev.clientX; drag.y = ev.clientY;
    apply();
  };
  box.onmouseup = box.onmouseleave = () => {
    box.classList.remove("dragging");
    setTimeout(() => { drag = null; }, 0);
  };
  box.ondblclick = () => {
    view = (view.join() === whole.join()) ? start.slice() : whole.slice();
    apply();
  };
  box.onclick = (ev) => {
    if (drag && drag.moved) return;
    const g = ev.target.closest("g.node");
    if (g) setTriggerValue("clicked", g.id);
  };
}
"""

_component = st.components.v2.component("workbench.graph_view", html=_HTML, css=_CSS, js=_JS)


def _ignore() -> None:
    """Clicks are read from the return value; the callback only registers the key."""


def graph_view(
    svg: str, *, key: str, selected: str | None = None, height: str = "70vh"
) -> str | None:
    """Show `svg`; returns the id of the node clicked in this rerun, if any."""
    svg_key = f"{len(svg)}:{hash(svg)}"
    result = _component(
        data={"svg": svg, "svg_key": svg_key, "selected": selected, "height": height},
        key=key,
        on_clicked_change=_ignore,
    )
    return getattr(result, "clicked", None)


def node_details(node: NodeInfo) -> None:
    """The detail panel for one node: op, module, shapes, parameters and source line."""
    st.subheader(node.name)
    st.markdown(f"**{node.op_name}** · `{node.target}` · family *{node.family}*")
    if node.module:
        st.markdown(f"Module `{node.module}` ({node.module_type})")
    if node.shape is not None:
        st.markdown(f"Output `{format_shape(node.shape)}` {node.dtype}")
    for param in node.params:
        st.markdown(f"- `{param.target}` {format_shape(param.shape)} {param.dtype}")
    if node.inputs:
        st.caption("Inputs: " + ", ".join(node.inputs))
    if node.source:
        st.caption(node.source)
        if node.source_code:
            st.code(node.source_code, language="python")
