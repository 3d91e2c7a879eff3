"""Streaming calibration: gigabytes of batches from a generator, with flat memory.

`python -m benchmarks.streaming --gib 4` captures `strided_net` (this file as a model
factory), prepares it for PTQ, and calibrates it with `workbench.stages.steps.calibrate` on the
StreamDataset that `load_data("benchmarks/streaming.py:batches")` makes: a generator
function drawing (16, 3, 512, 512) float32 batches (48 MiB each) on the fly until the total
reaches the size asked for. `workbench.stages.steps.call`, through which calibration runs every
batch, is wrapped to count the input bytes that really reach the model.

Memory is read from /proc/self/status: VmRSS before the data is loaded, then the peak
(VmHWM, reset to the current RSS through /proc/self/clear_refs where the kernel allows it)
after calibration. Then the same number of batches runs through a copy of the prepared
module in a bare loop (no workbench data layer) as the time baseline. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

SHAPE = (16, 3, 512, 512)
BATCH_BYTES = 4 * SHAPE[0] * SHAPE[1] * SHAPE[2] * SHAPE[3]
HERE = Path(__file__).resolve()
BATCHES_ENV = "WORKBENCH_BENCH_STREAM_BATCHES"


class StridedNet(nn.Module):
    """A cheap conv net for large images: a 16x16 stride-16 patch conv first (512 -> 32)."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, 8, kernel_size=16, stride=16)
        self.relu1 = nn.ReLU()
        self.conv = nn.Conv2d(8, 16, kernel_size=3, stride=2, padding=1)
        self.relu2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu2(self.conv(self.relu1(self.patch(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


def strided_net() -> tuple[nn.Module, tuple[torch.Tensor]]:
    torch.manual_seed(0)
    return StridedNet().eval(), (torch.rand(2, *SHAPE[1:]),)


def batches(split: str) -> Iterator[tuple[torch.Tensor, None]]:
    """(inputs, None) batches drawn on the fly; the count comes from the environment."""
    count = int(os.environ.get(BATCHES_ENV, "4")) if split == "train" else 1
    generator = torch.Generator().manual_seed(0 if split == "train" else 1)
    for _ in range(count):
        yield torch.rand(SHAPE, generator=generator), None


def _status(field: str) -> int:
    """A /proc/self/status field in bytes."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gib", type=float, default=4.0, help="GiB of input tensors to stream")
    args = parser.parse_args()
    count = -(-int(args.gib * 2**30) // BATCH_BYTES)
    os.environ[BATCHES_ENV] = str(count)

    import workbench.stages.steps as steps
    from workbench.data.datasets import load_data
    from workbench.model.capture import capture
    from workbench.quantization.recipe import Recipe
    from workbench.stages.steps import calibrate, prepare

    root = HERE.parent.parent
    os.chdir(root)
    relative = HERE.relative_to(root)
    captured = capture(f"{relative}:strided_net")
    stage = prepare(captured, Recipe(mode="ptq"))
    seen = {"bytes": 0, "batches": 0}
    call = steps.call

    def counted_call(model: nn.Module, inputs: Any) -> Any:
        seen["bytes"] += sum(t.numel() * t.element_size() for t in inputs.tensors())
        seen["batches"] += 1
        return call(model, inputs)

    steps.call = counted_call  # calibrate looks it up in its module at every batch
    rss_before = _status("VmRSS")
    peak_reset = _reset_peak()
    hwm_before = _status("VmHWM")
    start = time.perf_counter()
    data = load_data(f"{relative}:batches", captured.signature)
    calibrated = calibrate(stage, data, batches=count)
    seconds = time.perf_counter() - start
    hwm_after, rss_after = _status("VmHWM"), _status("VmRSS")
    steps.call = call
    assert not calibrated.notes, calibrated.notes
    assert seen["batches"] == count, seen
    streamed = dict(seen)

    # The baseline: the same batches through a copy of the prepared module, bare.
    from torchao.quantization.pt2e import move_exported_model_to_eval

    model = stage.copy_module()
    move_exported_model_to_eval(model)
    start = time.perf_counter()
    with torch.no_grad():
        for x, _ in batches("train"):
            model(x)
    bare_seconds = time.perf_counter() - start
    print(
        json.dumps(
            {
                "batch_shape": list(SHAPE),
                "batch_bytes": BATCH_BYTES,
                "batches": count,
                "streamed_bytes": streamed["bytes"],
                "forward_calls": streamed["batches"],
                "seconds": round(seconds, 3),
                "bare_seconds": round(bare_seconds, 3),
                "rss_before": rss_before,
                "hwm_before": hwm_before,
                "peak_reset": peak_reset,
                "hwm_after": hwm_after,
                "rss_after": rss_after,
                "peak_growth": hwm_after - (rss_before if peak_reset else hwm_before),
                "created_by": calibrated.created_by,
            }
        )
    )


if __name__ == "__main__":
    main()
