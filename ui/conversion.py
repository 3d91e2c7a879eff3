"""Converting as a session job, shared by Train & convert, Diff and Export, and lowering the
result to an ExecuTorch .pte, shared by Export and Graph.

`start_conversion` converts what Train & convert tuned, or first tunes with the defaults
(`AppState.default_schedule`) when nothing fits; `offer_conversion` is the button the Diff and
Export pages show when there is no current converted model. `start_pte_build` lowers the
current converted model with XNNPACK, checks it in the runtime and writes model.pte (and the
model.pt2 beside it, unless Export built that already).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import streamlit as st

from ui.jobs import live, outcome, rerun_when_ended, start_button
from ui.state import AppState, Converted, Schedule, Tuned
from workbench.artifacts.report import compare_stages
from workbench.data.datasets import Dataset
from workbench.jobs import Job
from workbench.model.capture import CapturedModel
from workbench.quantization.recipe import Recipe
from workbench.stages.build import BuildResult, export_pte
from workbench.stages.stage import Stages
from workbench.stages.steps import calibrate, convert_forms, exported_stage, prepare
from workbench.stages.training import QatRun

__all__ = [
    "calibrated_with",
    "conversion_estimate",
    "current_pte",
    "live_progress",
    "offer_conversion",
    "pte_estimate",
    "start_conversion",
    "start_pte_build",
    "train_steps",
    "trained_schedule",
    "tuned_now",
]


def train_steps(job: Job[Any], run: QatRun, *, share: float = 1.0) -> None:
    """Step `run` to its end, reporting each step as `share` of the job (a Stop ends it)."""
    while not run.done:
        record = run.step()
        job.progress(share * run.step_count / run.config.steps,
                     f"training step {run.step_count}/{run.config.steps}, "
                     f"loss {record['loss']:.4f}")  # fmt: skip


def trained_schedule(run: QatRun, eval_samples: int | None = None) -> Schedule:
    """The schedule that trains exactly the steps `run` has run, even if it was stopped.

    The learning rate is constant and the batches are a pure function of the seed, so the
    first N steps of a longer run equal a run of N steps with the same freeze steps.
    """
    config = dataclasses.replace(
        run.config, steps=run.step_count, freeze_bn_step=run.config.bn_freeze_at,
        freeze_observer_step=run.config.observer_freeze_at, eval_every=0,
    )  # fmt: skip
    return Schedule(run.step_count, config.batch_size, run.data.spec, config, eval_samples)


def calibrated_with(
    job: Job[Any],
    captured: CapturedModel,
    recipe: Recipe,
    data: Dataset,
    batches: int,
    batch_size: int,
    eval_samples: int | None,
) -> Tuned:
    """prepare_pt2e, then calibration with the job's progress (a Stop ends it there)."""
    job.progress(0.0, "prepare_pt2e…")
    prepared = prepare(captured, recipe)
    job.progress(0.0, f"batch 0/{batches}")
    calibrated = calibrate(
        prepared, data, batches=batches, batch_size=batch_size, record_ranges=True,
        progress=lambda done, total, _: job.progress(done / total, f"batch {done}/{total}"),
    )  # fmt: skip
    schedule = Schedule(batches, batch_size, data.spec, eval_samples=eval_samples)
    return Tuned(prepared, calibrated, schedule)


def live_progress(state: AppState, kind: str, *, until: Callable[[], bool] | None = None) -> None:
    """The running job's progress bar on the page too, redrawn while it runs; the whole
    page reruns as soon as `until()` holds (e.g. once a new QAT run exists to chart)."""

    ended = rerun_when_ended(state, (kind,))

    @st.fragment(run_every=live(state, (kind,)))
    def bar() -> None:
        ended()
        if until is not None and until():
            st.rerun()
        job = state.jobs.last(kind)
        if job is not None and job.running:
            st.progress(job.fraction, text=f"{job.label}: {job.text} · {job.elapsed:.0f} s")

    bar()


# --- convert ---------------------------------------------------------------------------------


def conversion_estimate(state: AppState, *, tune: bool = False) -> float | None:
    """Expected seconds of a conversion (and of the tuning before it, with `tune`)."""
    if state.estimates is None:
        return None
    costs = state.estimates.costs
    samples = state.data().eval_size or 256
    seconds = state.estimate("convert", costs.convert(samples)) or 0.0
    if tune:
        schedule = state.default_schedule()
        if schedule.qat is not None:
            train = costs.train(schedule.steps, schedule.batch_size)
            seconds += state.estimate("train", train) or 0.0
        else:
            calibration = costs.calibrate(schedule.steps, schedule.batch_size)
            seconds += state.estimate("calibrate", calibration) or 0.0
    return seconds


def tuned_now(state: AppState) -> Callable[[], Tuned] | None:
    """What Convert on Train & convert would convert now (None: nothing tuned that fits)."""
    recipe, spec = state.recipe.tuning_key(), state.data().spec
    run = state.qat_run
    if state.recipe.mode == "qat":
        fits = (run is not None and run.step_count > 0 and not state.jobs.running("train")
                and run.source.recipe is not None and run.source.recipe.tuning_key() == recipe
                and run.data.spec == spec)  # fmt: skip
        if not fits:
            return None
        assert run is not None
        eval_samples = state.eval_samples
        return lambda: Tuned(run.source, run.stage(), trained_schedule(run, eval_samples))
    calibrated = state.calibrated
    if (calibrated is None or calibrated.tuned.recipe is None
            or calibrated.tuned.recipe.tuning_key() != recipe
            or calibrated.schedule.data_spec != spec):  # fmt: skip
        return None
    schedule = dataclasses.replace(calibrated.schedule, eval_samples=state.eval_samples)
    fitted = dataclasses.replace(calibrated, schedule=schedule)
    return lambda: fitted


def start_conversion(state: AppState, tuned: Callable[[], Tuned] | None = None) -> Job[Converted]:
    """Convert as a job and measure int8 against float; the result becomes `state.converted`.

    Without `tuned` (the Diff and Export pages' button), what Train & convert tuned is
    converted, or, when nothing fits, the model is first calibrated (PTQ) or trained (QAT)
    with the defaults chosen for it (`AppState.default_schedule`).
    """
    captured, recipe, data = state.captured, state.recipe, state.data()
    assert captured is not None
    recipe_json = recipe.to_json()
    source = tuned or tuned_now(state)
    schedule = state.default_schedule()
    teacher_stage = exported_stage(captured)

    def work(job: Job[Converted]) -> Converted:
        if source is not None:
            job.progress(0.0, "copying the tuned model…")
            made = source()
        elif schedule.qat is not None:
            job.progress(0.0, "prepare_qat_pt2e…")
            prepared = prepare(captured, recipe)
            run = QatRun(prepared, data, schedule.qat, teacher=teacher_stage.graph_module)
            train_steps(job, run, share=0.5)
            made = Tuned(prepared, run.stage(), trained_schedule(run, schedule.eval_samples))
        else:
            made = calibrated_with(job, captured, recipe, data, schedule.steps, schedule.batch_size,
                               schedule.eval_samples)  # fmt: skip
        job.progress(0.5 if source is None else 0.1, "convert_pt2e…")
        stages = Stages(
            teacher_stage,
            made.prepared,
            made.tuned,
            *convert_forms(made.tuned, reference=recipe.reference_representation),
        )
        job.progress(0.7, "measuring int8 against float…")
        comparison = compare_stages(stages, data)
        if source is None and made.tuned.name == "calibrated":
            state.calibrated = made
        return Converted(recipe_json, stages, made.schedule, comparison)

    def done(converted: Converted) -> None:
        state.converted = converted
        if source is not None:  # a conversion alone: it teaches the convert estimate
            state.learn("convert", predicted, time.monotonic() - began)

    costs = state.estimates.costs if state.estimates is not None else None
    predicted = costs.convert(data.eval_size or 256) if costs is not None else 0.0
    began = time.monotonic()
    label = "Convert" if source is not None else f"{schedule.describe(recipe.mode)}, then convert"
    return state.jobs.start("convert", label, work, on_done=done,
                            estimate=conversion_estimate(state, tune=source is None))  # fmt: skip


def offer_conversion(state: AppState) -> None:
    """For the Diff and Export pages: why there is no current converted model, and a button
    that starts the conversion job (after tuning with the defaults when nothing fits)."""
    reason = state.stale()
    if reason is not None:
        st.warning(f"The model converted on Train & convert is out of date: {reason}.")
    else:
        st.info("No model was converted with the current recipe and data yet.")
    source = tuned_now(state)
    if source is not None:
        label = "Convert what Train & convert tuned"
    else:
        label = f"{state.default_schedule().describe(state.recipe.mode).capitalize()}, then convert"
    start_button(state, "convert", label, lambda: start_conversion(state),
                 estimate=conversion_estimate(state, tune=source is None), key="offer-convert",
                 disabled=bool(state.jobs.running("calibrate") or state.jobs.running("train")),
                 help="Runs in the background: this page, and any other, can be left meanwhile. "
                      "Train & convert has every setting.")  # fmt: skip
    if state.jobs.running("convert"):
        live_progress(state, "convert")
    outcome(state.jobs.last("convert"))


# --- lower to ExecuTorch -------------------------------------------------------------------


def pte_estimate(state: AppState) -> tuple[float, float | None]:
    """(predicted, corrected) seconds of the .pte build of the current converted model."""
    if state.estimates is None:
        return 0.0, None
    costs = state.estimates.costs
    predicted = costs.pte(5 * 128)
    key, built = state.exported_build or ("", None)
    if built is None or key != state.stages_key():
        predicted += costs.export(5 * 128)
    return predicted, state.estimate("pte", predicted)


def start_pte_build(state: AppState) -> Job[BuildResult]:
    """Lower the current converted model (and the float one, for comparison) with XNNPACK as a
    job, run both in the ExecuTorch runtime, and write model.pte in this session's build
    folder; the result becomes `state.pte_build` (and `state.exported_build`, its .pt2)."""
    current = state.current()
    assert current is not None and state.captured is not None
    captured, recipe, data, key = state.captured, state.recipe, state.data(), state.stages_key()
    out = state.workspace.build_folder(state.session, current.uid) / "model.pte"
    exported_key, exported = state.exported_build or ("", None)
    reuse = exported if exported_key == key else None
    predicted, estimate = pte_estimate(state)
    began = time.monotonic()

    def work(job: Job[BuildResult]) -> BuildResult:
        job.progress(0.1, "lowering the int8 and the float model with XNNPACK, running both…")
        return export_pte(captured, recipe, data, current.stages, out, exported=reuse,
                          comparison=current.comparison)  # fmt: skip

    def done(built: BuildResult) -> None:
        state.pte_build = state.exported_build = (key, built)
        state.learn("pte", predicted, time.monotonic() - began)

    return state.jobs.start("pte", "Build model.pte (ExecuTorch, XNNPACK)", work, on_done=done,
                            estimate=estimate)  # fmt: skip


def current_pte(state: AppState) -> BuildResult | None:
    """The .pte build of the current converted model, if this session made one."""
    key, built = state.pte_build or ("", None)
    if built is None or built.pte is None or key != state.stages_key():
        return None
    return built
