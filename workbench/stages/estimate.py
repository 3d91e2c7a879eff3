"""How long the long steps will take for a loaded model, and defaults that keep them short.

Everything starts from timed forward passes of the exported model when it loads
(`Costs.measure`: four at the example batch, four at a larger one, about 2 s at most). The per-node
constants were measured on the 2-core CI machine: observers and fake quantizers cost about a
millisecond or two per quantized node and call whatever the batch, which dominates small
models; the forward pass dominates large ones. `Estimates` corrects each kind of job by how
long the last one of that kind really took against what was predicted.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

from workbench.locks import EXPORT_LOCK
from workbench.model.signature import ModelInputs

__all__ = [
    "BATCH_SECONDS",
    "CALIBRATION_SECONDS",
    "DEFAULT_BATCH",
    "DEFAULT_BATCHES",
    "EVALUATION_SECONDS",
    "MIN_EVAL_SAMPLES",
    "Costs",
    "Defaults",
    "Estimates",
    "about",
    "choose_defaults",
]

CALIBRATION_SECONDS = 15.0  # default calibration aims at this long (10-20 s)
EVALUATION_SECONDS = 8.0  # default evaluation size: float + int8 passes about this long
BATCH_SECONDS = 1.5  # no default batch takes longer than this in calibration
DEFAULT_BATCH = 64
DEFAULT_BATCHES = 16
MIN_EVAL_SAMPLES = 16  # fewer says little; a slow model then takes long, and says so

# Seconds per graph node (prepare, observer call, convert...) and factors on the float forward.
_PREPARE = (0.3, 0.004)  # fixed, per node
_OBSERVER_PER_NODE = 0.002  # per node and calibration batch
_OBSERVED_FORWARD = 1.5  # a forward with observers against the float forward
_QAT_PER_NODE = 0.004  # per node and training step (fake quantizers, forward and backward)
_QAT_FORWARD = 4.0  # forward + backward with fake quantizers against the float forward
_INT8_REFERENCE = 3.0  # the q/dq reference model's forward against the float forward
_CONVERT = (0.5, 0.01, 1e-6)  # fixed, per node, per parameter
_EXPORT = (1.0, 0.01, 5e-7)  # re-export, save, reload: fixed, per node, per parameter
_COMPILE = (5.0, 0.05)  # torch.compile of both models for latency: fixed, per node
_LOWER = (2.5, 0.05)  # one ExecuTorch lowering with XNNPACK: fixed, per node (digits: 2.7 s)


@dataclass(frozen=True)
class Costs:
    """A model's measured forward cost (`fixed + per_sample * batch` seconds) and size."""

    fixed: float
    per_sample: float
    nodes: int
    parameters: int
    example_batch: int

    @classmethod
    def measure(
        cls, model: torch.nn.Module, inputs: ModelInputs, *, nodes: int, dynamic_batch: bool
    ) -> Costs:
        """Time forward passes at the example batch and, with a dynamic batch, at a larger
        one (up to the default batch of 64, within about half a second a call), and fit
        seconds = fixed + per_sample * batch. Each time is the fastest of three calls, so
        a busy machine's pauses do not count as the model's cost."""
        batch = inputs.batch_size or 1
        parameters = sum(p.numel() for p in model.parameters())
        small = _timed(model, inputs)
        if not dynamic_batch or small > 0.25:
            return cls(0.0, small / batch, nodes, parameters, batch)
        factor = max(2, min(DEFAULT_BATCH // batch, math.floor(0.5 / max(small, 1e-6))))
        large = _timed(model, inputs.batched(lambda t: t.repeat(factor, *[1] * (t.dim() - 1))))
        per_sample = max(0.0, (large - small) / ((factor - 1) * batch))
        fixed = max(0.0, small - per_sample * batch)
        return cls(fixed, per_sample, nodes, parameters, batch)

    def forward(self, batch: int) -> float:
        return self.fixed + self.per_sample * batch

    def calibrate(self, batches: int, batch_size: int) -> float:
        """prepare_pt2e and `batches` observed batches."""
        per_batch = _OBSERVED_FORWARD * self.forward(batch_size) + _OBSERVER_PER_NODE * self.nodes
        return self.prepare() + batches * per_batch

    def prepare(self) -> float:
        return _PREPARE[0] + _PREPARE[1] * self.nodes

    def train(self, steps: int, batch_size: int, *, teacher: bool = True) -> float:
        """`steps` QAT steps (with a float teacher's forward when it distils)."""
        step = _QAT_FORWARD * self.forward(batch_size) + _QAT_PER_NODE * self.nodes
        return steps * (step + (self.forward(batch_size) if teacher else 0.0))

    def evaluate(self, samples: int, *, int8: bool = True) -> float:
        """One evaluation pass of the float model, and of the int8 reference model."""
        passes = 1.0 + (_INT8_REFERENCE if int8 else 0.0)
        return passes * self.forward(samples)

    def convert(self, eval_samples: int) -> float:
        """convert_pt2e, then int8 against float: both evaluations and per-node SQNR."""
        fixed, node, param = _CONVERT
        convert = fixed + node * self.nodes + param * self.parameters
        per_node = 2 * self.forward(min(eval_samples, 64)) + 0.005 * self.nodes
        return convert + self.evaluate(eval_samples) + per_node

    def export(self, check_samples: int) -> float:
        """Re-export, save, reload and compare on the check batches."""
        fixed, node, param = _EXPORT
        check = 2 * _INT8_REFERENCE * self.forward(check_samples)
        return fixed + node * self.nodes + param * self.parameters + check

    def pte(self, check_samples: int) -> float:
        """Lower the int8 and the float model with XNNPACK and run both on the check batches
        (and the .pt2 export when none is built yet: `export`)."""
        fixed, node = _LOWER
        return 2 * (fixed + node * self.nodes) + 2 * _INT8_REFERENCE * self.forward(check_samples)

    def latency(self, batch: int) -> float:
        """Compile both models and time 20 calls of each."""
        fixed, node = _COMPILE
        return fixed + node * self.nodes + 40 * self.forward(batch) * 2

    def sensitivity(self, nodes: int, batches: int, batch_size: int, eval_samples: int) -> float:
        """One PTQ calibration, convert and evaluation per node tried."""
        one = self.calibrate(batches, batch_size) + self.convert(eval_samples)
        return nodes * one


@dataclass(frozen=True)
class Defaults:
    """Run settings chosen for a model so that calibration takes about 10-20 s here."""

    batch_size: int
    calibration_batches: int
    eval_samples: int | None  # None: the whole evaluation split

    def describe(self, costs: Costs) -> str:
        forward = costs.forward(self.batch_size)
        return (f"a forward pass at batch {self.batch_size} took {_ms(forward)} when the model "
                f"loaded")  # fmt: skip


def choose_defaults(
    costs: Costs, *, train_size: int | None = None, eval_size: int | None = None
) -> Defaults:
    """Batch size, calibration batches and evaluation samples that fit the model."""
    batch = DEFAULT_BATCH if train_size is None else max(1, min(DEFAULT_BATCH, train_size))

    def per_batch(size: int) -> float:
        return costs.calibrate(1, size) - costs.prepare()

    while batch > 1 and per_batch(batch) > BATCH_SECONDS:
        batch //= 2
    budget = CALIBRATION_SECONDS - costs.prepare()
    batches = max(1, min(DEFAULT_BATCHES, math.floor(budget / max(per_batch(batch), 1e-9))))
    per_eval = costs.evaluate(1) - costs.fixed * (1 + _INT8_REFERENCE)
    fits = EVALUATION_SECONDS / max(per_eval, 1e-9)
    samples: int | None = None
    if eval_size is None or fits < eval_size:
        samples = max(MIN_EVAL_SAMPLES, int(fits) // MIN_EVAL_SAMPLES * MIN_EVAL_SAMPLES)
        if eval_size is not None and samples >= eval_size:
            samples = None
    return Defaults(batch, batches, samples)


@dataclass
class Estimates:
    """Predictions corrected by experience: each kind of job scaled by how long the last
    one of its kind really took against what was predicted for it."""

    costs: Costs
    _scale: dict[str, float] = field(default_factory=dict)

    def seconds(self, kind: str, predicted: float) -> float:
        return predicted * self._scale.get(kind, 1.0)

    def learn(self, kind: str, predicted: float, took: float) -> None:
        """Record that a job predicted at `predicted` s (before scaling) took `took` s."""
        if predicted > 0 and took > 0:
            self._scale[kind] = min(100.0, max(0.01, took / predicted))


def about(seconds: float | None) -> str:
    """ "about 40 s", "about 3 min": an estimate as people say it."""
    if seconds is None or not math.isfinite(seconds):
        return ""
    if seconds < 1.5:
        return "about 1 s"
    if seconds < 90:
        return f"about {seconds:.0f} s"
    if seconds < 5400:
        return f"about {seconds / 60:.0f} min"
    return f"about {seconds / 3600:.1f} h"


def _timed(model: torch.nn.Module, inputs: ModelInputs) -> float:
    """The fastest of three forward passes after one warm-up, under the process lock."""
    times = []
    with torch.no_grad(), EXPORT_LOCK:
        inputs.call(model)
        for _ in range(3):
            start = time.perf_counter()
            inputs.call(model)
            times.append(time.perf_counter() - start)
    return min(times)


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.1f} s"
