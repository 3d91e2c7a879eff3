"""What a stage is: one immutable snapshot of the model (`Stage`), and the four snapshots of one
conversion, exported -> prepared -> calibrated | trained -> converted (`Stages`), with the q/dq
form beside a converted stage in the reference representation.

The CLI's build, the app and the benchmarks all assemble their stages as a `Stages`, and ask it
which float graph the int8 one is judged against (`Stages.float_reference`).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch.fx import GraphModule

from workbench.graph.view import GraphView, describe
from workbench.quantization.recipe import Effective, Recipe
from workbench.stages.ranges import RangeRecorder

__all__ = ["QDQ_STAGE", "STAGE_NAMES", "TUNED_NAMES", "Stage", "Stages", "trained_float"]

TUNED_NAMES = ("calibrated", "trained")  # the tuned stage after PTQ, after QAT
# The q/dq form beside a converted stage in the reference representation, for comparison.
QDQ_STAGE = "converted (q/dq)"
STAGE_NAMES = ("exported", "prepared", *TUNED_NAMES, QDQ_STAGE, "converted")


@dataclass(frozen=True)
class Stage:
    """One snapshot of the model: treat `graph_module` as read-only, copy before changing it."""

    name: str
    graph_module: GraphModule
    created_by: str
    seconds: float
    recipe: Recipe | None = None
    applied: dict[str, Effective] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    history: tuple[dict[str, Any], ...] = ()
    ranges: RangeRecorder | None = None

    def view(self) -> GraphView:
        return describe(self.graph_module, stage=self.name)

    def copy_module(self) -> GraphModule:
        return copy.deepcopy(self.graph_module)


@dataclass(frozen=True)
class Stages(Mapping[str, Stage]):
    """The stages of one conversion, in flow order; also a read-only mapping by stage name
    ("exported", "prepared", "calibrated" or "trained", "converted")."""

    exported: Stage
    prepared: Stage
    tuned: Stage  # "calibrated" (PTQ) or "trained" (QAT)
    converted: Stage
    # With the reference representation: the same tuned stage converted to q/dq pairs.
    qdq: Stage | None = None

    def __post_init__(self) -> None:
        wanted = {"exported": ("exported",), "prepared": ("prepared",), "tuned": TUNED_NAMES,
                  "converted": ("converted",), "qdq": (QDQ_STAGE,)}  # fmt: skip
        for slot, names in wanted.items():
            stage = getattr(self, slot)
            if stage is not None and stage.name not in names:
                raise ValueError(
                    f"Stages.{slot} is a stage named {stage.name!r}; it must be named "
                    f"{' or '.join(map(repr, names))}."
                )

    @property
    def trained(self) -> bool:
        """Whether the tuned stage was trained (QAT) rather than calibrated (PTQ)."""
        return self.tuned.name == "trained"

    def float_reference(self) -> GraphModule:
        """The float graph the int8 one is judged against: after QAT the exported graph
        carrying the trained weights (`trained_float`, a new module), after PTQ the exported
        graph itself."""
        if self.trained:
            return trained_float(self.exported, self.tuned)
        return self.exported.graph_module

    def as_dict(self) -> dict[str, Stage]:
        """Stage name -> stage, in flow order (the q/dq form, when there is one, just before
        the converted stage in the reference representation)."""
        return {stage.name: stage for stage in (self.exported, self.prepared, self.tuned,
                                                self.qdq, self.converted)
                if stage is not None}  # fmt: skip

    def __getitem__(self, name: str) -> Stage:
        return self.as_dict()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.as_dict())

    def __len__(self) -> int:
        return len(self.as_dict())


def trained_float(exported: Stage, trained: Stage) -> GraphModule:
    """The float graph carrying a QAT-trained stage's weights and BatchNorm statistics.

    QAT moves the float weights; comparing the int8 model with this float model measures the
    quantization error alone, without the training drift. Parameters and buffers are matched
    by name and shape (the prepared graph keeps the exported module paths); anything else,
    such as a BN's num_batches_tracked, keeps the exported value.
    """
    model = exported.copy_module()
    own = model.state_dict()
    shared = {
        name: value
        for name, value in trained.graph_module.state_dict().items()
        if name in own and own[name].shape == value.shape
    }
    model.load_state_dict(shared, strict=False)
    return model
