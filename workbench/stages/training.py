"""Quantization-aware training: its settings (`QatConfig`), a resumable run (`QatRun`), one
uninterrupted run (`train_qat`) and the errors training raises.

`QatRun` trains a copy of a QAT-prepared stage one step at a time (seeded batches, BN freeze
and observer freeze on the config's schedule), so the app can show progress, stop within a
step, evaluate every `eval_every` steps and save checkpoints that a later process resumes
from with bit-identical results; `train_qat` is one uninterrupted run.

The run starts where PTQ would end: the fake quantizers' observers are calibrated on
`calibration_batches` training batches (eval mode, no gradients) before step 0, and that start
is evaluated. Every evaluation (the start, every `eval_every` steps, the last step) that is
better than the best so far keeps its state: `stage()` gives the best evaluated state unless
asked for the last, so training can never leave the user worse off than calibration alone
(`qat_summary` says start, best and last). A step whose loss is not finite, or a spike far
above the recent losses (`spike_factor`), restores the last good state and raises
`TrainingError` instead of training on it.

Checkpoints are files this runner wrote with `torch.save`: model state_dict, optimizer state,
step, RNG states, loss and evaluation history and the range recorder's buffers. They are read
back with `torch.load(weights_only=True)` (plain tensors, numbers, strings, lists, dicts and
tuples only), so a foreign file cannot run code; still, only resume from files this runner
wrote: the state is loaded into the model without further checks beyond the run settings.
"""

from __future__ import annotations

import copy
import itertools
import math
import os
import pickle
import random
import tempfile
import time
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.fx import GraphModule
from torchao.quantization.pt2e import (
    disable_fake_quant,
    disable_observer,
)

from workbench.data.datasets import Batch, Dataset
from workbench.errors import WorkbenchError
from workbench.locks import EXPORT_LOCK
from workbench.stages.ranges import RangeRecorder
from workbench.stages.stage import Stage
from workbench.stages.steps import StepProgress, StopRequested, call, evaluate, to_eval, to_train

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_NAME",
    "CHECKPOINT_VERSION",
    "QatConfig",
    "QatRun",
    "TrainingError",
    "freeze_bn_",
    "qat_lines",
    "qat_summary",
    "train_qat",
]

CHECKPOINT_FORMAT = "workbench-qat-checkpoint"
CHECKPOINT_VERSION = 2  # 2: the best evaluated state and the calibration before step 0
CHECKPOINT_NAME = "qat-checkpoint.pt"
KEEP = ("best", "last")
SPIKE_WARMUP = 3  # steps whose loss never counts as a spike: there is nothing to compare yet
SPIKE_WINDOW = 20  # a spike is measured against the largest of this many recent losses
Batches = Iterator[Batch]


class TrainingError(WorkbenchError):
    """Training could not go on (for example, the loss became NaN)."""


@dataclass(frozen=True)
class QatConfig:
    """How to train with fake quantization in the loop."""

    steps: int = 120
    batch_size: int = 64
    lr: float = 1e-4
    optimizer: str = "adam"
    freeze_bn_step: int | None = None  # default: 60 % of the steps
    freeze_observer_step: int | None = None  # default: 80 % of the steps
    eval_every: int = 0  # 0: only the start and the last step
    seed: int = 0
    calibration_batches: int = 16  # observers calibrated (as PTQ does) before step 0
    spike_factor: float = 100.0  # a loss this many times the recent largest stops the run

    def __post_init__(self) -> None:
        if self.steps < 0 or self.batch_size < 1 or not (self.lr > 0):
            raise WorkbenchError(
                f"QAT settings steps={self.steps}, batch_size={self.batch_size}, lr={self.lr} "
                "are out of range.",
                "Use steps >= 0, batch_size >= 1 and a positive learning rate.",
            )
        if self.calibration_batches < 0 or not (self.spike_factor > 1):
            raise WorkbenchError(
                f"QAT settings calibration_batches={self.calibration_batches}, "
                f"spike_factor={self.spike_factor} are out of range.",
                "Use calibration_batches >= 0 (0: none) and a spike factor above 1.",
            )
        if self.optimizer not in ("adam", "sgd"):
            raise WorkbenchError(f"Unknown optimizer {self.optimizer!r}.", "Use adam or sgd.")

    @property
    def bn_freeze_at(self) -> int:
        return self.freeze_bn_step if self.freeze_bn_step is not None else int(self.steps * 0.6)

    @property
    def observer_freeze_at(self) -> int:
        step = self.freeze_observer_step
        return step if step is not None else int(self.steps * 0.8)


class QatRun:
    """QAT on a copy of a prepared stage that can step, stop, checkpoint and resume.

    `history` holds one dict per evaluation: {"stage": "eval", "step", "float", "fake_quant",
    "quality"}; "float" is the model being trained with fake quantization switched off (the
    latent float weights), "fake_quant" the same model as it will be quantized. The first is
    step 0, the calibrated start; the last step is always evaluated. `best` is the evaluation
    with the best fake-quant quality (the earliest of equals), whose state is kept in memory
    and in checkpoints; `stage()` gives it by default. `losses[i]` is the loss of step i + 1
    (NaN for steps not run yet). With `checkpoint_dir`, a checkpoint is written atomically
    every `checkpoint_every` steps (and at step 0) to `checkpoint_dir / CHECKPOINT_NAME`; the
    last good state is also kept in memory, and a non-finite or spiking loss restores it
    before raising `TrainingError`.
    """

    def __init__(
        self,
        stage: Stage,
        data: Dataset,
        config: QatConfig,
        *,
        teacher: GraphModule | None = None,
        eval_every: int | None = None,
        checkpoint_dir: str | Path | None = None,
        checkpoint_every: int = 10,
        record_ranges: bool = True,
        meta: dict[str, str | int | float] | None = None,
    ) -> None:
        if data.needs_teacher() and teacher is None:
            raise ValueError("data without targets needs the float model as teacher")
        if checkpoint_every < 1:
            raise ValueError("checkpoint_every must be at least 1")
        self.source = stage
        self.data = data
        self.config = config
        self.teacher = teacher
        self.eval_every = config.eval_every if eval_every is None else eval_every
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.checkpoint_every = checkpoint_every
        self.record_ranges = record_ranges
        self.meta = dict(meta or {})  # saved with each checkpoint: what the caller needs to resume
        self.seconds = 0.0
        self.stopped = False
        torch.manual_seed(config.seed)
        self._build()
        self._best: dict[str, Any] | None = None  # {"step", "fake_quant", "quality", "model"}
        self._calibrate()
        self.evaluate()
        self._good = self.state()
        if self.checkpoint_dir is not None:
            self._write(self._good, self.checkpoint_path)

    # --- state -----------------------------------------------------------------------------

    def _build(self) -> None:
        """A fresh model, optimizer, recorder and batch stream at step 0."""
        self.model: GraphModule = self.source.copy_module()
        with EXPORT_LOCK:
            to_train(self.model)
        # What the training forward calls: the model, or a wrapper of it (distributed.py's DDP).
        self.trainer: torch.nn.Module = self.model
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer: torch.optim.Optimizer = (
            torch.optim.Adam(params, lr=self.config.lr)
            if self.config.optimizer == "adam"
            else torch.optim.SGD(params, lr=self.config.lr, momentum=0.9)
        )
        self.recorder = RangeRecorder(self.model, self.config.steps) if self.record_ranges else None
        self.losses = torch.full((self.config.steps,), math.nan)
        self.history: list[dict[str, Any]] = []
        self.step_count = 0
        self._batches: Batches = self.data.train_batches(
            self.config.batch_size, seed=self.config.seed
        )

    def _calibrate(self) -> None:
        """Calibrate the observers on the first training batches, as PTQ would (eval mode:
        BN uses its running statistics and is not updated; observers are)."""
        count = self.config.calibration_batches
        if count == 0:
            return
        batches = self.data.train_batches(self.config.batch_size, seed=self.config.seed)
        with EXPORT_LOCK, torch.no_grad():
            to_eval(self.model)
            for batch in itertools.islice(batches, count):
                call(self.model, batch.inputs)
            to_train(self.model)

    @property
    def done(self) -> bool:
        return self.step_count >= self.config.steps

    @property
    def start(self) -> dict[str, Any] | None:
        """The evaluation of step 0 (the calibrated start)."""
        return next((r for r in self.history if r["step"] == 0), None)

    @property
    def last(self) -> dict[str, Any] | None:
        """The latest evaluation."""
        return self.history[-1] if self.history else None

    @property
    def best(self) -> dict[str, Any] | None:
        """The evaluation whose state `stage()` gives by default."""
        if self._best is None:
            return None
        return next((r for r in self.history if r["step"] == self._best["step"]), None)

    @property
    def ended_worse(self) -> bool:
        """Whether the latest evaluation is worse than the start (fake-quant quality)."""
        start, last = self.start, self.last
        return start is not None and last is not None and _better(start, last)

    @property
    def checkpoint_path(self) -> Path:
        if self.checkpoint_dir is None:
            raise ValueError("this run has no checkpoint folder")
        return self.checkpoint_dir / CHECKPOINT_NAME

    def state(self) -> dict[str, Any]:
        """Everything needed to continue this run, as cloned tensors and plain values."""
        return {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "settings": _settings(self.config),
            "step": self.step_count,
            "model": _clone_state_dict(self.model.state_dict()),
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "torch_rng": torch.get_rng_state(),
            "python_rng": random.getstate(),
            "losses": self.losses.clone(),
            "history": copy.deepcopy(self.history),
            "recorder": self.recorder.snapshot() if self.recorder is not None else None,
            "meta": dict(self.meta),
            "best": dict(self._best) if self._best is not None else None,  # tensors shared
        }

    def load_state(self, state: dict[str, Any]) -> None:
        """Return to a state from `state()` or a checkpoint: the model is rebuilt from the stage.

        Rebuilding (rather than loading into the current model) also undoes a BN freeze made
        after the state was taken, so the graph matches the step as well as the weights.
        """
        if state.get("format") != CHECKPOINT_FORMAT:
            raise WorkbenchError(
                "The file is not a QAT checkpoint of this workbench version.",
                "Resume from a checkpoint written by this workbench's QAT runner.",
            )
        if state.get("version") != CHECKPOINT_VERSION:
            raise WorkbenchError(
                f"The QAT checkpoint is of version {state.get('version')}, written by an earlier "
                f"workbench (this one writes version {CHECKPOINT_VERSION}: QAT now starts from "
                "calibrated observers and keeps its best state).",
                "Train afresh: the new run overwrites the old checkpoint.",
            )
        if state["settings"] != _settings(self.config):
            raise WorkbenchError(
                f"The checkpoint was written with QAT settings {state['settings']}, "
                f"not {_settings(self.config)}.",
                "Resume with the same steps, batch size, learning rate, optimizer and seed.",
            )
        self._build()
        step = int(state["step"])
        if step > self.config.bn_freeze_at:
            freeze_bn_(self.model)
        # Per-channel observer and fake-quant buffers resize themselves while loading.
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if step > self.config.observer_freeze_at:
            self.model.apply(disable_observer)
        torch.set_rng_state(state["torch_rng"])
        random.setstate(_python_rng(state["python_rng"]))
        self.losses.copy_(state["losses"])
        self.history = copy.deepcopy(list(state["history"]))
        self.meta = dict(state.get("meta") or self.meta)
        self._best = dict(state["best"]) if state.get("best") is not None else None
        if self.recorder is not None and state["recorder"] is not None:
            self.recorder.restore(state["recorder"])
        for _ in range(step):  # the batch stream is a pure function of the seed and position
            next(self._batches)
        self.step_count = step

    # --- checkpoints -----------------------------------------------------------------------

    def checkpoint(self, path: str | Path) -> Path:
        """Save the current state to `path` atomically (a temporary file, then a rename)."""
        return self._write(self.state(), Path(path))

    @staticmethod
    def _write(state: dict[str, Any], path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=path.name + ".", dir=path.parent)
        try:
            with os.fdopen(handle, "wb") as stream:
                torch.save(state, stream)
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        return path

    @classmethod
    def resume(
        cls,
        path: str | Path,
        stage: Stage,
        data: Dataset,
        config: QatConfig,
        teacher: GraphModule | None = None,
        **options: Any,
    ) -> QatRun:
        """A run continuing from a checkpoint this runner wrote (see the module docstring).

        `stage`, `data`, `config` and `teacher` must be the ones the checkpointed run used;
        `options` are the constructor's keyword arguments (checkpoint_dir, eval_every, ...).
        """
        try:
            state = torch.load(Path(path), map_location="cpu", weights_only=True)
        except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as exc:
            raise WorkbenchError(
                f"The QAT checkpoint {path} cannot be read: {exc}",
                "Resume from a complete checkpoint written by this workbench's QAT runner.",
            ) from exc
        if not isinstance(state, dict):
            raise WorkbenchError(
                f"{path} is not a QAT checkpoint.",
                "Resume from a checkpoint written by this workbench's QAT runner.",
            )
        options.setdefault("checkpoint_dir", None)
        folder = options.pop("checkpoint_dir")
        run = cls(stage, data, config, teacher=teacher, **options)
        run.load_state(state)
        run.checkpoint_dir = Path(folder) if folder is not None else None
        run._good = run.state()
        return run

    @staticmethod
    def peek(path: str | Path) -> dict[str, Any] | None:
        """{"settings", "step", "meta"} of a checkpoint this runner wrote; None if unreadable
        or of another checkpoint version."""
        try:
            state = torch.load(Path(path), map_location="cpu", weights_only=True)
        except (OSError, RuntimeError, EOFError, pickle.UnpicklingError):
            return None
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            return None
        if state.get("version") != CHECKPOINT_VERSION:
            return None  # an earlier workbench's: resume() says why it cannot go on
        return {key: state.get(key) for key in ("settings", "step", "meta")}

    @staticmethod
    def config_of(settings: dict[str, Any]) -> QatConfig:
        """The QatConfig a checkpoint's settings were written with (freeze steps explicit)."""
        return QatConfig(
            steps=int(settings["steps"]), batch_size=int(settings["batch_size"]),
            lr=float(settings["lr"]), optimizer=str(settings["optimizer"]),
            freeze_bn_step=int(settings["bn_freeze_at"]),
            freeze_observer_step=int(settings["observer_freeze_at"]), seed=int(settings["seed"]),
            calibration_batches=int(settings["calibration_batches"]),
            spike_factor=float(settings["spike_factor"]),
        )  # fmt: skip

    # --- training --------------------------------------------------------------------------

    def step(self) -> dict[str, Any]:
        """Run one training step and return its record; raise TrainingError on a bad loss."""
        if self.done:
            raise ValueError(f"the run is complete ({self.config.steps} steps)")
        start = time.perf_counter()
        step = self.step_count + 1
        if step > self.config.bn_freeze_at:
            freeze_bn_(self.model)
        if step == self.config.observer_freeze_at + 1:
            self.model.apply(disable_observer)
        batch = next(self._batches)  # a data error here leaves the model untouched
        try:
            with EXPORT_LOCK:  # the whole step: results do not depend on other work (locks.py)
                loss = _loss(self.trainer, batch, self.data, self.teacher)
                value = self._loss_value(loss)
                spike = self._spike(step, value)
                if math.isfinite(value) and spike is None:
                    self.optimizer.zero_grad()
                    loss.backward()
                    self.optimizer.step()
        except BaseException:
            # A failure part-way (a user's loss, a shape error, an interrupt) must not leave
            # the model half-updated: back to the last good state, then report.
            self.load_state(self._good)
            raise
        if not math.isfinite(value) or spike is not None:
            good = int(self._good["step"])
            self.load_state(self._good)
            kept = (
                f" The checkpoint {self.checkpoint_path} (step {good}) is kept."
                if self.checkpoint_dir is not None
                else ""
            )
            what = f"became {value}" if spike is None else f"jumped to {value:.3g}{spike}"
            raise TrainingError(
                f"The training loss {what} at step {step}; the model was restored "
                f"to step {good}.{kept}",
                f"Lower the learning rate (now {self.config.lr:g}, e.g. to "
                f"{self.config.lr / 10:g}) or check the data for extreme values (training "
                f"batch {step} of batch size {self.config.batch_size}).",
            )
        if self.recorder is not None:
            self.recorder.record(step)
        self.losses[step - 1] = value
        self.step_count = step
        record: dict[str, Any] = {"stage": "train", "step": step, "loss": value}
        if (self.eval_every > 0 and step % self.eval_every == 0) or self.done:
            record["eval"] = self.evaluate()
        if step % self.checkpoint_every == 0 or self.done:
            self._good = self.state()
            if self.checkpoint_dir is not None:
                self._write(self._good, self.checkpoint_path)
        self.seconds += time.perf_counter() - start
        return record

    def _loss_value(self, loss: torch.Tensor) -> float:
        """The step's loss as recorded and checked (a distributed run: every rank's mean)."""
        return float(loss.item())

    def _spike(self, step: int, value: float) -> str | None:
        """Why a finite loss is a spike (text for the message), or None: a loss above
        `spike_factor` times the largest of the last SPIKE_WINDOW steps' losses, after
        SPIKE_WARMUP steps (a normal run's losses stay within a few times each other)."""
        if step <= SPIKE_WARMUP or not math.isfinite(value):
            return None
        recent = self.losses[max(0, step - 1 - SPIKE_WINDOW) : step - 1]
        recent = recent[torch.isfinite(recent)]
        if recent.numel() < SPIKE_WARMUP:
            return None
        largest = float(recent.max())
        if value <= self.config.spike_factor * max(largest, 1e-12):
            return None
        return (
            f", over {self.config.spike_factor:g} times the largest loss of the last "
            f"{recent.numel()} steps ({largest:.3g})"
        )

    def evaluate(self) -> dict[str, Any]:
        """Quality with fake quantization off and on, on copies; appended to `history`.

        An evaluation better than the best so far (fake-quant quality) keeps this state as
        the best."""
        model = copy.deepcopy(self.model)
        with EXPORT_LOCK:
            to_eval(model)
        model.apply(disable_observer)
        fake_quant = evaluate(model, self.data, teacher=self.teacher)
        model.apply(disable_fake_quant)
        latent = evaluate(model, self.data, teacher=self.teacher)
        record = {
            "stage": "eval",
            "step": self.step_count,
            "float": latent,
            "fake_quant": fake_quant,
            "quality": self.data.quality,
        }
        self.history.append(record)
        if self._best is None or _better(record, self._best):
            self._best = {"step": self.step_count, "fake_quant": fake_quant,
                          "quality": self.data.quality,
                          "model": _clone_state_dict(self.model.state_dict())}  # fmt: skip
        return record

    def run(
        self, *, progress: StepProgress | None = None, should_stop: StopRequested | None = None
    ) -> QatRun:
        """Step until the run is complete or `should_stop()` says so (checked before each step)."""
        self.stopped = False
        while not self.done:
            if should_stop is not None and should_stop():
                self.stopped = True
                break
            record = self.step()
            if progress is not None:
                progress(self.step_count, self.config.steps, record)
        return self

    def train_history(self) -> list[dict[str, Any]]:
        """Loss records of the steps run so far followed by the evaluations, step order."""
        steps = self.losses[: self.step_count].tolist()
        records = [{"stage": "train", "step": i + 1, "loss": v} for i, v in enumerate(steps)]
        return sorted(records + list(self.history), key=lambda r: r["step"])

    def stage(self, keep: str = "best") -> Stage:
        """The model trained so far as a "trained" stage (eval mode), ranges included: the
        best evaluated state (`keep="best"`, when there is one) or the last (`keep="last"`).

        The stage's history ends with a record {"stage": "kept", "step", "keep"} saying which
        state it holds (`qat_summary` reads it)."""
        if keep not in KEEP:
            raise ValueError(f"keep must be one of {KEEP}, not {keep!r}")
        kept = self.step_count
        if keep == "best" and self._best is not None and self._best["step"] != self.step_count:
            kept = int(self._best["step"])
            model = self._model_at(kept, self._best["model"])
        else:
            model = copy.deepcopy(self.model)
        with EXPORT_LOCK:
            to_eval(model)
        recorder = None
        if self.recorder is not None:
            recorder = RangeRecorder(model, self.recorder.capacity)
            recorder.restore(self.recorder.snapshot())
        total = self.config.steps
        notes = () if self.done else (f"training stopped after {self.step_count} of {total}",)
        if kept != self.step_count:
            notes += (f"kept the best evaluated state, step {kept} of {self.step_count}",)
        size = self.data.batch_text(self.config.batch_size)
        history = (*self.train_history(), {"stage": "kept", "step": kept, "keep": keep})
        return Stage(
            "trained", model, f"QAT: {self.step_count} steps {size} from {self.data.spec}",
            self.seconds, self.source.recipe, self.source.applied, notes, history, recorder,
        )  # fmt: skip

    def _model_at(self, step: int, state: dict[str, torch.Tensor]) -> GraphModule:
        """A new module from the stage holding `state`, the model state of `step`."""
        model = self.source.copy_module()
        with EXPORT_LOCK:
            to_train(model)
        if step > self.config.bn_freeze_at:
            freeze_bn_(model)
        model.load_state_dict(state)
        if step > self.config.observer_freeze_at:
            model.apply(disable_observer)
        return model


def train_qat(
    stage: Stage,
    data: Dataset,
    config: QatConfig,
    *,
    teacher: GraphModule | None = None,
    progress: StepProgress | None = None,
    should_stop: StopRequested | None = None,
    record_ranges: bool = False,
    keep: str = "best",
) -> Stage:
    """Train a copy of a QAT-prepared stage; BN statistics and observers freeze on schedule.

    `teacher` (the float model) supplies targets when the data has none. With
    `record_ranges`, every fake quantizer's scale, zero point and min/max after each step
    are kept in the returned stage's `ranges`. One uninterrupted `QatRun`, evaluating the
    start, every `config.eval_every` steps and the last step; the stage holds the best
    evaluated state, or the last with `keep="last"` (`qat_summary` of its history says which).
    """
    run = QatRun(stage, data, config, teacher=teacher, record_ranges=record_ranges)
    return run.run(progress=progress, should_stop=should_stop).stage(keep)


def qat_summary(history: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """Start, best and last evaluation of a QAT history (`QatRun.stage().history`), which
    state was kept, and whether the last is worse than the start; None without evaluations.

    Each of "start", "best", "last" is {"step", "fake_quant", "float"}; "kept" is
    {"step", "keep"} when the history says ("best" or "last"), "quality" the metric.
    """
    evals = [r for r in history if r.get("stage") == "eval"]
    if not evals:
        return None
    best = evals[0]
    for record in evals[1:]:
        if _better(record, best):
            best = record
    kept = next((r for r in reversed(history) if r.get("stage") == "kept"), None)

    def point(r: Mapping[str, Any]) -> dict[str, Any]:
        return {"step": int(r["step"]), "fake_quant": r["fake_quant"], "float": r["float"]}

    start = next((r for r in evals if r["step"] == 0), evals[0])
    return {
        "quality": evals[-1]["quality"],
        "start": point(start),
        "best": point(best),
        "last": point(evals[-1]),
        "kept": {"step": int(kept["step"]), "keep": kept["keep"]} if kept else None,
        "ended_worse": _better(start, evals[-1]),
    }


def qat_lines(summary: Mapping[str, Any]) -> list[str]:
    """What the CLI prints (and a page can show) of a `qat_summary`: start, best and last
    fake-quant quality and which was converted, then, when QAT ended worse than its start,
    a line beginning "warning: "."""
    unit = "" if summary["quality"] == "mse" else " %"
    start, best, last, kept = (summary[k] for k in ("start", "best", "last", "kept"))
    line = (
        f"QAT fake-quant {summary['quality']}: start (calibrated, step {start['step']}) "
        f"{start['fake_quant']:.2f}{unit}, best {best['fake_quant']:.2f}{unit} at step "
        f"{best['step']}, last {last['fake_quant']:.2f}{unit} at step {last['step']}"
    )
    if kept is not None:
        line += f"; converted the {kept['keep']} state (step {kept['step']})"
    lines = [line]
    if summary["ended_worse"]:
        best_kept = kept is not None and kept["keep"] == "best"
        then = "the best state was converted" if best_kept else "the last state was converted"
        lines.append(
            f"warning: QAT ended worse than its start: {last['fake_quant']:.2f}{unit} after "
            f"{last['step']} steps against {start['fake_quant']:.2f}{unit} calibrated; {then}."
        )
    return lines


def _better(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Whether evaluation `a` is strictly better than `b` (fake-quant; MSE: lower)."""
    if a["quality"] == "mse":
        return bool(a["fake_quant"] < b["fake_quant"])
    return bool(a["fake_quant"] > b["fake_quant"])


def freeze_bn_(model: GraphModule) -> None:
    """Use running BN statistics from now on (aten.batch_norm's `training` argument is 5)."""
    changed = False
    for node in model.graph.nodes:
        if node.target is torch.ops.aten.batch_norm.default and node.args[5] is not False:
            node.args = (*node.args[:5], False, *node.args[6:])
            changed = True
    if changed:
        model.recompile()


def _loss(
    model: GraphModule, batch: Batch, data: Dataset, teacher: GraphModule | None
) -> torch.Tensor:
    out = call(model, batch.inputs)
    reference = None
    if data.needs_teacher(batch):
        assert teacher is not None
        with torch.no_grad():
            reference = call(teacher, batch.inputs)
    return data.task.loss_value(out, batch.raw, batch.targets, reference)


def _settings(config: QatConfig) -> dict[str, Any]:
    return {
        "steps": config.steps,
        "batch_size": config.batch_size,
        "lr": config.lr,
        "optimizer": config.optimizer,
        "bn_freeze_at": config.bn_freeze_at,
        "observer_freeze_at": config.observer_freeze_at,
        "seed": config.seed,
        "calibration_batches": config.calibration_batches,
        "spike_factor": config.spike_factor,
    }


def _clone_state_dict(state: dict[str, torch.Tensor]) -> OrderedDict[str, torch.Tensor]:
    # Keep `_metadata`: without the module versions in it, torchao's observers treat the
    # state as version 1 and reset `eps` to float32 eps while loading (2**-12 here before).
    clone = OrderedDict((k, v.detach().clone()) for k, v in state.items())
    clone._metadata = copy.deepcopy(getattr(state, "_metadata", {}))  # type: ignore[attr-defined]
    return clone


def _python_rng(state: Any) -> tuple[Any, ...]:
    # torch.save keeps tuples, but be lenient with lists: random.setstate needs tuples.
    version, internal, gauss = state
    return (version, tuple(internal), gauss)
