"""Recording what the fake quantizers learn during QAT, step by step, into preallocated tensors.

Each step copies every fake-quant's scale, zero point and observer min/max into one slot of
tensors allocated up front: building Python dicts of every quantizer's values at each step
would cost more than a QAT step of a small model. A PTQ-prepared graph has bare observers
instead of fake quantizers: they are recorded the same way, batch by batch during
calibration, with min and max only (an observer has no scale until convert computes it;
those fields stay NaN).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch.fx import GraphModule

__all__ = ["FIELDS", "FakeQuantInfo", "RangeRecorder", "fake_quantizers"]

FIELDS = ("scale", "zero_point", "min", "max")


@dataclass(frozen=True)
class FakeQuantInfo:
    """One fake quantizer of a prepared graph: its module name, what it reads and its size."""

    name: str
    input_node: str  # the graph node whose output it observes
    channels: int  # 1 for per-tensor
    ch_axis: int | None


def fake_quantizers(model: GraphModule) -> list[FakeQuantInfo]:
    """The fake-quant modules of a QAT-prepared graph, or the observers of a PTQ-prepared
    one, in graph order."""
    found = []
    for node in model.graph.nodes:
        if node.op != "call_module":
            continue
        module = model.get_submodule(str(node.target))
        fake_quant = hasattr(module, "scale") and hasattr(module, "activation_post_process")
        if fake_quant:
            per_channel = bool(getattr(module, "is_per_channel", False))
        elif hasattr(module, "min_val") and hasattr(module, "max_val"):  # an observer
            # Per-channel observers start with empty 1-d buffers, per-tensor ones with scalars.
            per_channel = module.min_val.dim() == 1 and hasattr(module, "ch_axis")
        else:
            continue
        source = node.args[0] if node.args else None
        channels = 1
        if per_channel:
            # scale is resized only on the first forward; the observed tensor knows its size.
            val = source.meta.get("val") if isinstance(source, torch.fx.Node) else None
            axis = module.ch_axis
            buffer = module.scale if fake_quant else module.min_val
            channels = int(val.shape[axis]) if val is not None else int(buffer.numel())
        source = source.name if isinstance(source, torch.fx.Node) else ""
        found.append(
            FakeQuantInfo(
                str(node.target), source, channels, module.ch_axis if per_channel else None
            )
        )
    return found


class RangeRecorder:
    """Scale, zero point, min and max of every fake quantizer at each recorded step.

    `values[name]` is a (steps, channels, 4) float view in FIELDS order; `steps[i]` is the
    training step recorded in slot i. All quantizers share one preallocated buffer, so a
    step's record is a single `torch.cat` into its row.
    """

    def __init__(self, model: GraphModule, capacity: int) -> None:
        self.quantizers = fake_quantizers(model)
        self.capacity = capacity
        self.count = 0
        self.steps = torch.full((capacity,), -1, dtype=torch.long)
        width = sum(4 * q.channels for q in self.quantizers)
        self._buffer = torch.full((capacity, width), float("nan"))
        self.values: dict[str, torch.Tensor] = {}
        offset = 0
        for q in self.quantizers:
            block = self._buffer[:, offset : offset + 4 * q.channels]
            self.values[q.name] = block.unflatten(1, (4, q.channels)).transpose(1, 2)
            offset += 4 * q.channels
        self._modules = [model.get_submodule(q.name) for q in self.quantizers]
        self._ready: list[torch.Tensor] | None = None

    def _sources(self) -> list[torch.Tensor]:
        # The buffers are updated in place, so once every one has its final size the list of
        # flat views stays valid and is built only once.
        if self._ready is not None:
            return self._ready
        sources = []
        complete = True
        for q, module in zip(self.quantizers, self._modules, strict=True):
            observer = getattr(module, "activation_post_process", module)
            unknown = torch.full((q.channels,), float("nan"))  # an observer's scale, zero point
            scale = getattr(module, "scale", unknown)
            zero_point = getattr(module, "zero_point", unknown)
            for tensor in (scale, zero_point, observer.min_val, observer.max_val):
                flat = tensor.reshape(-1)
                if flat.numel() == q.channels and flat.data_ptr() == tensor.data_ptr():
                    sources.append(flat)
                    continue
                # Before the first forward, per-channel buffers are still empty.
                complete = False
                sources.append(flat.new_full(
                    (q.channels,), float("nan") if flat.is_floating_point() else 0))  # fmt: skip
        if complete:
            self._ready = sources
        return sources

    def record(self, step: int) -> None:
        """Copy the current state of every fake quantizer into the next slot."""
        if self.count >= self.capacity:
            raise IndexError(f"recorder is full ({self.capacity} steps)")
        with torch.no_grad():
            torch.cat(self._sources(), out=self._buffer[self.count])
        self.steps[self.count] = step
        self.count += 1

    def snapshot(self) -> dict[str, Any]:
        """A copy of everything recorded so far (plain tensors and an int, for checkpoints)."""
        return {"buffer": self._buffer.clone(), "steps": self.steps.clone(), "count": self.count}

    def restore(self, snapshot: dict[str, Any]) -> None:
        """Go back to a `snapshot` of this recorder or of one over the same quantizers."""
        self._buffer.copy_(snapshot["buffer"])
        self.steps.copy_(snapshot["steps"])
        self.count = int(snapshot["count"])

    def series(self, name: str, field: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(steps, values[steps, channels]) of one field of one fake quantizer so far."""
        column = FIELDS.index(field)
        return self.steps[: self.count], self.values[name][: self.count, :, column]
