"""The app's single session-state object and the cached library calls behind it.

Caching lives here, in the UI layer, never in `workbench`. Cached objects are immutable
(frozen dataclasses, text); anything a page changes is copied first.
"""

from __future__ import annotations

import argparse
import atexit
import logging
import re
import sys
import threading
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import streamlit as st
from streamlit.errors import FragmentHandledException

from sample_models import DEFAULT_SAMPLE
from workbench.capture import CapturedModel, DimRequest, ModelSpec
from workbench.capture import capture as _capture
from workbench.compare import Comparison
from workbench.data import Dataset, default_data_spec, load_data
from workbench.errors import WorkbenchError, first_line
from workbench.flow import BuildResult
from workbench.graph import GraphView, describe
from workbench.latency import Latency
from workbench.pattern_cache import install_pattern_cache, warm_pattern_cache
from workbench.pipeline import (
    QatConfig,
    Stage,
    calibrate,
    convert,
    evaluate,
    exported_stage,
    prepare,
    train_qat,
)
from workbench.quantizer import quantizable_nodes
from workbench.recipe import Effective, Recipe, validate
from workbench.render import Rendered, dot_to_svg, render_for_screen
from workbench.runner import QatRun
from workbench.sensitivity import SensitivityProgress
from workbench.workspace import Workspace

STATE_KEY = "workbench"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Schedule:
    """How the tuned stage was made: calibration batches (PTQ) or training steps (QAT)."""

    steps: int
    batch_size: int
    data_spec: str
    qat: QatConfig | None = None  # the QAT settings; None for PTQ


@dataclass(frozen=True)
class Tuned:
    """A prepared stage, its calibrated or trained copy and how that copy was made."""

    prepared: Stage
    tuned: Stage
    schedule: Schedule


@dataclass(frozen=True)
class Converted:
    """A model converted on the Train & convert page, how it was made and how it compares."""

    recipe_json: str
    stages: dict[str, Stage]  # exported, prepared, calibrated | trained, converted
    schedule: Schedule
    comparison: Comparison
    uid: str = field(default_factory=lambda: uuid.uuid4().hex)


@dataclass
class AppState:
    """What one browser session has loaded: the model, its recipe and the last error."""

    workspace: Workspace
    spec: str | None = None
    captured: CapturedModel | None = None
    view: GraphView | None = None
    recipe: Recipe = field(default_factory=Recipe)
    error: WorkbenchError | None = None
    notice: str | None = None
    selected: str | None = None
    diff_selected: tuple[str, str] | None = None  # (side, node) clicked on the Diff page
    exported_build: tuple[str, BuildResult] | None = None  # (stages_key, what Export built)
    qat_run: QatRun | None = None  # the Train & convert page's run
    calibrated: Tuned | None = None  # the Train & convert page's PTQ calibration
    converted: Converted | None = None  # what that page converted last
    sensitivity: tuple[str, SensitivityProgress] | None = None  # (recipe JSON, search state)
    latency: tuple[str, Latency] | None = None  # (stages_key, the Export page's measurement)
    _effective: tuple[str, dict[str, Effective]] | None = None
    data_spec: str | None = None  # None: the model's default data
    _float_quality: float | None = None
    _data: Dataset | None = None
    _data_task: tuple[str | None, ...] = ()
    _rendered: dict[int | None, Rendered] = field(default_factory=dict)
    _stages: tuple[str, dict[str, Stage]] | None = None
    _views: dict[tuple[str, str], GraphView] = field(default_factory=dict)

    def effective(self) -> dict[str, Effective]:
        """Quantizable nodes with their effective settings, recomputed when the recipe changes."""
        assert self.captured is not None and self.view is not None
        key = self.recipe.to_json()
        if self._effective is None or self._effective[0] != key:
            nodes = quantizable_nodes(self.captured.graph_module(), self.recipe, self.view)
            self._effective = (key, nodes)
        return self._effective[1]

    def rendered(self, depth: int | None) -> Rendered:
        """DOT for the screen at a collapse depth, computed once per loaded model and depth."""
        assert self.view is not None
        if depth not in self._rendered:
            self._rendered[depth] = render_for_screen(self.view, collapse_depth=depth)
        return self._rendered[depth]

    def work_key(self) -> str:
        """The recipe and the data: what calibration, training and their results depend on."""
        return f"{self.recipe.to_json()}|{self.data().spec}"

    def current(self) -> Converted | None:
        """The Train & convert page's model when it was made with the current recipe and data."""
        converted = self.converted
        if (
            converted is not None
            and converted.recipe_json == self.recipe.to_json()
            and converted.schedule.data_spec == self.data().spec
        ):
            return converted
        return None

    def data(self) -> Dataset:
        """The data chosen on the Train & convert page, else the default for the model
        (digits for 1x8x8 inputs, random otherwise), judged by the recipe's task (output,
        loss, metric); loaded once per data and task."""
        assert self.captured is not None
        task = self.recipe.task
        key = (self.recipe.output, self.recipe.loss, self.recipe.metric)
        if self._data is None:
            spec = self.data_spec or default_data_spec(self.captured.example_inputs)
            self._data = load_data(spec, self.captured.signature, task=task())
            self._data_task = key
        elif self._data_task != key:
            self._data, self._data_task = self._data.with_task(task()), key
            self._float_quality = None
        return self._data

    def set_data(self, spec: str) -> None:
        """Use the data `spec` names (see workbench.data) and autosave the choice; on error
        keep the current data."""
        assert self.captured is not None and self.spec is not None
        data = load_data(spec, self.captured.signature, task=self.recipe.task())
        self.data_spec, self._data, self._float_quality = spec, data, None
        self._data_task = (self.recipe.output, self.recipe.loss, self.recipe.metric)
        self.workspace.save_data_spec(self.spec, spec)

    def float_quality(self) -> float:
        """Quality of the float (exported) model on the data, computed once per data."""
        assert self.captured is not None
        if self._float_quality is None:
            teacher = self.captured.graph_module()
            self._float_quality = evaluate(teacher, self.data(), teacher=teacher)
        return self._float_quality

    def stages_key(self) -> str:
        """Identifies what `stages` returns: the model, recipe, data and which stages."""
        current = self.current()
        return f"{self.spec}|{self.work_key()}|{current.uid if current else 'preview'}"

    def stages(self) -> dict[str, Stage]:
        """Exported, prepared, calibrated (PTQ) or trained (QAT) and converted.

        The Train & convert page's stages when it converted a model with the current recipe;
        otherwise a quick preview of the flow (see `schedule`) on the data, recomputed when
        the recipe or the data changes.
        """
        assert self.captured is not None
        if self.current() is not None:
            return self.current().stages  # type: ignore[union-attr]
        key = self.work_key()
        if self._stages is None or self._stages[0] != key:
            captured, recipe = self.captured, self.recipe
            data = self.data()
            exported = exported_stage(captured)
            prepared = prepare(captured, recipe)
            schedule = self.schedule()
            if schedule.qat is not None:
                tuned = train_qat(prepared, data, schedule.qat, teacher=exported.graph_module)
            else:
                tuned = calibrate(
                    prepared, data, batches=schedule.steps, batch_size=schedule.batch_size
                )
            stages = {s.name: s for s in (exported, prepared, tuned, convert(tuned))}
            self._stages = (key, stages)
            self._views = {}
        return self._stages[1]

    def schedule(self) -> Schedule:
        """How `stages` tunes the model: the Train & convert page's settings when it
        converted with the current recipe, else the preview's (PTQ 8 batches of 64, QAT 20
        steps of 32)."""
        current = self.current()
        if current is not None:
            return current.schedule
        spec = self.data().spec
        if self.recipe.mode == "qat":
            return Schedule(20, 32, spec, QatConfig(steps=20, batch_size=32))
        return Schedule(8, 64, spec)

    def stage_view(self, name: str) -> GraphView:
        """The graph view of one preview stage."""
        key = (self.stages_key(), name)
        if key not in self._views:
            self._views[key] = describe(self.stages()[name].graph_module, stage=name)
        return self._views[key]

    def set_recipe(self, recipe: Recipe) -> None:
        """Adopt an edited recipe and autosave it to the workspace."""
        self.recipe = recipe
        if self.spec is not None:
            self.workspace.save_recipe(self.spec, recipe)


@st.cache_resource(show_spinner=False)
def _pattern_cache_started() -> threading.Thread:
    """Install torchao's pattern cache once per server and fill it in the background."""
    install_pattern_cache()
    thread = threading.Thread(target=warm_pattern_cache, name="warm-pattern-cache", daemon=True)
    thread.start()
    # A thread killed inside torch at interpreter exit aborts the process: let it finish.
    atexit.register(thread.join)
    return thread


def start_background_work() -> None:
    """Start what may run after the first page is drawn (call at the end of the script)."""
    _pattern_cache_started()


def show_error(exc: WorkbenchError) -> None:
    """A WorkbenchError as the app shows every one: the problem in bold, then the fix."""
    st.error(f"**{exc.problem}**\n\n{exc.fix}", icon="🚫")


def show_bug(step: str, exc: Exception) -> None:
    """An unexpected failure: the step and the exception, that nothing is lost, the traceback."""
    message = f"{type(exc).__name__}: {first_line(exc)}".replace("`", "'")
    st.error(f"**{step} failed unexpectedly:** `{message}`\n\nThe recipe and any trained "
             "weights are kept. This is a bug in the workbench: please report it with the "
             "details below.", icon="🐞")  # fmt: skip
    with st.expander("Details"):
        st.code("".join(traceback.format_exception(exc)), language="text")


class Step:
    """A guard around one step of a page (a page, Calibrate, Convert...): no traceback escapes.

    A WorkbenchError shows as `show_error` shows it, any other exception as `show_bug`;
    Streamlit's st.rerun and st.stop pass (they are BaseExceptions). Afterwards `failed` says
    whether the step failed; with `stop=True` the page stops there on a failure. The guarded
    code sets no state before it has succeeded, so a failure loses nothing.
    """

    def __init__(self, name: str, *, stop: bool = False) -> None:
        self.name, self.stop, self.failed = name, stop, False

    def __enter__(self) -> Step:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        if not isinstance(exc, Exception) or isinstance(exc, FragmentHandledException):
            return False  # success, or Streamlit's own control flow
        self.failed = True
        if isinstance(exc, WorkbenchError):
            show_error(exc)
        else:
            log.exception("%s failed", self.name, exc_info=exc)
            show_bug(self.name, exc)
        if self.stop:
            st.stop()
        return True


def step(name: str, *, stop: bool = False) -> Step:
    """Guard one step of a page: `with step("Convert"): ...` (see Step)."""
    return Step(name, stop=stop)


def get_state() -> AppState:
    """The session's state, created on first use with the start-up model loaded."""
    install_pattern_cache()
    if STATE_KEY not in st.session_state:
        workspace = Workspace.default()
        state = AppState(workspace)
        st.session_state[STATE_KEY] = state
        load_model(state, startup_spec(workspace))
    return st.session_state[STATE_KEY]


def loaded_state() -> AppState:
    """The session's state for a page that needs a model; stops the page when none is loaded."""
    state = get_state()
    if state.view is None:
        st.info("Load a model on the Model page first.")
        st.stop()
    return state


def startup_spec(workspace: Workspace) -> str:
    """`--model` from the command line, else the workspace's last model, else the default."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--model", default=None)
    known, _ = parser.parse_known_args(sys.argv[1:])
    return str(known.model or workspace.last_spec() or f"sample:{DEFAULT_SAMPLE}")


def load_model(
    state: AppState,
    spec: str,
    input_shape: tuple[int, ...] | None = None,
    dynamic: tuple[DimRequest, ...] = (),
) -> bool:
    """Capture `spec` into `state`; on failure keep the previous model and record the error.

    `dynamic` names dims to make dynamic besides the batch and sequence. The workspace's
    autosaved recipe for this model comes back with it.
    """
    try:
        captured, view = _cached_capture(spec, input_shape, dynamic, _file_stamp(spec))
    except WorkbenchError as exc:
        state.error = exc
        return False
    state.spec, state.captured, state.view, state.error = spec, captured, view, None
    state.selected, state._effective, state._rendered = None, None, {}
    state.diff_selected, state._stages, state._views = None, None, {}
    state.exported_build = state.qat_run = state.calibrated = None
    state.converted = state.sensitivity = state._float_quality = state._data = None
    state.data_spec = None
    state.latency = None
    state.recipe, state.notice = Recipe(), None
    saved = state.workspace.load_recipe(spec)
    if saved is not None:
        try:
            validate(saved, view)
            state.recipe = saved
            rules = len(saved.overrides)
            state.notice = f"Restored the autosaved recipe ({rules} rule{'s' * (rules != 1)})."
        except WorkbenchError as exc:
            state.notice = f"The autosaved recipe does not fit this model any more: {exc.problem}"
    data_spec = state.workspace.load_data_spec(spec)
    if data_spec is not None:
        try:
            state.set_data(data_spec)
        except WorkbenchError as exc:
            lost = f"The data last used, {data_spec}, does not load any more ({exc.problem})."
            state.notice = f"{state.notice} {lost}" if state.notice else lost
    state.workspace.remember(spec)
    return True


@st.cache_resource(show_spinner="Capturing the model with torch.export…", max_entries=16)
def _cached_capture(
    spec: str,
    input_shape: tuple[int, ...] | None,
    dynamic: tuple[DimRequest, ...],
    stamp: float | None,
) -> tuple[CapturedModel, GraphView]:
    captured = _capture(spec, input_shape=input_shape, dynamic=dynamic)
    return captured, describe(captured.graph_module(), stage="exported")


def parse_dynamic(text: str) -> tuple[DimRequest, ...]:
    """Dims from `input_ids:1 attention_mask:1` (comma or space separated; `x:1,2` is two)."""
    # Split only before a name: the commas of `x:1,2` stay with their input.
    parts = re.split(r"[\s,]+(?=[^\s,]*:)", text.strip())
    return tuple(request for part in parts if part for request in DimRequest.parse(part))


def _file_stamp(spec: str) -> float | None:
    """Modification time of the file a spec names, so an edited file is captured again."""
    try:
        parsed = ModelSpec.parse(spec)
    except WorkbenchError:
        return None
    path = Path(parsed.target)
    return path.stat().st_mtime if parsed.kind != "sample" and path.is_file() else None


@st.cache_data(show_spinner="Laying out the graph with Graphviz…", max_entries=64)
def svg_for(dot: str) -> str:
    """SVG for DOT text, laid out once per distinct graph and view options."""
    return dot_to_svg(dot)
