"""The clickable Graphviz component (components v2); imports only streamlit.

Kept apart from `ui.graph_view` so a cold start can draw a cached SVG before torch loads.
`component(data=..., key=..., on_clicked_change=...)` takes a `data` dict:

- ``svg`` (str): the laid-out SVG; ``svg_key`` (str): its identity, a new key resets the view.
- ``selected`` (str | None): id of the node outlined in red.
- ``colors`` (dict[str, str] | None): fill per node id (an overlay's fills), applied without
  a new layout; ids it leaves out keep the colour they were drawn with.
- ``highlight`` (list[str]): ids outlined in blue (search matches).
- ``center`` (str | None): id scrolled into the middle once per (center, svg_key).
- ``height`` (str): CSS height of the box, e.g. ``"70vh"``.
- ``min_scale`` (float, optional): the least screen px per SVG point zooming out may reach
  outside the overview (default 0.9: Graphviz's 10 pt text stays >= 9 px).

Ids may be node ids (``<g class="node">``) or frame ids ``cluster/PATH`` (``<g
class="cluster">``). The graph opens at a legible scale (never fit to width) with a minimap
of the whole graph in a corner (click or drag in it to move), a "Fit selection" button and an
"Overview" toggle (also double-click). The browser answers with the trigger ``clicked``: the
id of the node clicked, or ``cluster/PATH`` when a frame's title was clicked.
"""

from __future__ import annotations

import streamlit as st

__all__ = [
    "component",
]

_CSS = """
.wb-graph { width: 100%; height: var(--wb-height, 70vh); overflow: hidden; cursor: grab;
            border: 1px solid #dde3ea; border-radius: 6px; background: #fff; position: relative; }
.wb-graph.dragging { cursor: grabbing; }
.wb-graph svg { width: 100%; height: 100%; user-select: none; }
.wb-graph g.node { cursor: pointer; }
.wb-graph g.cluster > text { cursor: pointer; }
.wb-graph g.node.wb-selected path, .wb-graph g.node.wb-selected polygon,
.wb-graph g.node.wb-selected ellipse, .wb-graph g.cluster.wb-selected path,
.wb-graph g.cluster.wb-selected polygon { stroke: #d62728; stroke-width: 3px; }
.wb-graph g.node.wb-match path, .wb-graph g.node.wb-match polygon,
.wb-graph g.node.wb-match ellipse { stroke: #1f77b4; stroke-width: 4px; }
.wb-bar { position: absolute; right: 8px; top: 6px; display: flex; gap: 4px; }
.wb-bar button { font: 12px sans-serif; padding: 2px 8px; border: 1px solid #b8c2cc;
                 border-radius: 4px; background: #f7f9fb; color: #334; cursor: pointer; }
.wb-bar button:disabled { color: #aab; cursor: default; }
.wb-bar button.on { background: #dbe4ee; }
.wb-hint { position: absolute; right: 8px; bottom: 6px; font: 11px sans-serif; color: #889;
           background: rgba(255,255,255,0.8); }
.wb-mini { position: absolute; left: 8px; bottom: 8px; border: 1px solid #b8c2cc;
           background: rgba(255,255,255,0.92); cursor: crosshair; overflow: hidden;
           box-shadow: 0 1px 4px rgba(0,0,0,0.15); }
.wb-mini img { display: block; width: 100%; height: 100%; pointer-events: none; }
.wb-mini .wb-rect { position: absolute; border: 2px solid #d62728;
                    background: rgba(214,39,40,0.08); pointer-events: none; }
"""

_HTML = '<div class="wb-graph"></div>'

# Handlers are assigned (element.onclick = ...), never added: the function runs again on the
# same element whenever `data` changes, and added listeners would stack up.
# Scale is screen px per SVG point; Graphviz text is 10 pt, so text stays >= 9 px while the
# scale stays >= min_scale (0.9) — zooming out further is only the explicit overview.
_JS = """
export default function ({ data, parentElement, setTriggerValue }) {
  const box = parentElement.querySelector(".wb-graph");
  box.style.setProperty("--wb-height", data.height);
  const MIN = data.min_scale || 0.9, MAX = 4, OPEN = 1.0;
  const fresh = box.dataset.svgKey !== data.svg_key;
  if (fresh) {
    box.innerHTML = data.svg + '<div class="wb-bar"><button class="wb-fit" title="Centre and ' +
      'zoom on the selected node or group">Fit selection</button><button class="wb-over" ' +
      'title="The whole graph (double-click toggles too)">Overview</button></div>' +
      '<div class="wb-mini"><img alt=""><div class="wb-rect"></div></div>' +
      '<div class="wb-hint">scroll to zoom · drag to pan · click a group to expand it, ' +
      'its frame title to collapse it</div>';
    box.dataset.svgKey = data.svg_key;
    if (box._wbUrl) URL.revokeObjectURL(box._wbUrl);
    box._wbUrl = URL.createObjectURL(new Blob([data.svg], { type: "image/svg+xml" }));
    box.querySelector(".wb-mini img").src = box._wbUrl;
    box._wbOverview = false;
  }
  const svg = box.querySelector("svg");
  if (!svg) return;
  svg.removeAttribute("width");
  svg.removeAttribute("height");
  // The layout's own extent, read once per SVG: apply() rewrites the viewBox attribute.
  if (fresh || !box._wbFull) {
    const vb = svg.viewBox.baseVal;
    box._wbFull = { x: vb.x, y: vb.y, width: vb.width, height: vb.height };
  }
  const full = box._wbFull;
  const whole = [full.x, full.y, full.width, full.height];
  const bw = box.clientWidth || 800, bh = box.clientHeight || 600;
  // A new layout keeps the scale the user had; the first opens at 1 px per point (text
  // 10 px), or larger up to 1.5 when the whole graph fits; the top of the graph, centred.
  const keep = box._wbScale && !box._wbOverview ? box._wbScale : null;
  const px0 = keep || Math.max(OPEN, Math.min(1.5, bw / full.width, bh / full.height));
  const start = [full.x - (bw / px0 - full.width) / 2, full.y, bw / px0, bh / px0];
  let view = fresh || !box._wbView ? start : box._wbView;
  const mini = box.querySelector(".wb-mini"), rect = box.querySelector(".wb-rect");
  const ms = Math.min(150 / full.width, 150 / full.height);
  mini.style.width = Math.max(24, full.width * ms) + "px";
  mini.style.height = Math.max(24, full.height * ms) + "px";
  const scale = () => Math.min(bw / view[2], bh / view[3]);
  const apply = () => {
    box._wbView = view;
    box._wbScale = scale();
    svg.setAttribute("viewBox", view.join(" "));
    box.dataset.scale = box._wbScale.toFixed(3);
    // The minimap only when the graph does not fit on screen; it shows what is visible.
    const fits = view[0] <= full.x && view[1] <= full.y &&
      view[0] + view[2] >= full.x + full.width && view[1] + view[3] >= full.y + full.height;
    mini.style.display = fits ? "none" : "block";
    const sx = parseFloat(mini.style.width) / full.width;
    const sy = parseFloat(mini.style.height) / full.height;
    rect.style.left = (view[0] - full.x) * sx + "px";
    rect.style.top = (view[1] - full.y) * sy + "px";
    rect.style.width = view[2] * sx + "px";
    rect.style.height = view[3] * sy + "px";
    box.querySelector(".wb-over").classList.toggle("on", !!box._wbOverview);
  };
  const zoomTo = (px, cx, cy) => {
    const w = bw / px, h = bh / px;
    view = [cx - w / 2, cy - h / 2, w, h];
  };
  const byId = (id) => box.querySelector('g.node[id="' + CSS.escape(id) + '"], ' +
                                         'g.cluster[id="' + CSS.escape(id) + '"]');
  const bounds = (g) => {
    const b = g.getBBox();
    const m = svg.getCTM().inverse().multiply(g.getCTM());
    const p = new DOMPoint(b.x, b.y).matrixTransform(m);
    const q = new DOMPoint(b.x + b.width, b.y + b.height).matrixTransform(m);
    return [p.x, p.y, q.x - p.x, q.y - p.y];
  };
  // Show element g: zoomed to fit it (within the legible range) or at the current scale;
  // a part taller than the screen is shown from its top.
  const show = (g, fit) => {
    const [x, y, w, h] = bounds(g);
    let px = Math.min(fit ? 2 : scale(), bw / (w + 40), fit ? bh / (h + 40) : Infinity);
    px = Math.max(MIN, Math.min(MAX, px));
    zoomTo(px, x + w / 2, y + h / 2);
    if (h * px > bh - 20) view[1] = y - 10 / px;
    box._wbOverview = false;
    apply();
  };
  apply();
  box.querySelectorAll(".wb-selected, .wb-match").forEach((g) =>
    g.classList.remove("wb-selected", "wb-match"));
  const chosen = data.selected ? byId(data.selected) : null;
  if (chosen) chosen.classList.add("wb-selected");
  box.querySelector(".wb-fit").disabled = !chosen;
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
      show(g, false);
      box.dataset.centered = data.center + "|" + data.svg_key;
    }
  }
  box.querySelector(".wb-fit").onclick = (ev) => {
    ev.stopPropagation();
    const g = data.selected ? byId(data.selected) : null;
    if (g) show(g, true);
  };
  const overview = (on) => {
    box._wbOverview = on;
    if (on) { box._wbBack = view; view = whole.slice(); }
    else { view = box._wbBack || start.slice(); }
    apply();
  };
  box.querySelector(".wb-over").onclick = (ev) => {
    ev.stopPropagation();
    overview(!box._wbOverview);
  };
  box.querySelector(".wb-bar").onmousedown = (ev) => ev.stopPropagation();
  box.querySelector(".wb-bar").ondblclick = (ev) => ev.stopPropagation();
  const toSvg = (ev) => {
    const r = svg.getBoundingClientRect();
    const s = Math.max(view[2] / r.width, view[3] / r.height);
    return [view[0] + (ev.clientX - r.left) * s, view[1] + (ev.clientY - r.top) * s, s];
  };
  box.onwheel = (ev) => {
    ev.preventDefault();
    const [x, y] = toSvg(ev);
    let k = ev.deltaY > 0 ? 1.15 : 1 / 1.15;
    const px = scale() / k;
    // Zooming out stops at the legibility limit, except in the overview.
    if (!box._wbOverview && px < MIN) k = scale() / MIN;
    if (px > MAX) k = scale() / MAX;
    if (box._wbOverview && px >= MIN) box._wbOverview = false;
    view = [x - (x - view[0]) * k, y - (y - view[1]) * k, view[2] * k, view[3] * k];
    apply();
  };
  const miniMove = (ev) => {
    const r = mini.getBoundingClientRect();
    const fx = (ev.clientX - r.left) / r.width, fy = (ev.clientY - r.top) / r.height;
    if (box._wbOverview) { box._wbOverview = false; view = box._wbBack || start.slice(); }
    const cx = full.x + fx * full.width, cy = full.y + fy * full.height;
    view = [cx - view[2] / 2, cy - view[3] / 2, view[2], view[3]];
    apply();
  };
  let miniDrag = false;
  mini.onmousedown = (ev) => {
    ev.stopPropagation();
    ev.preventDefault();
    miniDrag = true;
    miniMove(ev);
  };
  mini.onmousemove = (ev) => { ev.stopPropagation(); if (miniDrag) miniMove(ev); };
  mini.onmouseup = mini.onmouseleave = (ev) => { ev.stopPropagation(); miniDrag = false; };
  mini.onclick = mini.ondblclick = (ev) => ev.stopPropagation();
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
  box.ondblclick = () => overview(!box._wbOverview);
  box.onclick = (ev) => {
    if (drag && drag.moved) return;
    const g = ev.target.closest("g.node") ||
      (ev.target.closest("g.cluster > text") ? ev.target.closest("g.cluster") : null);
    if (g) setTriggerValue("clicked", g.id);
  };
}
"""

component = st.components.v2.component("workbench.graph_view", html=_HTML, css=_CSS, js=_JS)
