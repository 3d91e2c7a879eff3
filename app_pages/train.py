"""Train & Convert page: calibrate (PTQ) or train (QAT) with live charts, convert, compare
the int8 model with float (per-node SQNR, activations, weights, sensitivity), and search for
the fewest nodes to keep at a higher precision (mixed precision).

Calibration, training, conversion and both searches run as the session's background jobs
(`ui.jobs`): the page starts them and draws what they have done so far; a change of page
does not stop them. Top to bottom as on screen: the data and task, the QAT or PTQ section, the
Convert button, the comparison, then the mixed-precision search; the page itself is at the end.
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st
from streamlit.delta_generator import DeltaGenerator

from ui.conversion import (
    calibrated_with,
    conversion_estimate,
    live_progress,
    start_conversion,
    train_steps,
    trained_schedule,
)
from ui.jobs import live, outcome, rerun_when_ended, start_button
from ui.state import AppState, Converted, Tuned, loaded_state, step
from workbench.analysis.compare import (
    Comparison,
    activation_grid,
    weight_channels,
    weight_nodes,
    worst_first,
)
from workbench.analysis.mixed_precision import OBJECTIVES, SearchResult, search_precision
from workbench.analysis.sensitivity import iter_sensitivity, suggest_overrides
from workbench.analysis.sqnr import NodeError, own_sqnr
from workbench.drawing.charts import (
    accuracy_drift_figure,
    activation_grid_figure,
    channel_ranges_figure,
    finite_or_none,
    loss_figure,
    observer_range_figure,
    search_figure,
    sensitivity_figure,
    sqnr_bar_figure,
    weight_channels_figure,
)
from workbench.jobs import Job
from workbench.quantization.editing import set_override
from workbench.quantization.recipe import Recipe, check_output
from workbench.stages.distributed import checkpoint_origin, same_run
from workbench.stages.ranges import FakeQuantInfo
from workbench.stages.steps import exported_stage, prepare
from workbench.stages.training import CHECKPOINT_NAME, QatConfig, QatRun, qat_lines, qat_summary

# While a job trains, the live charts are redrawn this often. Drawing four plotly charts
# holds the GIL for tens of milliseconds, and the training thread, which gives the GIL up
# around every torch op, then waits for it at each op. Measured on the digits CNN (a run of
# 3,000 steps): 28 steps/s with no charts on screen, 17 redrawing every 2 s, 5 every 1 s.
CHART_SECONDS = 2.0
ADDED_KEY = "sens-added"  # the nodes the last "Add keep-float rules" click added
# The precision to beat: the default the mixed-precision search starts from (weight dtype,
# activation dtype), or None for the recipe's own default.
SEARCH_STARTS: dict[str, tuple[str, str] | None] = {
    "the recipe's default": None,
    "int4 weights and activations": ("int4", "int4"),
    "int4 weights, int8 activations": ("int4", "int8"),
    "int8 weights and activations": ("int8", "int8"),
}


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
    eval_picker(state)


def eval_picker(state: AppState) -> None:
    """How many evaluation samples every measurement uses (the default fits the model)."""
    cols = st.columns([1, 3])
    chosen = cols[0].number_input(
        "Evaluation samples", 1, 10_000_000, state.eval_samples, key=f"eval-{state.spec}",
        placeholder="all", help="Quality is measured on the first N samples of the evaluation "
        "split; empty: all of them.",
    )  # fmt: skip
    samples = None if chosen is None else int(chosen)
    if samples != state.eval_samples:
        with step("Evaluation samples") as setting:
            state.set_eval_samples(samples)
        if not setting.failed:
            st.rerun()
    if state.estimates is not None:
        defaults = state.run_defaults()
        cols[1].caption(f"Defaults fit this model: {defaults.describe(state.estimates.costs)}, "
                        f"so calibration defaults to {defaults.calibration_batches} batches of "
                        f"{defaults.batch_size} and evaluation to "
                        f"{defaults.eval_samples or 'all'} samples.")  # fmt: skip


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


def qat_section(state: AppState, converted: Converted | None) -> Callable[[], Tuned] | None:
    """Settings, Start/Resume/Reset and live charts; training runs as a job.

    `converted` is the converted model this page run draws (its int8 point on the drift chart).

    Once the run has steps (complete or stopped) and no job trains it, returns what makes
    the prepared and trained stages and how they were made; the copy is made only when
    called (by the convert job).
    """
    assert state.captured is not None
    defaults = state.run_defaults()
    key = state.spec
    cols = st.columns(4)
    steps = int(cols[0].number_input("Steps", 1, 100_000, 120, key=f"qat-steps-{key}"))
    batch = int(cols[1].number_input("Batch size", 1, 4096, defaults.batch_size,
                                     key=f"qat-batch-{key}"))  # fmt: skip
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
    config = QatConfig(steps=steps, batch_size=batch, lr=lr, optimizer=optimizer,
                       freeze_bn_step=None if bn is None else int(bn),
                       freeze_observer_step=None if obs is None else int(obs))  # fmt: skip
    costs = state.estimates.costs if state.estimates is not None else None
    buttons = st.columns([1, 2, 1, 2])
    with buttons[0]:
        predicted = costs.prepare() + costs.train(steps, batch) if costs is not None else 0.0
        start_button(state, "train", "Start", lambda: start_training(state, config, every),
                     estimate=state.estimate("train", predicted), key="qat-start")  # fmt: skip
    training = state.jobs.running("train")
    run = state.qat_run
    if run is not None and not run.done and not training:
        left = run.config.steps - run.step_count
        predicted = costs.train(left, run.config.batch_size) if costs is not None else 0.0
        with buttons[1]:
            start_button(state, "train", "Resume", lambda: start_training(state, run=run),
                         estimate=state.estimate("train", predicted), key="qat-resume",
                         primary=False)  # fmt: skip
    elif run is None and not training:
        with buttons[1]:
            _checkpoint_button(state)
    if buttons[2].button("Reset", disabled=run is None and not training):
        for job in training:
            job.stop()
            job.wait()
        state.qat_run = state.converted = None
        st.rerun()
    outcome(state.jobs.last("train"))
    run = state.qat_run
    if run is None and training:
        live_progress(state, "train", until=lambda: state.qat_run is not None)
        return None
    if run is None:
        st.caption("Start trains a copy of the QAT-prepared model; Stop keeps its state, "
                   "Resume continues from there.")  # fmt: skip
        return None
    charts = LiveCharts(run, converted)

    ended = rerun_when_ended(state, ("train",))

    @st.fragment(run_every=live(state, ("train",), CHART_SECONDS))
    def drawn() -> None:
        ended()
        charts.draw(run, training=bool(state.jobs.running("train")),
                    float_model=state.known_float_quality())  # fmt: skip

    drawn()
    if training or run.step_count == 0:
        return None
    if (
        run.source.recipe is not None
        and run.source.recipe.tuning_key() != state.recipe.tuning_key()
    ):
        st.warning("The recipe changed since this run started: Start again to train with it.")
        return None
    if run.data.spec != state.data().spec:
        st.warning(f"This run trained on {run.data.spec}: Start again to train on "
                   f"{state.data().spec}.")  # fmt: skip
        return None
    summary = qat_summary(run.history)  # the run's evaluations, without copying the model
    if summary is not None:
        st.caption(qat_lines(summary)[0] + ".")
        if run.ended_worse:
            st.warning(f"QAT ended worse than its calibrated start: {_quality_moves(summary)} "
                       "Convert keeps the best state by default; lower the learning rate or "
                       "train fewer steps to do better.")  # fmt: skip
    keep = st.radio("State to convert", ["best", "last"], horizontal=True, key="qat-keep",
                    format_func=lambda k: {"best": "the best evaluated state (default)",
                                           "last": f"the last state (step {run.step_count})"}[k],
                    help="Every evaluation, the calibrated start (step 0) included, keeps its "
                    "state when it is the best so far.")  # fmt: skip
    eval_samples = state.eval_samples
    return lambda: Tuned(run.source, run.stage(keep), trained_schedule(run, eval_samples))


def _quality_moves(summary: Mapping[str, Any]) -> str:
    """'fake-quant 99.44 % at step 0, 10.00 % at step 8.' from a qat_summary."""
    unit = "" if summary["quality"] == "mse" else " %"
    start, last = summary["start"], summary["last"]
    return (f"fake-quant {start['fake_quant']:.2f}{unit} at step {start['step']}, "
            f"{last['fake_quant']:.2f}{unit} at step {last['step']}.")  # fmt: skip


def start_training(
    state: AppState,
    config: QatConfig | None = None,
    eval_every: int = 0,
    *,
    run: QatRun | None = None,
    checkpoint: Path | None = None,
) -> Job[QatRun]:
    """Train as a job: a new run with `config`, `run` resumed, or a run from `checkpoint`.

    The job measures the float model's quality first (the drift chart's line), then steps
    until the run is done or the user stops it; the run keeps every step it made.
    """
    captured, recipe, data = state.captured, state.recipe, state.data()
    assert captured is not None
    if run is None and checkpoint is None:
        state.qat_run = state.converted = None
    costs = state.estimates.costs if state.estimates is not None else None
    total = (config or (run.config if run else None) or QatConfig()).steps

    def work(job: Job[QatRun]) -> QatRun:
        nonlocal run
        if run is None:
            job.progress(0.0, "prepare_qat_pt2e…")
            teacher = exported_stage(captured).graph_module
            prepared = prepare(captured, recipe)
            if checkpoint is not None:
                found = QatRun.peek(checkpoint)
                assert found is not None
                run = QatRun.resume(checkpoint, prepared, data,
                                    QatRun.config_of(found["settings"]), teacher=teacher,
                                    eval_every=int(found["meta"]["eval_every"]),
                                    checkpoint_dir=checkpoint.parent)  # fmt: skip
            else:
                assert config is not None
                run = QatRun(prepared, data, config, teacher=teacher, eval_every=eval_every,
                             checkpoint_dir=_checkpoint_folder(state),
                             meta=_run_meta(state, eval_every))  # fmt: skip
            state.qat_run, state.converted = run, None
        job.progress(run.step_count / run.config.steps, "measuring the float model…")
        state.float_quality()
        train_steps(job, run)
        return run

    predicted = 0.0
    if costs is not None:
        steps = total - (run.step_count if run is not None else 0)
        predicted = costs.train(steps, (config or QatConfig()).batch_size)
    label = (f"Resume training at step {run.step_count}" if run is not None
             else "Resume the checkpoint" if checkpoint is not None
             else f"Train {total} QAT steps")  # fmt: skip
    began = time.monotonic()
    return state.jobs.start(
        "train", label, work, estimate=state.estimate("train", predicted),
        on_done=lambda _: state.learn("train", predicted, time.monotonic() - began),
    )  # fmt: skip


def _checkpoint_folder(state: AppState) -> Path:
    return state.workspace.folder / "checkpoints" / re.sub(r"\W+", "_", state.spec or "")


def _run_meta(state: AppState, eval_every: int) -> dict[str, str | int | float]:
    """What a checkpoint must match to be resumed here: model, recipe, data, eval interval."""
    return {"spec": state.spec or "", "recipe": state.recipe.to_json(),
            "data": state.data().spec, "eval_every": eval_every}  # fmt: skip


def _checkpoint_button(state: AppState) -> None:
    """Offer to resume the workspace's checkpoint of this model and recipe (a run of an
    earlier session or server) as a training job."""
    folder = _checkpoint_folder(state)
    _resume_button(state, folder / CHECKPOINT_NAME, key="qat-checkpoint")
    with st.expander("Resume a checkpoint file (the CLI's or torchrun's --checkpoint-dir)"):
        text = st.text_input(f"Path to {CHECKPOINT_NAME}", key="qat-checkpoint-path",
                             placeholder=f"checkpoints/{CHECKPOINT_NAME}")  # fmt: skip
        if text.strip():
            path = Path(text.strip()).expanduser()
            if not _resume_button(state, path, key="qat-checkpoint-file"):
                st.error(f"{path} is not a QAT checkpoint of this workbench version for this "
                         "model, recipe and data.")  # fmt: skip


def _resume_button(state: AppState, path: Path, *, key: str) -> bool:
    """A button resuming `path` when it is a checkpoint of this model, recipe and data (a
    distributed run's too: it resumes on this one process); whether it was offered."""
    found = QatRun.peek(path)
    if found is None or not found["meta"] or not found["step"]:
        return False
    meta, settings = found["meta"], found["settings"]
    if not same_run(meta, _run_meta(state, int(meta.get("eval_every", 0)))):
        return False  # another recipe or data: Start trains afresh
    done, steps = int(found["step"]), int(settings["steps"])
    label = (f"Resume checkpoint (step {done} of {steps})" if done < steps
             else f"Load checkpoint ({steps} steps, done)")  # fmt: skip
    origin = checkpoint_origin(meta)
    start_button(state, "train", label, lambda: start_training(state, checkpoint=path),
                 key=key, primary=False,
                 help=f"Saved in {path.parent}" + (f"; {origin}" if origin else ""))  # fmt: skip
    if origin:
        st.caption(f"This checkpoint was {origin}; it resumes here on one process.")
    return True


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
    """Loss, quality drift, a chosen fake quantizer's range and channels.

    The quantizer is chosen once per page run; `draw` (inside a polling fragment while a
    job trains) draws the charts for the run as it is now.
    """

    def __init__(self, run: QatRun, converted: Converted | None) -> None:
        # A converted QAT model comes from this run: Start and Reset drop the converted model.
        qat = converted if converted is not None and converted.schedule.qat is not None else None
        self.int8 = qat.comparison.int8_quality if qat is not None else None
        self.int8_step = qat.schedule.steps if qat is not None else None
        summary = qat_summary(qat.stages.tuned.history) if qat is not None else None
        if summary is not None and summary.get("kept"):
            self.int8_step = int(summary["kept"]["step"])  # the state converted
        self.chosen: str | None = None
        self.per_channel = False
        quantizers = run.recorder.quantizers if run.recorder is not None else []
        if quantizers:
            picked = pick_quantizer(quantizers, "Fake quantizer", "qat-quantizer")
            self.chosen, self.per_channel = picked.name, picked.channels > 1

    def draw(self, run: QatRun, *, training: bool = False, float_model: float | None) -> None:
        state = "" if run.done else " (training…)" if training else " (stopped)"
        st.caption(f"{run.step_count} of {run.config.steps} steps, {run.seconds:.1f} s{state}")
        left, right = st.columns(2)
        left.plotly_chart(loss_figure(run.train_history()), key="qat-loss")
        marks = {"start": run.start, "best": run.best, "last": run.last}
        drift = accuracy_drift_figure(run.history, self.int8, int8_step=self.int8_step,
                                      float_model=float_model, marks=marks)  # fmt: skip
        right.plotly_chart(drift, key="qat-drift")
        recorder = run.recorder
        if self.chosen is None or recorder is None or recorder.count == 0:
            return
        left, right = st.columns(2)
        left.plotly_chart(observer_range_figure(recorder, self.chosen), key="qat-range")
        if self.per_channel:
            right.plotly_chart(channel_ranges_figure(recorder, self.chosen), key="qat-channels")


# --- PTQ -------------------------------------------------------------------------------------


def ptq_section(state: AppState) -> Callable[[], Tuned] | None:
    """Calibration settings and the Calibrate job; returns the prepared and calibrated stages."""
    assert state.captured is not None
    defaults = state.run_defaults()
    cols = st.columns([1, 1, 4])
    batches = int(cols[0].number_input("Calibration batches", 1, 10_000,
                                       defaults.calibration_batches,
                                       key=f"ptq-batches-{state.spec}"))  # fmt: skip
    batch = int(cols[1].number_input("Batch size", 1, 4096, defaults.batch_size,
                                     key=f"ptq-batch-{state.spec}"))  # fmt: skip
    costs = state.estimates.costs if state.estimates is not None else None
    predicted = costs.calibrate(batches, batch) if costs is not None else 0.0
    start_button(state, "calibrate", "Calibrate", lambda: start_calibration(state, batches, batch),
                 estimate=state.estimate("calibrate", predicted), key="calibrate")  # fmt: skip
    calibrating = state.jobs.running("calibrate")
    if calibrating:
        live_progress(state, "calibrate")
    outcome(state.jobs.last("calibrate"))
    if state.calibrated is None:
        if not calibrating:
            st.caption("Calibrate runs batches of the data through the prepared model so its "
                       "observers record activation ranges.")  # fmt: skip
        return None
    stage = state.calibrated.tuned
    if stage.recipe is not None and stage.recipe.tuning_key() != state.recipe.tuning_key():
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
    calibrated = dataclasses.replace(
        state.calibrated,
        schedule=dataclasses.replace(state.calibrated.schedule, eval_samples=state.eval_samples),
    )
    return lambda: calibrated


def start_calibration(state: AppState, batches: int, batch_size: int) -> Job[Tuned]:
    """Prepare and calibrate as a job; the result becomes `state.calibrated`."""
    captured, recipe, data = state.captured, state.recipe, state.data()
    assert captured is not None
    eval_samples = state.eval_samples

    def work(job: Job[Tuned]) -> Tuned:
        return calibrated_with(job, captured, recipe, data, batches, batch_size, eval_samples)

    def done(tuned: Tuned) -> None:
        state.calibrated, state.converted = tuned, None
        state.learn("calibrate", predicted, time.monotonic() - began)

    costs = state.estimates.costs if state.estimates is not None else None
    predicted = costs.calibrate(batches, batch_size) if costs is not None else 0.0
    began = time.monotonic()
    label = f"Calibrate {batches} batches of {batch_size}"
    estimate = state.estimate("calibrate", predicted)
    return state.jobs.start("calibrate", label, work, on_done=done, estimate=estimate)


def form_picker(state: AppState) -> None:
    """The form convert writes: q/dq pairs, or the reference representation."""
    reference = st.checkbox(
        "Reference representation", value=state.recipe.reference_representation,
        help="convert_pt2e(use_reference_representation=True): the int8 arithmetic written out "
        "in aten integer ops instead of quantize/dequantize pairs around float ops (torchao "
        "rewrites the patterns with int8 activations, as xnnpack quantizes them; x86_inductor's "
        "uint8 activations keep their q/dq). Saved in the recipe; needs no new calibration. "
        "The Diff page then compares the q/dq form with it.",
    )  # fmt: skip
    if reference != state.recipe.reference_representation:
        state.set_recipe(dataclasses.replace(state.recipe, reference_representation=reference))
        st.rerun()


def convert_section(state: AppState, tuned: Callable[[], Tuned]) -> None:
    """The Convert job: convert the tuned stage and measure it against float."""
    current = state.current()
    label = "Convert again" if current is not None else "Convert"
    busy = bool(state.jobs.running("calibrate") or state.jobs.running("train"))
    start_button(state, "convert", label, lambda: start_conversion(state, tuned),
                 estimate=conversion_estimate(state), key="convert", primary=current is None,
                 disabled=busy)  # fmt: skip
    if state.jobs.running("convert"):
        live_progress(state, "convert")
    outcome(state.jobs.last("convert"))


# --- Convert done: int8 against float ------------------------------------------------------


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


def search_section(state: AppState) -> None:
    """Mixed precision: the fewest node rules over a default to beat that keep quality within
    a budget of float; the plot of every recipe converted, the reasons, and the recipe."""
    st.caption("Starts from a default precision to beat and raises the fewest nodes (int8, "
               "int8 weights or activations only, or float) until the converted model is within "
               "the budget of float, then gives back what it can; every step is a PTQ "
               "conversion, and the last one verifies the recipe. The result is an ordinary "
               "recipe of node rules: see it on the Graph page, edit it on the Recipe page, "
               "replay it with `python -m workbench quantize`.")  # fmt: skip
    metric = state.data().quality
    cols = st.columns([3, 2, 2, 3])
    beat = cols[0].selectbox("Precision to beat", list(SEARCH_STARTS), index=1, key="mp-start")
    unit = "MSE" if metric == "mse" else "points"
    drop = float(cols[1].number_input(f"Max drop ({unit})", 0.0, 100.0, 0.5, 0.1,
                                      key="mp-drop", format="%.2f"))  # fmt: skip
    objective = cols[2].selectbox(
        "Objective", OBJECTIVES, key="mp-objective",
        help="What giving back lowers: packed size, or the compiled int8 latency (each step "
        "compiled with Inductor: slow).",
    )  # fmt: skip
    start = search_start(state.recipe, SEARCH_STARTS[beat])
    nodes = len([e for e in state.effective().values() if not e.setting.keep_float])
    costs = state.estimates.costs if state.estimates is not None else None
    defaults = state.run_defaults()  # PTQ, whatever the recipe's mode
    predicted = 0.0
    if costs is not None:
        eval_samples = state.data().eval_size or 256
        runs = 4 + 3 * min(nodes, 32)  # the references, each node alone, the raises and drops
        predicted = costs.sensitivity(runs, defaults.calibration_batches, defaults.batch_size,
                                      eval_samples)  # fmt: skip
    with cols[3]:
        start_button(state, "search", "Search mixed precision",
                     lambda: start_search(state, start, drop, objective, predicted),
                     estimate=state.estimate("search", predicted), key="mp-run",
                     disabled=not nodes)  # fmt: skip
    outcome(state.jobs.last("search"))
    ended = rerun_when_ended(state, ("search",))

    @st.fragment(run_every=live(state, ("search",)))
    def progress() -> None:
        ended()
        job = state.jobs.last("search")
        if job is not None and job.running:
            st.caption(f"Searching: {job.text or 'starting…'}")

    progress()
    found = state.search
    if found is not None and found[0] == state.data().identity:
        search_result(state, found[1])


def search_start(recipe: Recipe, dtypes: tuple[str, str] | None) -> Recipe:
    """The recipe the search starts from: the current one, its default's dtypes replaced."""
    if dtypes is None:
        return recipe
    weight, activation = dtypes
    default = dataclasses.replace(recipe.default, weight_dtype=weight, activation_dtype=activation)
    return dataclasses.replace(recipe, default=default)


def search_result(state: AppState, result: SearchResult) -> None:
    """What the search chose and why, the plot, the candidates, and the recipe to adopt."""
    nodes = len(result.quantized_nodes)
    text = (f"{len(result.raised)} of {nodes} quantized nodes at a higher precision: "
            f"{quality_text(result.chosen_quality, result.metric)} against float "
            f"{quality_text(result.float_quality, result.metric)} (start "
            f"{quality_text(result.start_quality, result.metric)}, budget {result.max_drop:g}); "
            f"packed {result.sizes['chosen']:,} B against {result.sizes['int8']:,} B all-int8 "
            f"and {result.sizes['float']:,} B float.")  # fmt: skip
    if result.met:
        st.success(text)
    else:
        st.warning("No recipe met the budget. Best found: " + text)
    if result.stopped:
        st.info("The search was stopped; the recipe shown is the best it had, verified.")
    st.plotly_chart(search_figure(result), key="mp-chart")
    with st.expander("What it chose and why"):
        st.markdown("\n".join(f"- {reason}" for reason in result.reasons))
        st.dataframe(
            pd.DataFrame([{
                "node raised alone": c.node, "to": c.change, result.metric: c.quality,
                "gain": c.gain, "prediction SQNR (dB)": finite_or_none(c.output_sqnr_db),
                "own SQNR at start (dB)": finite_or_none(c.own_sqnr_db),
            } for c in result.candidates]),
            hide_index=True, width="stretch",
        )  # fmt: skip
        st.code(result.chosen.to_json(), language="json")
    adopted = state.recipe == result.chosen
    if st.button("Use this recipe", key="mp-use", disabled=adopted,
                 help="Replaces the recipe (autosaved); convert again to build it."):  # fmt: skip
        state.set_recipe(result.chosen)
        st.rerun()
    if adopted:
        st.caption("The recipe is this search's result: the Graph page coloured by annotation "
                   "shows its node rules as overrides.")  # fmt: skip


def start_search(
    state: AppState, start: Recipe, max_drop: float, objective: str, predicted: float
) -> Job[SearchResult]:
    """Run the search as a job; Stop ends it with the best recipe so far, still verified."""
    assert state.captured is not None
    captured, data, defaults = state.captured, state.data(), state.run_defaults()
    key = data.identity
    began = time.monotonic()

    def work(job: Job[SearchResult]) -> SearchResult:
        job.progress(0.0, "evaluating float and the start…")

        def progress(done: int, total: int, info: dict[str, object]) -> None:
            if not job.stopping:  # a Stop ends the search gracefully, with a verified result
                job.progress(done / total, f"{done}/{total} converts · {info['label']} "
                             f"{info['quality']:.4g}")  # fmt: skip

        return search_precision(
            captured, start, data, max_drop=max_drop, objective=objective,  # type: ignore[arg-type]
            calibration_batches=defaults.calibration_batches, batch_size=defaults.batch_size,
            progress=progress, should_stop=lambda: job.stopping,
        )  # fmt: skip

    def done(result: SearchResult) -> None:
        state.search = (key, result)
        state.learn("search", predicted, time.monotonic() - began)

    return state.jobs.start("search", "Mixed precision search", work, on_done=done,
                            estimate=state.estimate("search", predicted))  # fmt: skip


# --- the page ---
# st.navigation runs this file as __main__ on every rerun; tests import the checkpoint helpers
# (`_checkpoint_folder`, `_run_meta`) from it without drawing the page.
if __name__ == "__main__":
    state = loaded_state()
    st.title(f"Train & convert · {state.spec}")
    mode = state.recipe.mode
    st.caption(f"{mode.upper()} with {state.recipe.backend} (mode and backend are set on the "
               "Recipe page).")  # fmt: skip
    data_picker(state)
    task_picker(state)
    form_picker(state)
    # One converted model per page run, for the drift chart and the comparison alike: a Convert
    # job that ends while this run draws must not leave the chart without its int8 point.
    converted = state.converted
    tuned = qat_section(state, converted) if mode == "qat" else ptq_section(state)
    if tuned is not None:
        convert_section(state, tuned)
    if converted is not None:
        st.divider()
        st.subheader("int8 against float")
        comparison_section(state, converted)
    st.divider()
    st.subheader("Mixed precision")
    with step("Mixed precision search"):
        search_section(state)
    if state.converted is not converted:
        st.rerun()  # it changed while this run drew; nothing else may poll once the job is gone
