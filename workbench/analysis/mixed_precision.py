"""Automatic mixed precision: the fewest per-node overrides that keep quality within budget.

Starting from a recipe whose default is the precision to beat (say int4 weights and
activations), `search_precision` finds node rules that raise a few nodes to higher
precision (int8, or float) until the converted model's quality is within `max_drop` of the
float model's, then gives back whatever it can:

1. **Measure.** Convert the start recipe (PTQ) and rank its quantized nodes by own SQNR
   (`workbench.analysis.sqnr.own_sqnr`: the error a node adds itself, not what reaches it).
   Then measure each node raised alone, worst own SQNR first: its quality gain over the
   start and the SQNR of the prediction against float, which breaks ties where a 360-sample
   accuracy moves in steps of 0.28 points.
2. **Raise.** Add the raises in order of measured gain, converting after each, until the
   budget holds; if raising every measured node to int8 is not enough, the same nodes go to
   float in the same order.
3. **Give back.** Drop each raise again, the last added first, where the budget still holds
   without it; then lower what is left one step (float to int8; int8 weights back to the
   start's weights, keeping int8 activations) where that costs nothing.
4. **Verify.** The chosen recipe is converted once more through `stages.build.quantize`,
   the path `python -m workbench quantize` takes, and that quality is the one reported.

Every recipe converted on the way is a `SearchPoint` (quality against size, or latency), so
the search can be drawn; the result is an ordinary recipe of node rules. Size is the packed
size of the converted graph's tensors: int4 weights at 4 bits, int8 at 8 and everything else
at its own width (a .pt2 stores int4 in int8 containers, so its file does not shrink).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch.fx import GraphModule

from workbench.analysis.latency import eval_batch, measure_latency
from workbench.analysis.sqnr import own_sqnr, per_node_sqnr, sqnr
from workbench.data.datasets import Dataset
from workbench.errors import WorkbenchError
from workbench.graph.nodes import call_arguments, get_attr_value, is_dequantize, is_get_attr
from workbench.graph.view import describe
from workbench.model.capture import CapturedModel
from workbench.quantization.editing import rule_setting, set_override
from workbench.quantization.quantizer import quantizable_nodes
from workbench.quantization.recipe import DTYPES, Effective, QuantSetting, Recipe
from workbench.stages.build import quantize
from workbench.stages.steps import (
    StepProgress,
    StopRequested,
    calibrate,
    convert,
    evaluate,
    prepare,
    run,
)

__all__ = [
    "OBJECTIVES",
    "Candidate",
    "Objective",
    "SearchError",
    "SearchPoint",
    "SearchResult",
    "packed_bytes",
    "search_precision",
]

Objective = Literal["size", "latency"]
OBJECTIVES: tuple[Objective, ...] = ("size", "latency")
SQNR_SAMPLES = 256  # evaluation samples the prediction's SQNR is measured on
# Precision rank of a dtype: a node is "raised" when its rule gives it a higher one.
_BITS = {"int4": 4, "int8": 8, "uint8": 8}


class SearchError(WorkbenchError):
    """A search that cannot start: a bad budget, nothing to raise, or an unknown objective."""


@dataclass(frozen=True)
class Candidate:
    """One node raised alone: the setting, the quality it gives and its gain over the start."""

    node: str
    change: str  # "int8", "int8 activations", "float"
    setting: QuantSetting
    quality: float
    gain: float  # quality points over the start, in the quality's own direction
    output_sqnr_db: float  # the prediction against float's
    own_sqnr_db: float  # the node's own SQNR in the start's converted model
    size_bytes: int


PointKind = Literal["reference", "candidate", "path", "chosen"]


@dataclass(frozen=True)
class SearchPoint:
    """A whole recipe converted and evaluated on the way."""

    label: str
    kind: PointKind  # reference: float/start/all-int8; candidate: one node raised alone
    recipe: Recipe = field(repr=False)
    quality: float
    size_bytes: int
    raised: int  # nodes the recipe raises above the start's default
    within_budget: bool
    output_sqnr_db: float = math.inf  # the prediction against float's (inf: it is float)
    latency_ms: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "kind": self.kind,
            "quality": self.quality,
            "size_bytes": self.size_bytes,
            "raised": self.raised,
            "within_budget": self.within_budget,
            "output_sqnr_db": _finite(self.output_sqnr_db),
            "latency_ms": self.latency_ms,
        }


@dataclass(frozen=True)
class SearchResult:
    """What the search chose, how it measured, and every recipe it converted."""

    start: Recipe
    chosen: Recipe
    metric: str
    objective: Objective
    max_drop: float
    float_quality: float
    start_quality: float
    chosen_quality: float  # verified by a full convert of `chosen`
    met: bool  # chosen_quality is within max_drop of float_quality
    quantized_nodes: tuple[str, ...]
    raised: tuple[str, ...]  # the nodes the chosen recipe raises, in the order chosen
    candidates: tuple[Candidate, ...]  # ranked best first
    points: tuple[SearchPoint, ...]
    sizes: dict[str, int]  # packed bytes: float, int8 (all-int8), start, chosen
    reasons: tuple[str, ...]  # what it chose and why, a line each
    stopped: bool = False

    def as_dict(self) -> dict[str, Any]:
        """The JSON form of the CLI's report."""
        return {
            "metric": self.metric,
            "objective": self.objective,
            "max_drop": self.max_drop,
            "float": self.float_quality,
            "start": self.start_quality,
            "chosen": self.chosen_quality,
            "met": self.met,
            "stopped": self.stopped,
            "quantized_nodes": len(self.quantized_nodes),
            "raised": list(self.raised),
            "sizes": self.sizes,
            "reasons": list(self.reasons),
            "candidates": [
                {
                    "node": c.node,
                    "change": c.change,
                    "quality": c.quality,
                    "gain": c.gain,
                    "output_sqnr_db": _finite(c.output_sqnr_db),
                    "own_sqnr_db": _finite(c.own_sqnr_db),
                    "size_bytes": c.size_bytes,
                }
                for c in self.candidates
            ],
            "points": [p.as_dict() for p in self.points],
            "recipe": self.chosen.as_dict(),
        }


def packed_bytes(converted_gm: GraphModule) -> int:
    """Bytes of the tensors the converted graph reads, int4-range weights at 4 bits each.

    An int8 tensor counts as int4 when it is the input of every dequantize that reads it and
    each has quant_max <= 7 (the quantizer keeps int4 in int8 storage, range -7..7); the
    scales and zero points beside it count at their own width.
    """
    total = 0.0
    for node in converted_gm.graph.nodes:
        if not is_get_attr(node):
            continue
        value = get_attr_value(converted_gm, node)
        if not isinstance(value, torch.Tensor):
            continue
        bits = value.element_size() * 8
        users = list(node.users)
        if (
            value.dtype == torch.int8
            and users
            and all(is_dequantize(u) and u.args[0] is node and _quant_max(u) <= 7 for u in users)
        ):
            bits = 4
        total += value.numel() * bits / 8
    return math.ceil(total)


def search_precision(
    captured: CapturedModel,
    start: Recipe,
    data: Dataset,
    *,
    max_drop: float,
    objective: Objective = "size",
    calibration_batches: int = 16,
    batch_size: int = 64,
    max_candidates: int = 32,
    latency_backend: str = "inductor",
    progress: StepProgress | None = None,
    should_stop: StopRequested | None = None,
) -> SearchResult:
    """Find node rules over `start` that keep quality within `max_drop` of float (PTQ).

    `max_drop` is in the quality's own units (accuracy/agreement points, or MSE). At most
    `max_candidates` nodes (worst own SQNR first) are measured alone. `progress(done, total,
    info)` follows the conversions (the total grows as the search goes); `should_stop()` ends
    the search with the best recipe found so far, still verified.
    """
    if not (isinstance(max_drop, (int, float)) and math.isfinite(max_drop) and max_drop >= 0):
        raise SearchError(f"The budget {max_drop!r} is not a drop in quality.",
                          "Give --max-drop as a number of points, e.g. 0.5.")  # fmt: skip
    if objective not in OBJECTIVES:
        raise SearchError(f"The objective {objective!r} is not known.",
                          f"Use one of: {', '.join(OBJECTIVES)}.")  # fmt: skip
    start = dataclasses.replace(start, mode="ptq")
    return _Search(captured, start, data, max_drop, objective, calibration_batches, batch_size,
                   max_candidates, latency_backend, progress, should_stop).run()  # fmt: skip


@dataclass
class _Search:
    captured: CapturedModel
    start: Recipe
    data: Dataset
    max_drop: float
    objective: Objective
    calibration_batches: int
    batch_size: int
    max_candidates: int
    latency_backend: str
    progress: StepProgress | None
    should_stop: StopRequested | None
    points: list[SearchPoint] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    done: int = 0
    planned: int = 0
    stopped: bool = False

    def run(self) -> SearchResult:
        gm = self.captured.graph_module()
        self.float_gm = gm
        view = describe(gm, stage="exported")
        self.view = view
        effective = {n: e for n, e in quantizable_nodes(gm, self.start, view).items()
                     if not e.setting.keep_float}  # fmt: skip
        if not effective:
            raise SearchError(
                "The starting recipe quantizes no node of this model.",
                "Start from a recipe that quantizes it (the default does).",
            )
        self.effective = effective
        self.sign = -1.0 if self.data.quality == "mse" else 1.0
        self.teacher = gm if self.data.needs_teacher() else None
        first = next(iter(self.data.eval_batches(SQNR_SAMPLES)))
        self.sqnr_inputs = first.inputs.take(min(first.size, SQNR_SAMPLES))
        self.float_prediction = run(gm, self.sqnr_inputs, self.data.task)
        self.latency_inputs = eval_batch(self.data, 32) if self.objective == "latency" else None
        self.planned = 3 + min(len(effective), self.max_candidates)

        self.float_quality = evaluate(gm, self.data, teacher=self.teacher)
        self.float_latency = self._latency(gm, gm) if self.objective == "latency" else None
        float_point = SearchPoint("float", "reference", self.start, self.float_quality,
                                  _float_bytes(gm), len(effective), True,
                                  latency_ms=self.float_latency)  # fmt: skip
        self.points.append(float_point)
        start_point, start_gm = self._measure(self.start, "start", "reference")
        int8 = self._all_int8()
        int8_point = start_point
        if int8 != self.start:
            int8_point, _ = self._measure(int8, "all int8", "reference")
        self.start_point = start_point
        if start_point.within_budget:
            self.reasons.append(
                f"The start already is within {self.max_drop:g} of float "
                f"({_q(start_point.quality)} against {_q(self.float_quality)}): no node "
                "needs a higher precision."
            )
            chosen = self.start
        else:
            candidates = self._candidates(start_gm, start_point)
            self.candidates = candidates
            chosen = self._raise(candidates) if not self._stop() else self.start
            chosen = self._give_back(chosen)
        self.candidates = getattr(self, "candidates", [])
        return self._verify(chosen, float_point, start_point, int8_point)

    # -- measuring ----------------------------------------------------------------------

    def _measure(
        self, recipe: Recipe, label: str, kind: PointKind
    ) -> tuple[SearchPoint, GraphModule]:
        prepared = prepare(self.captured, recipe)
        calibrated = calibrate(prepared, self.data, batches=self.calibration_batches,
                               batch_size=self.batch_size)  # fmt: skip
        converted = convert(calibrated).graph_module
        quality = evaluate(converted, self.data, teacher=self.teacher)
        latency = self._latency(self.float_gm, converted) if self.objective == "latency" else None
        out = sqnr(self.float_prediction, run(converted, self.sqnr_inputs, self.data.task))
        point = SearchPoint(label, kind, recipe, quality, packed_bytes(converted),
                            len(self._raised(recipe)), self._within(quality), out,
                            latency)  # fmt: skip
        self.points.append(point)
        self.done += 1
        if self.progress is not None:
            self.planned = max(self.planned, self.done + 1)
            self.progress(self.done, self.planned,
                          {"stage": "search", "label": label, "quality": quality})  # fmt: skip
        return point, converted

    def _latency(self, float_gm: GraphModule, converted: GraphModule) -> float:
        assert self.latency_inputs is not None
        timed = measure_latency(float_gm, converted, self.latency_inputs, repeats=10,
                                backend=self.latency_backend)  # fmt: skip
        return timed.int8_ms

    def _within(self, quality: float) -> bool:
        return self.sign * (self.float_quality - quality) <= self.max_drop + 1e-9

    def _gain(self, quality: float) -> float:
        return self.sign * (quality - self.start_point.quality)

    def _stop(self) -> bool:
        if self.should_stop is not None and self.should_stop():
            self.stopped = True
        return self.stopped

    # -- the raises -----------------------------------------------------------------------

    def _options(self, eff: Effective) -> list[tuple[str, QuantSetting]]:
        """The raises of one node, cheapest first."""
        setting = eff.setting
        has_weight = self.view[eff.node].family in ("conv", "linear")
        options: list[tuple[str, QuantSetting]] = []
        low_act = _bits(setting.activation_dtype) < 8
        low_weight = has_weight and _bits(setting.weight_dtype) < 8
        if low_act and low_weight:
            options.append(("int8 activations", QuantSetting(activation_dtype="int8")))
            options.append(("int8 weights", QuantSetting(weight_dtype="int8")))
        if low_act or low_weight:
            options.append(("int8", QuantSetting(
                activation_dtype="int8" if low_act else None,
                weight_dtype="int8" if low_weight else None,
            )))  # fmt: skip
        options.append(("float", QuantSetting(keep_float=True)))
        return options

    def _raised(self, recipe: Recipe) -> list[str]:
        """The quantized nodes whose node rule differs from the start's."""
        start = self.start
        return [n for n in self.effective
                if rule_setting(recipe, "node", n) != rule_setting(start, "node", n)]  # fmt: skip

    def _all_int8(self) -> Recipe:
        default = self.start.default
        if _bits(default.activation_dtype) >= 8 and _bits(default.weight_dtype) >= 8:
            return self.start
        changes = {k: "int8" for k in ("activation_dtype", "weight_dtype")
                   if _bits(getattr(default, k)) < 8}  # fmt: skip
        return dataclasses.replace(self.start, default=dataclasses.replace(default, **changes))

    def _raise_to(self, recipe: Recipe, node: str, change: str) -> Recipe:
        setting = dict(self._options(self.effective[node]))[change]
        return set_override(recipe, "node", node, setting)

    def _candidates(self, start_gm: GraphModule, start_point: SearchPoint) -> list[Candidate]:
        errors = per_node_sqnr(self.float_gm, start_gm, self.sqnr_inputs)
        own = own_sqnr(self.view, errors)
        order = sorted(self.effective, key=lambda n: (own.get(n, math.inf), n))
        measured = order[: self.max_candidates]
        if len(order) > len(measured):
            self.reasons.append(
                f"Measured the {len(measured)} nodes of lowest own SQNR alone, of "
                f"{len(order)} quantized (--max-candidates)."
            )
        self.planned = self.done + len(measured) + 2
        candidates: list[Candidate] = []
        for name in measured:
            if self._stop():
                break
            options = dict(self._options(self.effective[name]))
            change = "int8" if "int8" in options else "float"
            setting = options[change]
            recipe = set_override(self.start, "node", name, setting)
            point, _ = self._measure(recipe, f"{name} {change}", "candidate")
            candidates.append(Candidate(name, change, setting, point.quality,
                                        self._gain(point.quality), point.output_sqnr_db,
                                        own.get(name, math.inf), point.size_bytes))  # fmt: skip
        # The prediction's SQNR first: it moves smoothly where accuracy moves in steps.
        candidates.sort(key=lambda c: (-_nan_low(c.output_sqnr_db), -c.gain, c.own_sqnr_db))
        return candidates

    def _raise(self, candidates: Sequence[Candidate]) -> Recipe:
        """Raise the candidates in order, keeping each raise that helps, until within budget."""
        recipe, current = self.start, self.start_point
        for level in ("int8", "float"):
            for c in candidates:
                if self._stop():
                    return recipe
                options = dict(self._options(self.effective[c.node]))
                change = level if level in options else "float"
                if rule_setting(recipe, "node", c.node) == options[change]:
                    continue
                trial = self._raise_to(recipe, c.node, change)
                point, _ = self._measure(trial, f"+ {c.node} {change}", "path")
                if point.within_budget:
                    self.reasons.append(
                        f"Raised {point.raised} node(s), the prediction's SQNR when raised alone "
                        f"ranking them, until within budget: {_q(point.quality)} against float "
                        f"{_q(self.float_quality)}."
                    )
                    return trial
                if _better(point, current, self.sign):
                    recipe, current = trial, point
            if level == "int8":
                self.reasons.append(
                    f"int8 on the {len(candidates)} measured nodes is not enough "
                    f"({_q(current.quality)}): trying float on them, in the same order."
                )
        self.reasons.append(
            f"No recipe met the budget; the best one found ({_q(current.quality)}) is kept. "
            "Measure more nodes (--max-candidates) or allow a larger drop."
        )
        return recipe

    def _give_back(self, recipe: Recipe) -> Recipe:
        if not self._within_recipe(recipe):
            return recipe
        # Rounds of backward elimination: measure dropping each raise alone, then drop them
        # one by one, the least harmful first, keeping each drop that stays within budget.
        while not self._stop():
            trials: list[tuple[float, str]] = []
            for node in self._raised(recipe):
                if self._stop():
                    return recipe
                trial = set_override(recipe, "node", node, QuantSetting())
                point, _ = self._measure(trial, f"- {node}", "path")
                if point.within_budget and self._not_worse(point, recipe):
                    trials.append((self.sign * point.quality, node))
            if not trials:
                break
            trials.sort(key=lambda t: -t[0])
            for i, (_, node) in enumerate(trials):
                trial = set_override(recipe, "node", node, QuantSetting())
                if i > 0:  # the first was measured on this very recipe
                    if self._stop():
                        return recipe
                    point, _ = self._measure(trial, f"- {node}", "path")
                    if not (point.within_budget and self._not_worse(point, recipe)):
                        continue
                recipe = trial
                self.reasons.append(f"Dropped {node}: within budget without it.")
        recipe = self._consolidate(recipe)
        for node in self._raised(recipe):
            for change, trial in self._lower_steps(recipe, node):
                if self._stop():
                    return recipe
                point, _ = self._measure(trial, f"{node} to {change}", "path")
                if point.within_budget and self._not_worse(point, recipe):
                    recipe = trial
                    self.reasons.append(f"Lowered {node} to {change}: within budget so.")
                    break
        return recipe

    def _consolidate(self, recipe: Recipe) -> Recipe:
        """Fewer raises by keeping one float: for each raised node taken to float, try
        dropping each other raise (the first pair within budget is kept)."""
        raised = self._raised(recipe)
        for keep in raised:
            if self._stop() or rule_setting(recipe, "node", keep).keep_float:
                continue
            floated = set_override(recipe, "node", keep, QuantSetting(keep_float=True))
            for drop in raised:
                if drop == keep or self._stop():
                    continue
                trial = set_override(floated, "node", drop, QuantSetting())
                point, _ = self._measure(trial, f"{keep} float - {drop}", "path")
                if point.within_budget and self._not_worse(point, recipe):
                    self.reasons.append(
                        f"Kept {keep} float instead of raising {drop} too: one node fewer."
                    )
                    return self._consolidate(trial)
        return recipe

    def _within_recipe(self, recipe: Recipe) -> bool:
        return any(p.recipe == recipe and p.within_budget for p in self.points)

    def _not_worse(self, point: SearchPoint, than: Recipe) -> bool:
        """Under the latency objective a give-back must not be slower than what it replaces."""
        if self.objective != "latency":
            return True
        before = next((p for p in reversed(self.points) if p.recipe == than), None)
        return (
            before is None
            or before.latency_ms is None
            or (point.latency_ms is not None and point.latency_ms <= before.latency_ms * 1.05)
        )

    def _lower_steps(self, recipe: Recipe, node: str) -> list[tuple[str, Recipe]]:
        """The cheaper settings of a raised node than its rule, cheapest first."""
        options = self._options(self.effective[node])
        rule = rule_setting(recipe, "node", node)
        names = [c for c, s in options]
        current = next((c for c, s in options if s == rule), None)
        if current is None:
            return []
        return [(c, set_override(recipe, "node", node, s))
                for c, s in options[: names.index(current)]]  # fmt: skip

    # -- the result -----------------------------------------------------------------------

    def _verify(self, chosen: Recipe, float_point: SearchPoint, start_point: SearchPoint,
                int8_point: SearchPoint) -> SearchResult:  # fmt: skip
        stages = quantize(self.captured, chosen, self.data, batches=self.calibration_batches,
                          batch_size=self.batch_size)  # fmt: skip
        converted = stages.converted.graph_module
        quality = evaluate(converted, self.data, teacher=self.teacher)
        latency = self._latency(self.float_gm, converted) if self.objective == "latency" else None
        raised = self._raised(chosen)
        out = sqnr(self.float_prediction, run(converted, self.sqnr_inputs, self.data.task))
        point = SearchPoint("chosen", "chosen", chosen, quality, packed_bytes(converted),
                            len(raised), self._within(quality), out, latency)  # fmt: skip
        self.points.append(point)
        sizes = {"float": float_point.size_bytes, "int8": int8_point.size_bytes,
                 "start": start_point.size_bytes, "chosen": point.size_bytes}  # fmt: skip
        rules = ", ".join(
            f"{o.pattern} {_describe(o.setting)}" for o in chosen.overrides
            if o.kind == "node" and o.pattern in raised
        )  # fmt: skip
        self.reasons.append(
            f"Chose {len(raised)} of {len(self.effective)} quantized nodes at higher precision"
            f"{f' ({rules})' if rules else ''}: {_q(quality)} against float "
            f"{_q(self.float_quality)} (start {_q(start_point.quality)}), verified by a full "
            f"convert; {point.size_bytes:,} B packed against {int8_point.size_bytes:,} B "
            f"all-int8 and {float_point.size_bytes:,} B float."
        )
        return SearchResult(
            start=self.start, chosen=chosen, metric=self.data.quality, objective=self.objective,
            max_drop=self.max_drop, float_quality=self.float_quality,
            start_quality=start_point.quality, chosen_quality=quality,
            met=self._within(quality), quantized_nodes=tuple(self.effective),
            raised=tuple(raised), candidates=tuple(self.candidates), points=tuple(self.points),
            sizes=sizes, reasons=tuple(self.reasons), stopped=self.stopped,
        )  # fmt: skip


def _better(point: SearchPoint, than: SearchPoint, sign: float) -> bool:
    """Closer to float: a prediction SQNR higher by 0.1 dB, or as high with a better quality.

    The SQNR leads because it moves smoothly, where a small evaluation split's accuracy moves
    in whole samples either way."""
    gained = _nan_low(point.output_sqnr_db) - _nan_low(than.output_sqnr_db)
    if abs(gained) >= 0.1:
        return gained > 0
    return sign * point.quality > sign * than.quality


def _quant_max(node: Any) -> int:
    value = call_arguments(node).get("quant_max")
    return int(value) if isinstance(value, int) else 127


def _bits(dtype: str | None) -> int:
    return _BITS.get(dtype or "int8", 8)


def _float_bytes(gm: GraphModule) -> int:
    return sum(t.numel() * t.element_size() for t in gm.state_dict().values())


def _describe(setting: QuantSetting) -> str:
    if setting.keep_float:
        return "float"
    parts = [f"{k.split('_')[0]} {v}" for k, v in setting.fields_set().items() if v in DTYPES]
    return "int8" if len(parts) == 2 else ", ".join(parts)


def _q(quality: float) -> str:
    return f"{quality:.2f}"


def _nan_low(db: float) -> float:
    return -math.inf if math.isnan(db) else db


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None
