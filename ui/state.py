"""The app's single session-state object and the cached library calls behind it.

Caching lives here, in the UI layer, never in `workbench`. Cached objects are immutable
(frozen dataclasses, text); anything a page changes is copied first.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import re
import threading
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import streamlit as st
from streamlit.errors import FragmentHandledException

from ui.startup import startup_spec as boot_startup_spec
from ui.startup import take_pending_click
from workbench.analysis.compare import Comparison
from workbench.analysis.latency import Latency
from workbench.analysis.mixed_precision import SearchResult
from workbench.analysis.sensitivity import SensitivityProgress
from workbench.artifacts.workspace import Workspace
from workbench.data.datasets import Dataset, default_data_spec, load_data
from workbench.drawing.dot import Rendered, dot_to_svg, render_for_screen
from workbench.errors import WorkbenchError, first_line
from workbench.graph.view import GraphView, describe
from workbench.jobs import Jobs
from workbench.model.capture import CapturedModel, DimRequest, ModelSpec
from workbench.model.capture import capture as _capture
from workbench.quantization.pattern_cache import install_pattern_cache, warm_pattern_cache
from workbench.quantization.quantizer import quantizable_nodes
from workbench.quantization.recipe import Effective, Recipe, validate
from workbench.stages.build import BuildResult
from workbench.stages.estimate import Costs, Defaults, Estimates, choose_defaults
from workbench.stages.stage import Stage, Stages
from workbench.stages.steps import evaluate
from workbench.stages.training import QatConfig, QatRun

__all__ = [
    "DEFAULT_QAT_STEPS",
    "STATE_KEY",
    "AppState",
    "Converted",
    "Schedule",
    "Step",
    "Tuned",
    "captured_view",
    "get_state",
    "load_model",
    "loaded_state",
    "parse_dynamic",
    "show_bug",
    "show_error",
    "start_background_work",
    "startup_spec",
    "step",
    "svg_for",
]

STATE_KEY = "workbench"
DEFAULT_QAT_STEPS = 120
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Schedule:
    """How the tuned stage was made: calibration batches (PTQ) or training steps (QAT)."""

    steps: int
    batch_size: int
    data_spec: str
    qat: QatConfig | None = None  # the QAT settings; None for PTQ
    eval_samples: int | None = None  # evaluation on the first N samples; None: all

    def describe(self, mode: str) -> str:
        what = "steps" if mode == "qat" else "calibration batches"
        return f"{self.steps} {what} of {self.batch_size} from {self.data_spec}"


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
    stages: Stages  # exported, prepared, calibrated | trained, converted
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
    expanded: frozenset[str] = frozenset()  # module groups opened on the Graph page
    diff_expanded: frozenset[str] = frozenset()  # module groups opened on the Diff page
    exported_build: tuple[str, BuildResult] | None = None  # (stages_key, what Export built)
    pte_build: tuple[str, BuildResult] | None = None  # (stages_key, the .pte built, with .pt2)
    explorer_zip: tuple[str, bytes] | None = None  # (stages_key, Model Explorer node data)
    # (stages_key, reference stage, compared stage) -> SQNR per exported node (Graph page)
    stage_gaps: dict[tuple[str, str, str], dict[str, float]] = field(default_factory=dict)
    qat_run: QatRun | None = None  # the Train & convert page's run
    calibrated: Tuned | None = None  # the Train & convert page's PTQ calibration
    converted: Converted | None = None  # what that page converted last
    sensitivity: tuple[str, SensitivityProgress] | None = None  # (recipe JSON, search state)
    search: tuple[str, SearchResult] | None = None  # (data identity, mixed-precision result)
    latency: tuple[str, Latency] | None = None  # (stages_key, the Export page's measurement)
    jobs: Jobs = field(default_factory=Jobs)  # the session's background work
    session: str = field(default_factory=lambda: uuid.uuid4().hex[:12])  # names its builds
    estimates: Estimates | None = None  # from a forward pass timed when the model loaded
    eval_samples: int | None = None  # evaluation on the first N samples; None: all
    recipe_seen: str | None = None  # the autosaved recipe's text as this session last saw it
    recipe_conflict: str | None = None  # another tab's recipe, when it changed under us
    _effective: tuple[str, dict[str, Effective]] | None = None
    data_spec: str | None = None  # None: the model's default data
    _float_quality: float | None = None
    _data: Dataset | None = None
    _data_task: tuple[str | None, ...] = ()
    _rendered: dict[tuple[int | None, frozenset[str]], Rendered] = field(default_factory=dict)
    _views: dict[tuple[str, str], GraphView] = field(default_factory=dict)

    def effective(self) -> dict[str, Effective]:
        """Quantizable nodes with their effective settings, recomputed when the recipe changes."""
        assert self.captured is not None and self.view is not None
        key = self.recipe.to_json()
        if self._effective is None or self._effective[0] != key:
            nodes = quantizable_nodes(self.captured.graph_module(), self.recipe, self.view)
            self._effective = (key, nodes)
        return self._effective[1]

    def rendered(self, depth: int | None, expanded: frozenset[str] = frozenset()) -> Rendered:
        """DOT for the screen at a collapse depth with some groups expanded, computed once per
        loaded model, depth and expansion (the last 32 kept)."""
        assert self.view is not None
        key = (depth, expanded)
        if key not in self._rendered:
            if len(self._rendered) >= 32:
                self._rendered.pop(next(iter(self._rendered)))
            self._rendered[key] = render_for_screen(
                self.view, collapse_depth=depth, expanded=expanded
            )
        return self._rendered[key]

    def work_key(self) -> str:
        """The recipe and the data: what calibration, training and their results depend on."""
        return f"{self.recipe.to_json()}|{self.data().identity}"

    def current(self) -> Converted | None:
        """The Train & convert page's model when it was made with the current recipe and data."""
        converted = self.converted
        if (
            converted is not None
            and converted.recipe_json == self.recipe.to_json()
            and converted.schedule.data_spec == self.data().spec
            and converted.schedule.eval_samples == self.eval_samples
        ):
            return converted
        return None

    def stale(self) -> str | None:
        """Why the converted model is not the current one (None when it is, or there is none)."""
        converted = self.converted
        if converted is None or self.current() is not None:
            return None
        if converted.recipe_json != self.recipe.to_json():
            return "the recipe changed since it was converted"
        return "the data or the evaluation size changed since it was converted"

    def data(self) -> Dataset:
        """The data chosen on the Train & convert page, else the default for the model
        (digits for 1x8x8 inputs, random otherwise), judged by the recipe's task (output,
        loss, metric); loaded once per data and task."""
        assert self.captured is not None
        task = self.recipe.task
        key = (self.recipe.output, self.recipe.loss, self.recipe.metric, self.eval_samples)
        if self._data is None:
            spec = self.data_spec or default_data_spec(self.captured.example_inputs)
            loaded = load_data(spec, self.captured.signature, task=task())
            self._data, self._data_task = loaded.limited(self.eval_samples), key
        elif self._data_task != key:
            self._data = self._data.with_task(task()).limited(self.eval_samples)
            self._data_task, self._float_quality = key, None
        return self._data

    def set_data(self, spec: str) -> None:
        """Use the data `spec` names (see workbench.data.datasets) and autosave the choice; on error
        keep the current data."""
        assert self.captured is not None and self.spec is not None
        data = load_data(spec, self.captured.signature, task=self.recipe.task())
        self.data_spec, self._float_quality = spec, None
        self._data = data.limited(self.eval_samples)
        self._data_task = (self.recipe.output, self.recipe.loss, self.recipe.metric,
                           self.eval_samples)  # fmt: skip
        self.workspace.save_data_spec(self.spec, spec)

    def set_eval_samples(self, samples: int | None) -> None:
        """Evaluate on the first `samples` evaluation samples from now on (None: all)."""
        self.eval_samples = samples
        self.data()

    def known_float_quality(self) -> float | None:
        """Quality of the float model on the data if a job measured it already."""
        return self._float_quality

    def float_quality(self) -> float:
        """Quality of the float (exported) model on the data, computed once per data (call
        it from a job: it evaluates the whole evaluation split)."""
        assert self.captured is not None
        if self._float_quality is None:
            teacher = self.captured.graph_module()
            self._float_quality = evaluate(teacher, self.data(), teacher=teacher)
        return self._float_quality

    def stages_key(self) -> str:
        """Identifies the current converted model's stages ('' when there is none)."""
        current = self.current()
        return f"{self.spec}|{self.work_key()}|{current.uid}" if current is not None else ""

    def stages(self) -> Stages:
        """Exported, prepared, calibrated (PTQ) or trained (QAT) and converted: the stages
        of the model converted on Train & convert with the current recipe and data. Pages
        that need them check `current()` first; nothing is computed here."""
        current = self.current()
        if current is None:
            raise WorkbenchError(
                "No model was converted with the current recipe and data.",
                "Convert on the Train & convert page (or with the button on this page).",
            )
        return current.stages

    def default_schedule(self) -> Schedule:
        """How a conversion started from the Diff or Export page tunes the model: the
        defaults chosen for this model (see `run_defaults`)."""
        defaults = self.run_defaults()
        spec = self.data().spec
        if self.recipe.mode == "qat":
            steps = DEFAULT_QAT_STEPS
            config = QatConfig(steps=steps, batch_size=defaults.batch_size)
            return Schedule(steps, defaults.batch_size, spec, config, self.eval_samples)
        return Schedule(defaults.calibration_batches, defaults.batch_size, spec,
                        eval_samples=self.eval_samples)  # fmt: skip

    def schedule(self) -> Schedule:
        """How the current converted model was made, else how the button would make it."""
        current = self.current()
        return current.schedule if current is not None else self.default_schedule()

    def run_defaults(self) -> Defaults:
        """Batch size, calibration batches and evaluation size that fit the model here."""
        data = self.data()
        if self.estimates is None:
            return Defaults(64, 16, None)
        full = data.eval_size if self.eval_samples is None else None
        return choose_defaults(self.estimates.costs, train_size=data.train_size, eval_size=full)

    def estimate(self, kind: str, predicted: float) -> float | None:
        """Seconds a job of `kind` is expected to take, `predicted` corrected by experience."""
        return None if self.estimates is None else self.estimates.seconds(kind, predicted)

    def stage_view(self, name: str) -> GraphView:
        """The graph view of one stage of the current converted model."""
        key = (self.stages_key(), name)
        if key not in self._views:
            self._views[key] = describe(self.stages()[name].graph_module, stage=name)
        return self._views[key]

    def set_recipe(self, recipe: Recipe) -> None:
        """Adopt an edited recipe and autosave it to the workspace, unless another tab
        changed the autosaved recipe since this session read it: then `recipe_conflict`
        holds theirs and nothing is overwritten until the user chooses."""
        self.recipe = recipe
        if self.spec is None:
            return
        theirs = self.workspace.save_recipe_unless_changed(self.spec, recipe, self.recipe_seen)
        if theirs is None:
            self.recipe_seen, self.recipe_conflict = recipe.to_json(), None
        else:
            self.recipe_conflict = theirs

    def check_recipe_conflict(self) -> str | None:
        """Another tab's autosaved recipe for this model if it changed since this session
        last read or wrote it (None otherwise)."""
        if self.spec is None:
            return None
        now = self.workspace.recipe_text(self.spec)
        if now is not None and now != self.recipe_seen and now != self.recipe.to_json():
            self.recipe_conflict = now
        elif self.recipe_conflict is not None and now == self.recipe.to_json():
            self.recipe_conflict = None
        return self.recipe_conflict

    def resolve_recipe_conflict(self, *, keep_mine: bool) -> None:
        """Take the other tab's recipe, or overwrite it with this session's."""
        theirs, self.recipe_conflict = self.recipe_conflict, None
        if theirs is None or self.spec is None:
            return
        if keep_mine:
            self.recipe_seen = theirs
            self.set_recipe(self.recipe)
        else:
            self.recipe = Recipe.from_json(theirs, source="the autosaved recipe")
            self.recipe_seen = theirs

    def learn(self, kind: str, predicted: float, job_seconds: float) -> None:
        """Correct later estimates of `kind` by how long this one took."""
        if self.estimates is not None:
            self.estimates.learn(kind, predicted, job_seconds)


@st.cache_resource(show_spinner=False)
def _pattern_cache_started() -> threading.Thread:
    """Install torchao's pattern cache once per server and fill it in the background."""
    install_pattern_cache()
    stop = threading.Event()
    thread = threading.Thread(target=warm_pattern_cache, args=(stop,), name="warm-pattern-cache",
                              daemon=True)  # fmt: skip
    thread.start()

    def finish() -> None:
        # A thread killed inside torch at interpreter exit aborts the process: let it end its
        # step (seconds), not the whole warm-up (a stopped server waited 10-18 s for it).
        stop.set()
        thread.join()

    atexit.register(finish)
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
        if load_model(state, startup_spec(workspace)) and state.view is not None:
            state.selected = take_pending_click(state.view)  # a click on the cold start's graph
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
    return boot_startup_spec(workspace.folder)  # the cold start reads it before torch loads


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
    state.diff_selected, state._views = None, {}
    state.exported_build = state.pte_build = state.qat_run = state.calibrated = None
    state.explorer_zip = None
    state.stage_gaps = {}
    state.converted = state.sensitivity = state._float_quality = state._data = None
    state.search = None
    state.data_spec = None
    state.latency = None
    state.expanded = state.diff_expanded = frozenset()
    state.recipe, state.notice = Recipe(), None
    state.eval_samples, state.estimates = None, None
    state.recipe_seen = state.workspace.recipe_text(spec)
    state.recipe_conflict = None
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
    costs = Costs.measure(captured.graph_module(), captured.example_inputs, nodes=len(view),
                          dynamic_batch=captured.dynamic_batch)  # fmt: skip
    state.estimates = Estimates(costs)
    with contextlib.suppress(WorkbenchError):  # data that does not load says so on its page
        state.set_eval_samples(state.run_defaults().eval_samples)
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


def captured_view(spec: str) -> GraphView:
    """The exported graph view of `spec` with no input options, from the capture cache that
    `load_model` reads (the cold start fills it ahead of the first page)."""
    return _cached_capture(spec, None, (), _file_stamp(spec))[1]


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
