"""A zoomable, pannable Graphviz graph that reports which node was clicked (components v2)."""

from __future__ import annotations

import math

import streamlit as st

from ui.state import step, svg_for
from workbench.graph import NodeInfo
from workbench.numeric import NodeError
from workbench.recipe import Effective
from workbench.render import format_shape

_CSS = """
.wb-graph { width: 100%; height: var(--wb-height, 70vh); overflow: hidden; cursor: grab;
            border: 1px solid #dde3ea; border-radius: 6px; background: #fff; position: relative; }
.wb-graph.dragging { cursor: grabbing; }
.wb-graph svg { width: 100%; height: 100%; user-select: none; }
.wb-graph g.node { cursor: pointer; }
.wb-graph g.node.wb-selected path, .wb-graph g.node.wb-selected polygon,
.wb-graph g.node.wb-selected ellipse { stroke: #d62728; stroke-width: 3px; }
.wb-graph g.node.wb-match path, .wb-graph g.node.wb-match polygon,
.wb-graph g.node.wb-match ellipse { stroke: #1f77b4; stroke-width: 4px; }
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
  const byId = (id) => box.querySelector('g.node[id="' + CSS.escape(id) + '"]');
  box.querySelectorAll("g.node.wb-selected, g.node.wb-match").forEach((g) =>
    g.classList.remove("wb-selected", "wb-match"));
  if (data.selected && byId(data.selected)) byId(data.selected).classList.add("wb-selected");
  (data.highlight || []).forEach((id) => {
    const g = byId(id);
    if (g) g.classList.add("wb-match");
  });
  // Recolour without a new layout: fills are set on the shapes of each node.
  box.querySelectorAll("g.node").forEach((g) => {
    const colour = data.colors ? data.colors[g.id] : null;
    g.querySelectorAll("path, polygon, ellipse").forEach((shape) => {
      if (!shape.dataset.fill) shape.dataset.fill = shape.getAttribute("fill") || "";
      shape.setAttribute("fill", colour || shape.dataset.fill);
    });
  });
  if (data.center && box.dataset.centered !== data.center + "|" + data.svg_key) {
    const g = byId(data.center);
    if (g) {
      const b = g.getBBox();
      const toUser = svg.getCTM().inverse().multiply(g.getCTM());
      const c = new DOMPoint(b.x + b.width / 2, b.y + b.height / 2).matrixTransform(toUser);
      view = [c.x - view[2] / 2, c.y - view[3] / 2, view[2], view[3]];
      apply();
      box.dataset.centered = data.center + "|" + data.svg_key;
    }
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
    dot: str,
    *,
    key: str,
    selected: str | None = None,
    colors: dict[str, str] | None = None,
    highlight: list[str] | None = None,
    center: str | None = None,
    height: str = "70vh",
) -> str | None:
    """Lay out `dot` and show it; returns the id of the node clicked in this rerun, if any.

    `colors` recolours nodes in the browser (no new layout), `highlight` outlines search
    matches and `center` scrolls one node into the middle once. A failed layout (no Graphviz)
    is an error box in the graph's place.
    """
    svg: str | None = None
    with step("Graph layout"):
        svg = svg_for(dot)
    if svg is None:
        return None
    data = {
        "svg": svg, "svg_key": f"{len(svg)}:{hash(svg)}", "selected": selected,
        "colors": colors, "highlight": highlight or [], "center": center, "height": height,
    }  # fmt: skip
    result = _component(data=data, key=key, on_clicked_change=_ignore)
    return getattr(result, "clicked", None)


def legend(colours: dict[str, str]) -> None:
    """A one-line colour legend."""
    swatches = "".join(
        f'<span style="margin-right:1.2em"><span style="display:inline-block;width:0.9em;'
        f'height:0.9em;background:{colour};border:1px solid #888;margin-right:0.35em">'
        f"</span>{label}</span>"
        for label, colour in colours.items()
    )
    st.html(f'<div style="font-size:0.85em;font-family:sans-serif">{swatches}</div>')


def node_details(
    node: NodeInfo,
    effective: Effective | None = None,
    error: NodeError | None = None,
    own_db: float | None = None,
) -> None:
    """The detail panel for one node: op, module, shapes, parameters, source, annotation,
    and its int8 error once a model is converted."""
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
    if effective is not None:
        fields = effective.setting.fields_set()
        summary = "keep float" if fields.get("keep_float") else (
            ", ".join(f"{k} {v}" for k, v in fields.items()) or "backend defaults"
        )  # fmt: skip
        st.markdown(f"**Annotation:** {summary}  \n*from* `{effective.rule}`")
    if error is not None:
        db = f"{error.sqnr_db:.1f} dB" if math.isfinite(error.sqnr_db) else "exact"
        against = f"`{error.reference}`" + (" (BatchNorm folded in)" if error.bn_folded else "")
        output = "its quantized output" if error.quantized else "its output"
        own = "" if own_db is None else (
            f" · own {own_db:.1f} dB" if math.isfinite(own_db) else " · adds no error"
        )  # fmt: skip
        st.markdown(f"**SQNR {db}**{own} · max |error| {error.max_abs_error:.4g}  \n"
                    f"{output} (`{error.compared}`) against float {against}")  # fmt: skip
