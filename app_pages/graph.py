"""Graph page: the graph coloured by op family, annotation, SQNR, the gap between two stages or
where the ExecuTorch program runs each node; click a node to edit it."""

from __future__ import annotations

import math

import streamlit as st

from ui.conversion import current_pte, live_progress, pte_estimate, start_pte_build
from ui.editor import node_editor
from ui.graph_view import graph_view, group_click, groups_note, legend
from ui.jobs import outcome, start_button
from ui.state import AppState, loaded_state
from workbench.analysis.debugger import stage_gap
from workbench.analysis.latency import eval_batch
from workbench.analysis.sqnr import NodeError, own_sqnr, sqnr_by_node
from workbench.artifacts.pte import SourcePlacement, source_placement
from workbench.artifacts.pte_intermediates import pte_gap
from workbench.drawing.dot import (
    OPEN_COLLAPSED_ABOVE,
    box_of,
    format_shape,
    max_depth,
    opening_depth,
    reveal,
    single_node_modules,
)
from workbench.drawing.overlays import (
    PLACEMENT_LABELS,
    Overlay,
    annotation_overlay,
    db_overlay,
    family_overlay,
    placement_overlay,
    sqnr_overlay,
)
from workbench.graph.provenance import exported_graph_id
from workbench.graph.view import GraphView, NodeInfo, search
from workbench.jobs import Job
from workbench.quantization.recipe import Effective
from workbench.stages.build import BuildResult

AUTO, EXPANDED = "auto", "expanded"
DEPTH_HELP = (
    f"auto: the whole graph up to {OPEN_COLLAPSED_ABOVE} nodes, else module groups (one box "
    "each, with its node count; click one to expand it). A number: modules at that depth."
)


def depth_options(view: GraphView) -> list[str | int]:
    """The choices of the "Collapse modules at depth" slider."""
    return [AUTO, EXPANDED, *range(1, max_depth(view) + 1)]


def chosen_depth(view: GraphView, choice: str | int) -> int | None:
    """The collapse depth a slider choice stands for (None: nothing collapsed)."""
    if choice == AUTO:
        return opening_depth(view)
    return None if choice == EXPANDED else int(choice)


def group_details(view: GraphView, box: str) -> None:
    """The detail panel for a module group box (`module/PATH`) or frame (`cluster/PATH`)."""
    kind, _, path = box.partition("/")
    try:
        module = view.module(path)
    except KeyError:
        st.caption("Click a node to see its details and edit how it is quantized.")
        return
    st.subheader(path)
    st.markdown(f"**{module.type}** · {module.total_nodes:,} nodes")
    if kind == "module":
        st.caption("Collapsed: click the box to expand it.")
    else:
        st.caption("Expanded: click its frame's title (▾) to collapse it again.")


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


def placement_details(placed: SourcePlacement | None) -> None:
    """Where model.pte runs the ops made from the selected node (converted-graph names)."""
    if placed is None:
        st.markdown("**In model.pte:** not in the program (folded or removed by convert)")
        return
    lines = [f"{PLACEMENT_LABELS[where]}: " + ", ".join(f"`{n}`" for n in nodes)
             for where, nodes in placed.nodes.items()]  # fmt: skip
    st.markdown(f"**In model.pte:** {PLACEMENT_LABELS[placed.where]}  \n" + "  \n".join(lines))


def delegation(
    state: AppState, collapse_depth: int | None
) -> tuple[Overlay, dict[str, SourcePlacement]]:
    """Colour by where model.pte runs each node, once this session lowered the current model
    (else the button that lowers it, on the Export page's job)."""
    built: BuildResult | None = current_pte(state)
    if built is None or built.pte is None:
        st.caption("Lowers the converted model with executorch's XNNPACK partitioner, runs it in "
                   "the ExecuTorch runtime and writes model.pte (the Export page shows its "
                   "figures); then each node is coloured by where it runs.")  # fmt: skip
        _, estimate = pte_estimate(state)
        start_button(state, "pte", "Lower with XNNPACK", lambda: start_pte_build(state),
                     estimate=estimate, key="graph-pte")  # fmt: skip
        if state.jobs.running("pte"):
            live_progress(state, "pte")
        outcome(state.jobs.last("pte"))
        return family_overlay(), {}
    lowered = built.pte.lowered
    placed = source_placement(built.stages.converted.graph_module, lowered.placement)
    where = {name: p.where for name, p in placed.items()}
    counts = lowered.counts
    outside = ", ".join(f"{n.node} ({n.op})" for n in lowered.outside) or "none"
    st.caption(f"model.pte runs {counts['xnnpack']} of the converted graph's "
               f"{sum(counts.values())} op nodes in {lowered.delegates} XNNPACK delegate "
               f"call(s), {counts['portable']} on portable kernels ({outside}); "
               f"{counts['not in program']} are not in the program. A node here stands for "
               "its op and the q/dq around it; a collapsed module shows the mix of its "
               "nodes.")  # fmt: skip
    return placement_overlay(state.view, where, collapse_depth), placed


GAP_BATCH = 128  # evaluation samples the stage gap runs both stages on


PTE_STAGE = "model.pte"  # the built ExecuTorch program as a compared stage


def gap_section(state: AppState, collapse_depth: int | None) -> Overlay:
    """Colour by the SQNR of one stage's node outputs against another's (a job measures it)."""
    if state.current() is None:
        st.caption("The gap is measured on the stages of the model converted with the current "
                   "recipe and data: convert on Train & convert first.")  # fmt: skip
        return family_overlay()
    names = list(state.stages())
    compared_names = names + ([PTE_STAGE] if current_pte(state) is not None else [])
    cols = st.columns([2, 2, 3])
    reference = cols[0].selectbox("Reference stage", names, index=0, key="gap-reference")
    compared = cols[1].selectbox("Compared stage", compared_names, index=len(names) - 1,
                                 key="gap-compared",
                                 help=f"{PTE_STAGE}: the ExecuTorch program built on the "
                                 "Export page, its int8 values tapped out of the XNNPACK "
                                 "delegate, against exported (float) or converted.")  # fmt: skip
    if compared == PTE_STAGE and reference not in ("exported", "converted"):
        st.warning(f"{PTE_STAGE} is compared with the exported or the converted stage.")
        return family_overlay()
    gap = state.stage_gaps.get((state.stages_key(), reference, compared))
    if gap is None:
        with cols[2]:
            st.write("")  # level with the select boxes
            start_button(state, "gap", "Measure the gap",
                         lambda: start_stage_gap(state, reference, compared), key="gap",
                         help=f"Runs both stages on {GAP_BATCH} evaluation samples, with "
                              "torchao's numeric-debugger loggers.")  # fmt: skip
        if state.jobs.running("gap"):
            live_progress(state, "gap")
        outcome(state.jobs.last("gap"))
        return family_overlay()
    if compared == PTE_STAGE:
        st.caption(f"SQNR of each node's int8 output in model.pte (tapped out of the XNNPACK "
                   f"delegate, run in the ExecuTorch runtime) against {reference}, on "
                   f"{GAP_BATCH} evaluation samples. Uncoloured: ops XNNPACK fuses with the "
                   "next (no tensor of their own in the runtime) and folded batch norms."
                   )  # fmt: skip
        return db_overlay(state.view, gap, collapse_depth)
    st.caption(f"SQNR of each node's output in {compared} against {reference}, on "
               f"{GAP_BATCH} evaluation samples, paired by torchao's numeric debugger (the "
               "node's source in the exported graph). A conv whose BatchNorm convert folded "
               "away is held against the float conv before it: for int8 against float, colour "
               "by SQNR.")  # fmt: skip
    return db_overlay(state.view, gap, collapse_depth)


def start_stage_gap(state: AppState, reference: str, compared: str) -> Job[dict[str, float]]:
    """Measure the gap between two stages as a job; the result goes to `state.stage_gaps`."""
    stages, key = state.stages(), state.stages_key()
    inputs = eval_batch(state.data(), GAP_BATCH)
    exported_id = exported_graph_id(stages.converted.graph_module)

    built = current_pte(state) if compared == PTE_STAGE else None
    captured = state.captured

    def work(job: Job[dict[str, float]]) -> dict[str, float]:
        if built is not None and built.pte is not None and captured is not None:
            job.progress(0.1, "tapping each node's int8 output out of the .pte…")
            against = "float" if reference == "exported" else "converted"
            return pte_gap(captured, stages.exported.graph_module,
                           stages.converted.graph_module, inputs, against=against,
                           lowered=built.pte.lowered)  # fmt: skip
        job.progress(0.1, f"running {reference} and {compared} with loggers…")
        return stage_gap(stages[reference].graph_module, stages[compared].graph_module, inputs,
                         exported_id)  # fmt: skip

    def done(gap: dict[str, float]) -> None:
        state.stage_gaps[(key, reference, compared)] = gap

    return state.jobs.start("gap", f"{compared} against {reference}", work, on_done=done)


# --- the page ---

state = loaded_state()
view = state.view
st.title(f"Graph · {state.spec}")

cols = st.columns([3, 2, 3])
choice = cols[0].select_slider("Collapse modules at depth", depth_options(view), value="auto",
                               help=DEPTH_HELP)  # fmt: skip
converted = state.converted
colourings = ["op family", "annotation"] + (
    ["SQNR", "stage gap", "delegation"] if converted is not None else []
)
colour_by = cols[1].radio("Colour by", colourings, horizontal=True, key="graph-colour",
                          help="SQNR, stage gap (any two stages, node by node) and delegation "
                               "(where the ExecuTorch .pte runs each node): after Convert on "
                               "the Train & convert page.")  # fmt: skip
query = cols[2].text_input("Search", placeholder="node, op or module", key="graph-search")

depth = chosen_depth(view, choice)
hits = search(view, query)
# Search opens the groups holding its matches (as many as stay legible), for this query only.
rendered = state.rendered(depth, reveal(view, hits, state.expanded, collapse_depth=depth))
if rendered.auto_collapsed:
    st.info(f"{len(view):,} nodes are over the screen budget: drawn collapsed at depth "
            f"{rendered.collapse_depth} ({rendered.boxes:,} boxes).")  # fmt: skip
elif rendered.collapse_depth is not None:
    text = (f"{len(view):,} nodes drawn as {rendered.boxes:,} boxes: modules at depth "
            f"{rendered.collapse_depth} are one box each.")  # fmt: skip
    if groups_note(text, bool(state.expanded - single_node_modules(view)), key="graph"):
        state.expanded, state.selected = frozenset(), None
        st.rerun()
# Annotation status needs an annotate pass: only when shown (colours, or a selected node).
effective = state.effective() if colour_by == "annotation" or state.selected in view else {}
boxes = (box_of(view[n], rendered.collapse_depth, rendered.expanded) for n in hits)
matches = list(dict.fromkeys(boxes))
if query:
    st.caption(f"{len(matches)} match(es)" + (f": {', '.join(matches[:8])}…" if matches else ""))
errors = sqnr_by_node(converted.comparison.errors) if converted is not None else {}
own = own_sqnr(view, converted.comparison.errors) if converted is not None else {}
overlay, placed = family_overlay(), {}
if colour_by == "annotation":
    overlay = annotation_overlay(view, effective)
elif colour_by == "SQNR" and converted is not None:
    overlay = sqnr_overlay(view, converted.comparison.errors, rendered.collapse_depth)
elif colour_by == "stage gap" and converted is not None:
    overlay = gap_section(state, rendered.collapse_depth)
elif colour_by == "delegation" and converted is not None:
    overlay, placed = delegation(state, rendered.collapse_depth)
legend(overlay.legend)
if colour_by == "SQNR" and converted is not None:
    stale = "" if state.current() is not None else " (converted with an earlier recipe)"
    st.caption(f"int8 against the {converted.comparison.reference} per node, from Train & "
               f"convert{stale}; a collapsed module shows its worst node.")  # fmt: skip

left, right = st.columns([3, 1])
grouped = state.selected is not None and state.selected.startswith(("module/", "cluster/"))
with left:
    clicked = graph_view(
        rendered.dot, key="graph", selected=state.selected, colors=overlay.fills, highlight=matches,
        center=matches[0] if matches else (state.selected if grouped else None),
    )  # fmt: skip
if clicked and (now := group_click(view, clicked, rendered.expanded, depth)) != (
    rendered.expanded,
    state.selected,
):  # a node selected, or a group box or frame title clicked
    state.expanded, state.selected = now
    st.rerun()
with right:
    if state.selected in view:
        node_details(view[state.selected], effective.get(state.selected),
                     errors.get(state.selected), own.get(state.selected))  # fmt: skip
        if placed:
            placement_details(placed.get(state.selected))
        if state.selected in effective:
            node_editor(state, state.selected)
        else:
            st.caption("The backend does not quantize this node.")
    elif state.selected:
        group_details(view, state.selected)
    else:
        st.caption("Click a node to see its details and edit how it is quantized.")
