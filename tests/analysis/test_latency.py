"""int8 against float latency, both compiled: the measurement and its failure message.

No real model's timing is asserted (benchmarks/ prints the ratios); these tests check what is
measured, and that the speed-up follows models whose latency is known because they wait.
"""

from __future__ import annotations

import shutil
import time
from typing import Any

import pytest
import torch

from workbench.analysis.latency import Latency, eval_batch, measure_latency
from workbench.data.datasets import Dataset
from workbench.errors import WorkbenchError
from workbench.model.signature import ModelInputs


@pytest.fixture(scope="module")
def models(digits_ptq: dict[str, Any], digits_data: Dataset) -> dict[str, Any]:
    inputs = next(iter(digits_data.eval_batches(64))).inputs
    return {"float": digits_ptq["exported"].graph_module,
            "int8": digits_ptq["converted"].graph_module, "inputs": inputs}  # fmt: skip


def test_the_eager_backend_measures_the_models_as_they_are(models: dict[str, Any]) -> None:
    seen: list[str] = []
    latency = measure_latency(models["float"], models["int8"], models["inputs"], repeats=3,
                              warmup=1, backend="eager", progress=seen.append)  # fmt: skip
    assert isinstance(latency, Latency)
    assert latency.batch == 64 and latency.backend == "eager"
    assert latency.threads == torch.get_num_threads()
    assert min(latency.float_ms, latency.int8_ms, latency.float_eager_ms,
               latency.int8_eager_ms) > 0  # fmt: skip
    assert latency.max_abs_diff == 0.0  # "compiled" eagerly: the reference itself
    assert seen == [
        "compiling the float model with torch.compile (eager)…",
        "compiling the int8 model with torch.compile (eager)…",
        "timing float…", "timing int8…", "timing float eager…", "timing int8 eager…",
    ]  # fmt: skip


@torch.compiler.disable  # the wait runs as it is, also inside a compiled model
def _wait(seconds: float) -> None:
    time.sleep(seconds)


class Paced(torch.nn.Module):
    """Doubles its input after waiting `seconds` per call: a model of known latency."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _wait(self.seconds)
        return x * 2


def test_the_speedup_is_above_1_exactly_when_int8_is_the_faster_model() -> None:
    inputs = ModelInputs((torch.ones(4, 3),))
    slow, fast = Paced(0.02), Paced(0.0)
    int8_faster = measure_latency(slow, fast, inputs, repeats=3, warmup=0, backend="eager")
    int8_slower = measure_latency(fast, slow, inputs, repeats=3, warmup=0, backend="eager")
    assert int8_faster.float_ms >= 20 > int8_faster.int8_ms
    assert int8_faster.float_eager_ms >= 20 > int8_faster.int8_eager_ms
    assert int8_faster.speedup > 1 > int8_slower.speedup
    # The ratio the Export page shows ("int8 speed-up", float over int8): at least 20 ms over
    # the fast model's few, against its inverse when the roles swap.
    assert int8_faster.speedup > 4 and int8_slower.speedup < 1 / 4
    assert int8_faster.max_abs_diff == 0.0


def test_a_model_that_does_not_compile_gets_a_plain_message(models: dict[str, Any]) -> None:
    with pytest.raises(WorkbenchError) as info:
        measure_latency(models["float"], models["int8"], models["inputs"], backend="no-such")
    assert info.value.problem.startswith("torch.compile could not lower the model:")
    assert "C++ compiler" in info.value.fix
    with pytest.raises(ValueError):
        measure_latency(models["float"], models["int8"], models["inputs"], repeats=0)


@pytest.mark.skipif(shutil.which("g++") is None, reason="Inductor on CPU needs g++")
def test_inductor_lowers_the_int8_graph_and_keeps_its_predictions(
    models: dict[str, Any],
) -> None:
    latency = measure_latency(models["float"], models["int8"], models["inputs"], repeats=3,
                              warmup=1)  # fmt: skip
    assert latency.backend == "inductor" and latency.compile_seconds > 0
    # int8 kernels round differently from the q/dq reference (so they ran), but not by much:
    # the logits span about 20.
    assert 0 < latency.max_abs_diff < 0.5


def test_eval_batch_takes_the_first_samples_and_repeats_a_small_split(
    digits_data: Dataset,
) -> None:
    (x,) = eval_batch(digits_data, 64).tensors()
    assert torch.equal(x, digits_data.eval_inputs.args[0][:64])
    (x,) = eval_batch(digits_data, 500).tensors()  # 360 evaluation images: 360 then the first 140
    assert x.shape[0] == 500
    assert torch.equal(x[:360], digits_data.eval_inputs.args[0])
    assert torch.equal(x[360:], digits_data.eval_inputs.args[0][:140])
