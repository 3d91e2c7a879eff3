"""The Train & Convert page's parts: run settings and buttons, live charts, conversion."""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Callable
from pathlib import Path

import streamlit as st
from streamlit.delta_generator import DeltaGenerator

from ui.state import AppState, Converted, Schedule, Tuned, step
from workbench.charts import (
    accuracy_drift_figure,
    channel_ranges_figure,
    loss_figure,
    observer_range_figure,
)
from workbench.compare import compare
from workbench.pipeline import (
    QatConfig,
    calibrate,
    convert,
    exported_stage,
    prepare,
    trained_float,
)
from workbench.qat import FakeQuantInfo
from workbench.recipe import check_output
from workbench.runner import CHECKPOINT_NAME, QatRun

REDRAW_SECONDS = 0.5  # while training, the live charts are redrawn this often
PROGRESS_SECONDS = 0.1  # the progress bar is updated at most this often


def data_picker(state: AppState) -> None:
    """The data that calibration, training and every measurement on the page use."""
    with step("Loading the data", stop=True):  # the model's default data may not fit it
        current = state.data().spec
    spec = st.text_input(
        "Data", current, key=f"data-spec-{state.spec}",
        help="digits (scikit-learn's bundled digits, for 1x8x8 inputs) | random (inputs like "
             "the example inputs, in their value ranges; quality = agreement with the float "
             "model) | path/to/file.py:FUNC: this runs that file's code. FUNC(split) returns "
             "the 'train' or 'eval' batches (a DataLoader, a generator); a FUNC() without a "
             "parameter evaluates on every fifth batch. Batches are (inputs, targets) or dicts "
             "keyed by the forward's parameters, the target under 'labels'.",
    ).strip()  # fmt: skip
    if spec and spec != current:
        with step("Loading the data") as loading:
            state.set_data(spec)
        if loading.failed:
            return
        st.rerun()
    data = state.data()
    st.caption(f"{data.describe()}; quality is {data.quality}.")


def task_picker(state: AppState) -> None:
    """The recipe's task: which output is the prediction, and the user's loss and metric."""
    assert state.captured is not None
    recipe, outputs, auto = state.recipe, state.captured.outputs, "(automatic)"
    choices = list(dict.fromkeys([auto, *outputs, recipe.output or auto]))
    # Keys carry the recipe's values: a recipe changed elsewhere shows afresh here.
    key = f"task-{state.spec}-{recipe.output}-{recipe.loss}-{recipe.metric}"
    with st.expander("Task: prediction, loss and metric"):
        cols = st.columns(3)
        output = cols[0].selectbox(
            "Prediction output", choices, choices.index(recipe.output or auto), key=f"{key}-out",
            help="The output leaf that evaluation and the QAT loss read; automatic: logits if "
                 "the model returns them, else the first floating-point output.",
        )  # fmt: skip
        loss = _function_input(cols[1], "Loss function", recipe.loss, f"{key}-loss",
                               "a scalar tensor to minimise")  # fmt: skip
        metric = _function_input(cols[2], "Metric function", recipe.metric, f"{key}-metric",
                                 "a number, higher is better")  # fmt: skip
        chosen = dataclasses.replace(recipe, output=None if output == auto else output,
                                     loss=loss, metric=metric)  # fmt: skip
        if chosen == recipe:
            return
        with step("Task") as checking:
            check_output(chosen, outputs)
            state.data().with_task(chosen.task())  # imports the files; checks they fit the data
    if not checking.failed:
        state.set_recipe(chosen)
        st.rerun()


def _function_input(
    place: DeltaGenerator, label: str, current: str | None, key: str, returns: str
) -> str | None:
    """A text input for a user's `path/to/file.py:FUNC`; None when left empty."""
    text = place.text_input(
        label, current or "", key=key, placeholder="path/to/file.py:FUNC",
        help=f"FUNC(outputs, batch) returns {returns}; empty: chosen from the data's "
             "targets. This runs that file's code.",
    )  # fmt: skip
    return text.strip() or None


# --- QAT -------------------------------------------------------------------------------------


def qat_section(state: AppState) -> Callable[[], Tuned] | None:
    """Settings, Start/Resume/Reset and live charts; trains in this script run.

    Once the run has steps (complete or stopped), returns what makes the prepared and trained
    stages and how they were made; the copy is made only when called (on Convert).
    """
    assert state.captured is not None
    cols = st.columns(4)
    steps = int(cols[0].number_input("Steps", 1, 100_000, 120, key="qat-steps"))
    batch = int(cols[1].number_input("Batch size", 1, 4096, 64, key="qat-batch"))
    lr = float(cols[2].number_input("Learning rate", 1e-7, 1.0, 1e-4, format="%.0e", key="qat-lr"))
    optimizer = cols[3].selectbox("Optimizer", ["adam", "sgd"], key="qat-optimizer")
    cols = st.columns(4)
    every = int(cols[0].number_input("Evaluate every", 1, 100_000, 20, key="qat-every"))
    bn = cols[1].number_input("Freeze BN after step", 0, 100_000, None, key="qat-bn",
                              placeholder=f"auto: {int(steps * 0.6)} (60 %)")  # fmt: skip
    obs = cols[2].number_input("Freeze observers after step", 0, 100_000, None, key="qat-obs",
                               placeholder=f"auto: {int(steps * 0.8)} (80 %)")  # fmt: skip
    train_size = state.data().train_size
    if train_size is None:
        cols[3].caption(f"{steps} steps, one batch of the data function each (its own batch "
                        "size).")  # fmt: skip
    else:
        cols[3].caption(f"{steps} steps of {batch} ≈ {steps * batch / max(1, train_size):.2f} "
                        f"epochs of the {train_size:,} training samples.")  # fmt: skip
    buttons = st.columns([1, 3, 1, 3])
    if buttons[0].button("Start", type="primary"):
        config = QatConfig(steps=steps, batch_size=batch, lr=lr, optimizer=optimizer,
                           freeze_bn_step=None if bn is None else int(bn),
                           freeze_observer_step=None if obs is None else int(obs))  # fmt: skip
        with step("Start") as starting:
            state.qat_run = _new_run(state, config, every)
        if starting.failed:
            return None
        state.converted = None
    run = state.qat_run
    resume = run is not None and not run.done and buttons[1].button("Resume")
    if run is None:
        run = _checkpointed_run(state, buttons[1])
        resume = run is not None
    if buttons[2].button("Reset", disabled=run is None):
        state.qat_run = state.converted = None
        st.rerun()
    if run is None:
        st.caption("Start trains a copy of the QAT-prepared model; Stop keeps its state, "
                   "Resume continues from there.")  # fmt: skip
        return None
    train_now = not run.done and (resume or run.step_count == 0)
    if train_now:
        stop = st.empty()
        stop.button("Stop training", help="Stops within one step; Resume continues from there.")
        bar = st.progress(run.step_count / run.config.steps, text="Training…")
    charts = LiveCharts(run, state.converted, state.float_quality())
    charts.draw(run, training=train_now)
    if train_now:
        drawn = shown = time.monotonic()
        with step("Training") as training:
            while not run.done:
                record = run.step()
                now = time.monotonic()
                if run.done or now - shown > PROGRESS_SECONDS:
                    bar.progress(run.step_count / run.config.steps,
                                 text=f"step {run.step_count}/{run.config.steps}, "
                                      f"loss {record['loss']:.4f}")  # fmt: skip
                    shown = now
                if run.done or now - drawn > REDRAW_SECONDS:
                    charts.draw(run, training=not run.done)
                    drawn = time.monotonic()
        if training.failed:
            charts.draw(run)  # the run keeps the steps it made; Resume continues from there
        stop.empty()
    if run.step_count == 0:
        return None
    if run.source.recipe is not None and run.source.recipe.to_json() != state.recipe.to_json():
        st.warning("The recipe changed since this run started: Start again to train with it.")
        return None
    if run.data.spec != state.data().spec:
        st.warning(f"This run trained on {run.data.spec}: Start again to train on "
                   f"{state.data().spec}.")  # fmt: skip
        return None
    if not run.done:
        st.caption(f"Convert uses the model as it is at step {run.step_count}.")
    return lambda: Tuned(run.source, run.stage(), trained_schedule(run))


def trained_schedule(run: QatRun) -> Schedule:
    """The schedule that trains exactly the steps `run` has run, even if it was stopped.

    The learning rate is constant and the batches are a pure function of the seed, so the
    first N steps of a longer run equal a run of N steps with the same freeze steps.
    """
    config = dataclasses.replace(
        run.config, steps=run.step_count, freeze_bn_step=run.config.bn_freeze_at,
        freeze_observer_step=run.config.observer_freeze_at, eval_every=0,
    )  # fmt: skip
    return Schedule(run.step_count, config.batch_size, run.data.spec, config)


def _checkpoint_folder(state: AppState) -> Path:
    return state.workspace.folder / "checkpoints" / re.sub(r"\W+", "_", state.spec or "")


def _run_meta(state: AppState, eval_every: int) -> dict[str, str | int | float]:
    """What a checkpoint must match to be resumed here: model, recipe, data, eval interval."""
    return {"spec": state.spec or "", "recipe": state.recipe.to_json(),
            "data": state.data().spec, "eval_every": eval_every}  # fmt: skip


def _new_run(state: AppState, config: QatConfig, eval_every: int) -> QatRun:
    captured = state.captured
    assert captured is not None
    return QatRun(prepare(captured, state.recipe), state.data(), config,
                  teacher=exported_stage(captured).graph_module, eval_every=eval_every,
                  checkpoint_dir=_checkpoint_folder(state),
                  meta=_run_meta(state, eval_every))  # fmt: skip


def _checkpointed_run(state: AppState, place: DeltaGenerator) -> QatRun | None:
    """Offer to resume the workspace's checkpoint of this model and recipe (a run of an
    earlier session or server); the resumed run when the button is clicked."""
    folder = _checkpoint_folder(state)
    found = QatRun.peek(folder / CHECKPOINT_NAME)
    if found is None or not found["meta"] or not found["step"]:
        return None
    meta, settings = found["meta"], found["settings"]
    if meta != _run_meta(state, int(meta.get("eval_every", 0))):
        return None  # another recipe or data: Start trains afresh
    done, steps = int(found["step"]), int(settings["steps"])
    label = (f"Resume checkpoint (step {done} of {steps})" if done < steps
             else f"Load checkpoint ({steps} steps, done)")  # fmt: skip
    if not place.button(label, help=f"Saved in {folder}"):
        return None
    captured = state.captured
    assert captured is not None
    with step("Resume checkpoint"):
        run = QatRun.resume(folder / CHECKPOINT_NAME, prepare(captured, state.recipe),
                            state.data(), QatRun.config_of(settings),
                            teacher=exported_stage(captured).graph_module,
                            eval_every=int(meta["eval_every"]), checkpoint_dir=folder)  # fmt: skip
        state.qat_run, state.converted = run, None
        return run
    return None


def pick_quantizer(quantizers: list[FakeQuantInfo], label: str, key: str) -> FakeQuantInfo:
    """A selectbox of fake quantizers or observers, each with the node it reads."""
    by_name = {q.name: q for q in quantizers}
    labels = {
        q.name: f"{q.name} · reads {q.input_node}"
        + (f" · {q.channels} channels" if q.ch_axis is not None else "")
        for q in quantizers
    }
    return by_name[st.selectbox(label, list(labels), format_func=labels.get, key=key)]


class LiveCharts:
    """Loss, quality drift, a chosen fake quantizer's range and channels; redrawn in place."""

    def __init__(self, run: QatRun, converted: Converted | None, float_model: float) -> None:
        # A converted QAT model comes from this run: Start and Reset drop the converted model.
        qat = converted if converted is not None and converted.schedule.qat is not None else None
        self.int8 = qat.comparison.int8_quality if qat is not None else None
        self.int8_step = qat.schedule.steps if qat is not None else None
        self.float_model = float_model
        self.draws = 0
        self.caption = st.empty()
        left, right = st.columns(2)
        self.loss, self.drift = left.empty(), right.empty()
        self.chosen: str | None = None
        quantizers = run.recorder.quantizers if run.recorder is not None else []
        if quantizers:
            picked = pick_quantizer(quantizers, "Fake quantizer", "qat-quantizer")
            self.chosen, self.per_channel = picked.name, picked.channels > 1
        left, right = st.columns(2)
        self.range, self.channels = left.empty(), right.empty()

    def draw(self, run: QatRun, *, training: bool = False) -> None:
        """Draw every chart for the run as it is now (keys change so each draw replaces)."""
        self.draws += 1
        n = self.draws
        state = "" if run.done else " (training…)" if training else " (stopped)"
        self.caption.caption(f"{run.step_count} of {run.config.steps} steps, "
                             f"{run.seconds:.1f} s{state}")  # fmt: skip
        self.loss.plotly_chart(loss_figure(run.train_history()), key=f"qat-loss-{n}")
        drift = accuracy_drift_figure(run.history, self.int8, int8_step=self.int8_step,
                                      float_model=self.float_model)  # fmt: skip
        self.drift.plotly_chart(drift, key=f"qat-drift-{n}")
        recorder = run.recorder
        if self.chosen is None or recorder is None or recorder.count == 0:
            return
        self.range.plotly_chart(observer_range_figure(recorder, self.chosen),
                                key=f"qat-range-{n}")  # fmt: skip
        if self.per_channel:
            self.channels.plotly_chart(channel_ranges_figure(recorder, self.chosen),
                                       key=f"qat-channels-{n}")  # fmt: skip


# --- PTQ -------------------------------------------------------------------------------------


def ptq_section(state: AppState) -> Callable[[], Tuned] | None:
    """Calibration settings and button; returns the prepared and calibrated stages."""
    assert state.captured is not None
    cols = st.columns([1, 1, 4])
    batches = int(cols[0].number_input("Calibration batches", 1, 10_000, 16, key="ptq-batches"))
    batch = int(cols[1].number_input("Batch size", 1, 4096, 64, key="ptq-batch"))
    if st.button("Calibrate", type="primary"):
        bar = st.progress(0.0, text="Calibrating…")
        with step("Calibrate") as calibrating:
            prepared = prepare(state.captured, state.recipe)
            data = state.data()
            calibrated = calibrate(
                prepared, data, batches=batches, batch_size=batch, record_ranges=True,
                progress=lambda done, total, _: bar.progress(
                    done / total, text=f"batch {done}/{total}"),
            )  # fmt: skip
            tuned = Tuned(prepared, calibrated, Schedule(batches, batch, data.spec))
            state.calibrated, state.converted = tuned, None
        if calibrating.failed:
            return None
    if state.calibrated is None:
        st.caption("Calibrate runs batches of the default data through the prepared model so "
                   "its observers record activation ranges.")  # fmt: skip
        return None
    stage = state.calibrated.tuned
    if stage.recipe is not None and stage.recipe.to_json() != state.recipe.to_json():
        st.warning("The recipe changed since this calibration: calibrate again.")
        return None
    if state.calibrated.schedule.data_spec != state.data().spec:
        st.warning("The data changed since this calibration: calibrate again.")
        return None
    st.caption(f"{stage.created_by} ({stage.seconds:.2f} s)")
    ranges = stage.ranges
    if ranges is not None and ranges.count and ranges.quantizers:
        picked = pick_quantizer(ranges.quantizers, "Observer", "ptq-observer")
        left, right = st.columns(2)
        left.plotly_chart(observer_range_figure(ranges, picked.name,
                                                step_title="calibration batch"),
                          key="ptq-range")  # fmt: skip
        if picked.channels > 1:
            right.plotly_chart(channel_ranges_figure(ranges, picked.name, step_title="batch"),
                               key="ptq-channels")  # fmt: skip
    calibrated = state.calibrated
    return lambda: calibrated


# --- convert ---------------------------------------------------------------------------------


def convert_section(state: AppState, tuned: Callable[[], Tuned]) -> None:
    """Convert the tuned stage and measure it against float; the result goes to the state."""
    current = state.current()
    label = "Convert again" if current is not None else "Convert"
    if not st.button(label, type="primary" if current is None else "secondary", key="convert"):
        return
    assert state.captured is not None
    bar = st.progress(0.0, text="Converting (convert_pt2e)…")
    with step("Convert") as converting:
        source = tuned()
        exported = exported_stage(state.captured)
        converted = convert(source.tuned)
        bar.progress(0.5, text="Measuring int8 against float…")
        trained = source.tuned if source.tuned.name == "trained" else None
        reference = trained_float(exported, trained) if trained is not None else None
        comparison = compare(exported.graph_module, converted.graph_module, state.data(),
                             reference_gm=reference)  # fmt: skip
    if converting.failed:
        return
    stages = {"exported": exported, "prepared": source.prepared,
              source.tuned.name: source.tuned, "converted": converted}  # fmt: skip
    state.converted = Converted(state.recipe.to_json(), stages, source.schedule, comparison)
    st.rerun()
