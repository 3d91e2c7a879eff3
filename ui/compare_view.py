"""After convert: int8 against float per node (SQNR, activations, weights) and sensitivity."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence

import pandas as pd
import streamlit as st

from ui.jobs import live, outcome, rerun_when_ended, start_button
from ui.state import AppState, Converted
from workbench.analysis.compare import (
    Comparison,
    activation_grid,
    own_sqnr,
    weight_channels,
    weight_nodes,
    worst_first,
)
from workbench.analysis.sensitivity import iter_sensitivity, suggest_overrides
from workbench.analysis.sqnr import NodeError
from workbench.drawing.charts import (
    activation_grid_figure,
    finite_or_none,
    sensitivity_figure,
    sqnr_bar_figure,
    weight_channels_figure,
)
from workbench.jobs import Job
from workbench.quantization.editing import set_override

ADDED_KEY = "sens-added"  # the nodes the last "Add keep-float rules" click added


def quality_text(value: float, metric: str) -> str:
    return f"{value:.4g}" if metric == "mse" else f"{value:.2f} %"


def comparison_section(state: AppState, converted: Converted) -> None:
    """Quality, then tabs: per-node SQNR, activations on their grid, weights, sensitivity."""
    c = converted.comparison
    if state.current() is None:
        st.warning("The recipe or the data changed since this model was converted: these "
                   "numbers are from before. Calibrate or train and convert again.")  # fmt: skip
    finite = [e for e in c.errors if math.isfinite(e.sqnr_db)]
    worst = min(finite, key=lambda e: e.sqnr_db) if finite else None
    cols = st.columns(4)
    cols[0].metric(f"int8 {c.metric}", quality_text(c.int8_quality, c.metric),
                   f"float {quality_text(c.float_quality, c.metric)}",
                   delta_color="off", delta_arrow="off")  # fmt: skip
    change = c.int8_quality - c.float_quality + 0.0  # + 0.0 turns -0.0 into 0.0
    cols[1].metric("Change from float", f"{change:+.2f}" + ("" if c.metric == "mse" else " pp"))
    if worst is not None:
        cols[2].metric(f"Worst SQNR: {worst.exported}", f"{worst.sqnr_db:.1f} dB",
                       help=f"Against the {c.reference}, on one evaluation batch.")  # fmt: skip
    cols[3].metric("Converted in", f"{converted.stages['converted'].seconds:.2f} s")
    tabs = st.tabs(["SQNR per node", "Activations", "Weights", "Sensitivity"])
    with tabs[0]:
        _sqnr_tab(state, c)
    with tabs[1]:
        _activation_tab(converted)
    with tabs[2]:
        _weight_tab(converted)
    with tabs[3]:
        sensitivity_section(state, converted)


def sqnr_table(errors: Sequence[NodeError], own: Mapping[str, float]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "node": e.exported,
                "SQNR (dB)": finite_or_none(e.sqnr_db),
                "own SQNR (dB)": finite_or_none(own.get(e.exported, math.nan)),
                "max |error|": e.max_abs_error,
                "int8 node": e.node,
                "float reference": e.reference + (" (BN folded)" if e.bn_folded else ""),
                "output": "quantized" if e.quantized else "float",
            }
            for e in worst_first(list(errors))
        ]
    )


def _sqnr_tab(state: AppState, c: Comparison) -> None:
    st.plotly_chart(sqnr_bar_figure(c.errors), key="cmp-sqnr")
    after_qat = " (its trained weights: the quantization error alone)" * (
        c.reference == "float model after QAT"
    )  # fmt: skip
    st.caption(f"Each node's int8 output against the {c.reference}{after_qat}, on one "
               "evaluation batch. A conv folded with its BatchNorm is compared with the float "
               "BatchNorm output. The Graph page colours nodes by these numbers. A node's "
               "SQNR includes the error of everything before it; *own SQNR* estimates what "
               "the node itself adds (empty: nothing measurable).")  # fmt: skip
    assert state.view is not None
    own = own_sqnr(state.view, c.errors)
    st.dataframe(sqnr_table(c.errors, own), hide_index=True, width="stretch")


def _activation_tab(converted: Converted) -> None:
    c = converted.comparison
    int8_gm = converted.stages["converted"].graph_module
    grids = {
        e.exported: e for e in worst_first(list(c.errors)) if e.quantized and e.compared
    }  # fmt: skip
    if not grids:
        st.info("No node output is quantized per tensor in this model.")
        return
    chosen = st.selectbox("Node (worst SQNR first)", list(grids), key="cmp-activation")
    grid = activation_grid(c.reference_module, int8_gm, grids[chosen], c.inputs)
    if grid is None:
        st.info(f"The output of {chosen} is not quantized per tensor.")
        return
    st.plotly_chart(activation_grid_figure(grid), key="cmp-histogram")


def _weight_tab(converted: Converted) -> None:
    int8_gm = converted.stages["converted"].graph_module
    nodes = weight_nodes(int8_gm)
    if not nodes:
        st.info("No conv or linear weight is quantized in this model.")
        return
    chosen = st.selectbox("Conv / linear", nodes, key="cmp-weight")
    st.plotly_chart(weight_channels_figure(weight_channels(int8_gm, chosen)), key="cmp-weights")


def sensitivity_section(state: AppState, converted: Converted) -> None:
    """Keep each node float in turn (PTQ), rank, and add the helpful ones to the recipe."""
    assert state.captured is not None
    key = state.work_key()
    candidates = [
        name for name, eff in state.effective().items() if not eff.setting.keep_float
    ]  # fmt: skip
    assert state.view is not None
    own = own_sqnr(state.view, converted.comparison.errors)
    # The nodes that add the most error first; nodes without a measurement last.
    ranked = sorted(candidates, key=lambda n: own.get(n, math.inf))
    st.caption(f"Each measured node is kept float in its own PTQ run (prepare, calibrate 4 "
               f"batches, convert, evaluate; PTQ for a QAT recipe too, to stay quick). "
               f"{len(candidates)} nodes are quantized now.")  # fmt: skip
    cols = st.columns([2, 1, 1, 2])
    count = int(cols[0].number_input("Measure the nodes adding most error", 1, max(1, len(ranked)),
                                      min(16, max(1, len(ranked))), key="sens-count",
                                      help="Ordered by own SQNR (see the SQNR tab)."))  # fmt: skip
    costs = state.estimates.costs if state.estimates is not None else None
    schedule = state.default_schedule()
    predicted = 0.0
    if costs is not None:
        eval_samples = state.data().eval_size or 256
        predicted = costs.sensitivity(count + 1, 4, schedule.batch_size, eval_samples)
    with cols[1]:
        start_button(state, "sensitivity", "Run sensitivity",
                     lambda: start_sensitivity(state, ranked[:count], predicted),
                     estimate=state.estimate("sensitivity", predicted), key="sens-run",
                     disabled=not ranked)  # fmt: skip
    running = state.jobs.running("sensitivity")
    outcome(state.jobs.last("sensitivity"))
    if st.session_state.get(ADDED_KEY):
        st.success(f"Added keep-float rules for {st.session_state[ADDED_KEY]} to the recipe. "
                   "Calibrate or train and convert again to see the effect.")  # fmt: skip

    ended = rerun_when_ended(state, ("sensitivity",))

    @st.fragment(run_every=live(state, ("sensitivity",)))
    def ranking() -> None:
        ended()
        _ranking(state, key, bool(state.jobs.running("sensitivity")))

    ranking()
    if not running:
        _add_rules(state, key)


def _ranking(state: AppState, key: str, running: bool) -> None:
    """The chart and table of what the search measured so far."""
    found = state.sensitivity
    if found is None or found[0] != key:
        return
    progress = found[1]
    results = list(progress.results)
    metric = state.data().quality
    if progress.done < progress.total and not running:
        st.caption(f"Stopped after {progress.done - 1} of {progress.total - 1} nodes.")
    elif running:
        st.caption(f"{progress.done} of {progress.total} PTQ runs so far.")
    if not results:
        return
    st.plotly_chart(sensitivity_figure(results, progress.baseline, metric), key="sens-chart")
    st.dataframe(
        pd.DataFrame(
            [
                {
                    "node kept float": r.node,
                    metric: r.quality,
                    "gain": r.delta,
                    "SQNR quantized (dB)": finite_or_none(r.sqnr_db),
                }
                for r in results
            ]
        ),
        hide_index=True,
        width="stretch",
    )


def _add_rules(state: AppState, key: str) -> None:
    """Offer keep-float rules for the nodes whose float version helped most."""
    found = state.sensitivity
    if found is None or found[0] != key:
        return
    results = list(found[1].results)
    if not results:
        return
    helpful = [r for r in results if r.delta > 0]
    if not helpful:
        st.info("Keeping no single node float improves quality: nothing to add.")
        return
    cols = st.columns([2, 3])
    top = int(cols[0].number_input("Keep float the top", 1, len(helpful), 1, key="sens-top"))
    if cols[1].button(f"Add keep-float rules for the top {top}", key="sens-add"):
        recipe = state.recipe
        added = suggest_overrides(results, top)
        for override in added:
            recipe = set_override(recipe, override.kind, override.pattern, override.setting)
        state.set_recipe(recipe)
        st.session_state[ADDED_KEY] = ", ".join(o.pattern for o in added)
        st.rerun()


def start_sensitivity(state: AppState, nodes: list[str], predicted: float) -> Job[None]:
    """Measure `nodes` as a job; each PTQ run's ranking lands in `state.sensitivity`, so a
    Stop (or a failure) keeps what was measured."""
    assert state.captured is not None
    captured, recipe, data, key = state.captured, state.recipe, state.data(), state.work_key()
    state.sensitivity = None
    st.session_state[ADDED_KEY] = None
    began = time.monotonic()

    def work(job: Job[None]) -> None:
        job.progress(0.0, "baseline: every node quantized…")
        for progress in iter_sensitivity(captured, recipe, data, nodes=nodes):
            state.sensitivity = (key, progress)
            what = "baseline" if progress.node is None else progress.node
            job.progress(progress.done / progress.total,
                         f"{progress.done}/{progress.total} runs · measured {what}")  # fmt: skip

    return state.jobs.start(
        "sensitivity", f"Sensitivity of {len(nodes)} nodes", work,
        estimate=state.estimate("sensitivity", predicted),
        on_done=lambda _: state.learn("sensitivity", predicted, time.monotonic() - began),
    )  # fmt: skip
