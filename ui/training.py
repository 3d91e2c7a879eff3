"""The Train & Convert page's parts: run settings and buttons, live charts, conversion."""

from __future__ import annotations

import re

import streamlit as st

from ui.state import AppState
from workbench.charts import accuracy_drift_figure, loss_figure, observer_range_figure
from workbench.data import default_data_spec, load_data
from workbench.errors import WorkbenchError
from workbench.pipeline import QatConfig, convert, evaluate, exported_stage, prepare
from workbench.runner import QatRun

RUN_KEY, CONVERTED_KEY = "qat-run", "qat-converted"


def run_controls(state: AppState) -> QatRun | None:
    """Settings, Start/Resume/Reset; trains in this script run, showing progress."""
    assert state.captured is not None
    cols = st.columns(6)
    steps = cols[0].number_input("Steps", 1, 10_000, 120, key="qat-steps")
    batch = cols[1].number_input("Batch size", 1, 4096, 64, key="qat-batch")
    lr = cols[2].number_input("Learning rate", 1e-7, 1.0, 1e-4, format="%.0e", key="qat-lr")
    every = cols[3].number_input("Evaluate every", 1, 10_000, 20, key="qat-every")
    bn = cols[4].number_input("Freeze BN at", 0, 10_000, int(steps * 0.6), key="qat-bn")
    obs = cols[5].number_input("Freeze observers at", 0, 10_000, int(steps * 0.8), key="qat-obs")
    run: QatRun | None = st.session_state.get(RUN_KEY)
    buttons = st.columns(3)
    if buttons[0].button("Start", type="primary"):
        config = QatConfig(steps=int(steps), batch_size=int(batch), lr=float(lr),
                           freeze_bn_step=int(bn), freeze_observer_step=int(obs))  # fmt: skip
        captured = state.captured
        data = load_data(default_data_spec(captured.example_inputs), captured.example_inputs)
        folder = state.workspace.folder / "checkpoints" / re.sub(r"\W+", "_", state.spec or "")
        run = QatRun(prepare(captured, state.recipe), data, config,
                     teacher=exported_stage(captured).graph_module, eval_every=int(every),
                     checkpoint_dir=folder)  # fmt: skip
        st.session_state[RUN_KEY], st.session_state[CONVERTED_KEY] = run, None
    resume = run is not None and not run.done and buttons[1].button("Resume")
    if buttons[2].button("Reset", disabled=run is None):
        st.session_state[RUN_KEY] = st.session_state[CONVERTED_KEY] = None
        st.rerun()
    run = st.session_state.get(RUN_KEY)
    if run is not None and not run.done and (resume or run.step_count == 0):
        _train(run)
    return run


def _train(run: QatRun) -> None:
    """Step the run here; any click (Stop included) reruns the page and interrupts it."""
    st.button("Stop", help="Stops within one step; Resume continues from there.")
    bar = st.progress(run.step_count / run.config.steps, text="Training…")
    try:
        while not run.done:
            record = run.step()
            bar.progress(run.step_count / run.config.steps,
                         text=f"step {run.step_count}/{run.config.steps}, "
                              f"loss {record['loss']:.4f}")  # fmt: skip
    except WorkbenchError as exc:
        st.error(f"**{exc.problem}**\n\n{exc.fix}", icon="🚫")


def run_charts(state: AppState, run: QatRun) -> None:
    """Loss, float vs fake-quant (and int8) drift, and one fake quantizer's range over steps."""
    converted = st.session_state.get(CONVERTED_KEY)
    st.caption(f"{run.step_count} of {run.config.steps} steps, {run.seconds:.1f} s"
               + (" (stopped)" if not run.done else ""))  # fmt: skip
    if converted is not None and run.history:
        last = run.history[-1]
        unit = "" if last["quality"] == "mse" else " %"
        st.metric(f"int8 {last['quality']}", f"{converted[1]:.2f}{unit}",
                  f"float {last['float']:.2f}{unit}", delta_color="off")  # fmt: skip
    left, right = st.columns(2)
    left.plotly_chart(loss_figure(run.train_history()), key="qat-loss")
    right.plotly_chart(accuracy_drift_figure(run.history, converted[1] if converted else None),
                       key="qat-drift")  # fmt: skip
    if run.recorder is not None and run.recorder.quantizers:
        names = [q.name for q in run.recorder.quantizers]
        labels = {q.name: f"{q.name} (reads {q.input_node})" for q in run.recorder.quantizers}
        chosen = st.selectbox("Fake quantizer", names, format_func=labels.get)
        st.plotly_chart(observer_range_figure(run.recorder, chosen), key="qat-range")


def convert_run(state: AppState, run: QatRun) -> None:
    """Convert the trained model and show its int8 quality against float."""
    if not run.done or not st.button("Convert", type="primary"):
        return
    with st.spinner("Converting…"):
        converted = convert(run.stage())
        quality = evaluate(converted.graph_module, run.data, teacher=run.teacher)
    st.session_state[CONVERTED_KEY] = (converted, quality)
    st.rerun()
