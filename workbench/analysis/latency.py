"""int8 against float latency on this CPU, both lowered with `torch.compile(dynamic=False)`.

The converted (q/dq reference) graph runs int8 only once Inductor lowers it: with the x86
backend its dequantize -> op -> quantize patterns become oneDNN qconv/qlinear kernels; run
eagerly, it is float ops between quantize/dequantize calls. Both models compile with
Inductor's `freezing` (weights as constants, prepacked), as torchao's x86 flow prescribes:
without it the int8 digits CNN was 1.2x *slower* than float, with it 1.8-2.7x faster at
batch 512 over runs (benchmarks/). The eager reference is timed too, to show why lowering
matters. A symbolic batch fails in Inductor's int8 lowering, so each model is compiled for
the one batch size measured.

Compiling and timing hold the process-wide lock (locks.py): torch.compile is not
thread-safe, and other work on the CPU would skew the timings.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch._inductor.config  # torch.compile imports it lazily; freezing is set through it

from workbench.data.datasets import Dataset
from workbench.errors import WorkbenchError, first_line
from workbench.locks import EXPORT_LOCK
from workbench.model.signature import ModelInputs, max_leaf_diff
from workbench.stages.steps import call

__all__ = ["Latency", "LatencyStatus", "eval_batch", "measure_latency"]

# Told what the measurement is doing now, as a line of text ("timing int8…").
LatencyStatus = Callable[[str], None]


@dataclass(frozen=True)
class Latency:
    """Median milliseconds per batch, compiled and eager, and what compiling cost."""

    batch: int
    threads: int
    float_ms: float
    int8_ms: float
    float_eager_ms: float
    int8_eager_ms: float
    compile_seconds: float
    max_abs_diff: float  # compiled int8 against the eager int8 reference, same inputs
    backend: str

    @property
    def speedup(self) -> float:
        """Compiled float time over compiled int8 time (above 1: int8 is faster)."""
        return self.float_ms / self.int8_ms


def eval_batch(data: Dataset, size: int) -> ModelInputs:
    """`size` samples from the first evaluation batch, repeated to fill when it is smaller."""
    first = next(iter(data.eval_batches(size)), None)
    if first is None:
        raise WorkbenchError(f"The {data.spec} data has no evaluation batches.",
                             "Give data with an evaluation split.")  # fmt: skip
    return first.inputs.take(size)


def measure_latency(
    float_gm: torch.nn.Module,
    int8_gm: torch.nn.Module,
    inputs: ModelInputs,
    *,
    repeats: int = 20,
    warmup: int = 3,
    backend: str = "inductor",
    progress: LatencyStatus | None = None,
) -> Latency:
    """Compile both models for `inputs`' shapes and time them (median of `repeats` calls).

    `backend` is torch.compile's; "eager" skips code generation (for tests of the timing
    itself). Raises WorkbenchError when a model does not compile.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError("repeats must be at least 1 and warmup at least 0")

    def say(text: str) -> None:
        if progress is not None:
            progress(text)

    timings: dict[str, float] = {}
    with EXPORT_LOCK, torch.no_grad():
        compile_start = time.perf_counter()
        compiled = {}
        freezing = torch._inductor.config.patch(freezing=backend == "inductor")
        try:
            for name, model in (("float", float_gm), ("int8", int8_gm)):
                say(f"compiling the {name} model with torch.compile ({backend})…")
                compiled[name] = torch.compile(model, dynamic=False, backend=backend)
                with freezing:
                    inputs.call(compiled[name])  # compiles on the first call
        except Exception as exc:  # torch.compile raises many types (BackendCompilerFailed, ...)
            torch._dynamo.reset()
            raise WorkbenchError(
                f"torch.compile could not lower the model: {first_line(exc)}",
                "Inductor on CPU needs a C++ compiler (Debian: apt-get install g++); the "
                "exported .pt2 itself is unaffected.",
            ) from exc
        compile_seconds = time.perf_counter() - compile_start
        for name, model in (("float", compiled["float"]), ("int8", compiled["int8"]),
                            ("float_eager", float_gm), ("int8_eager", int8_gm)):  # fmt: skip
            say(f"timing {name.replace('_', ' ')}…")
            timings[name] = _median_ms(model, inputs, repeats, warmup)
        diff = max_leaf_diff(call(compiled["int8"], inputs), call(int8_gm, inputs))
        torch._dynamo.reset()
    return Latency(
        batch=inputs.batch_size or 1,
        threads=torch.get_num_threads(),
        float_ms=timings["float"],
        int8_ms=timings["int8"],
        float_eager_ms=timings["float_eager"],
        int8_eager_ms=timings["int8_eager"],
        compile_seconds=compile_seconds,
        max_abs_diff=float(diff),
        backend=backend,
    )


def _median_ms(
    model: Callable[..., object], inputs: ModelInputs, repeats: int, warmup: int
) -> float:
    for _ in range(warmup):
        inputs.call(model)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        inputs.call(model)
        times.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(times)
