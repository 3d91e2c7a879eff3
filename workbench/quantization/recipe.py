"""The user's quantization choices: a backend, a mode, defaults and per-node overrides.

A recipe is a versioned JSON document. Overrides match a node by its name in the exported
graph, by module path (exact, dotted prefix or glob) or by op (op name such as `conv2d`, or
op family such as `conv`). Precedence, highest first: node > module > op > default; within
one level, the later override wins. Each field of a setting is resolved on its own, so a
module rule can set the observer while an op rule sets the weight dtype.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from workbench.data.task import Task
from workbench.errors import WorkbenchError
from workbench.graph.view import FAMILIES, GraphView, NodeInfo

__all__ = [
    "BACKENDS",
    "DTYPES",
    "GRANULARITIES",
    "LEVELS",
    "MATCH_KINDS",
    "MODES",
    "OBSERVERS",
    "SCHEMA_VERSION",
    "SCHEMES",
    "TASK_FIELDS",
    "Effective",
    "MatchKind",
    "Override",
    "QuantSetting",
    "Recipe",
    "RecipeError",
    "annotation_status",
    "check_output",
    "effective_settings",
    "module_matches",
    "resolve",
    "validate",
]

SCHEMA_VERSION = 1
BACKENDS = ("x86_inductor", "xnnpack")
MODES = ("ptq", "qat")
DTYPES = ("int8", "uint8", "int4")
GRANULARITIES = ("per_tensor", "per_channel")
SCHEMES = ("symmetric", "affine")
OBSERVERS = ("minmax", "moving_average", "histogram")
MATCH_KINDS = ("node", "module", "op")
TASK_FIELDS = ("output", "loss", "metric")
LEVELS = ("default", "op", "module", "node")  # lowest to highest precedence

MatchKind = Literal["node", "module", "op"]


class RecipeError(WorkbenchError):
    """A recipe that cannot be read or does not fit the model."""


def _check_choice(where: str, value: Any, allowed: Iterable[str]) -> None:
    allowed = tuple(allowed)
    if value is not None and value not in allowed:
        raise RecipeError(
            f"{where} is {value!r}, which is not a known value.",
            f"Use one of: {', '.join(allowed)}.",
        )


def _check_known(subject: str, data: Mapping[str, Any], known: Iterable[str]) -> None:
    """Raise RecipeError naming the fields of `data` that are not `known`, and those that are."""
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise RecipeError(
            f"{subject} has unknown field(s): {', '.join(unknown)}.",
            f"Known fields: {', '.join(sorted(known))}.",
        )


@dataclass(frozen=True)
class QuantSetting:
    """How one node is quantized; a field left as None is inherited from a lower level."""

    keep_float: bool | None = None
    weight_dtype: str | None = None
    activation_dtype: str | None = None
    weight_granularity: str | None = None
    weight_scheme: str | None = None
    activation_scheme: str | None = None
    observer: str | None = None

    def __post_init__(self) -> None:
        if self.keep_float is not None and not isinstance(self.keep_float, bool):
            raise RecipeError(
                f"keep_float is {self.keep_float!r}.", "Use true or false (JSON booleans)."
            )
        _check_choice("weight_dtype", self.weight_dtype, DTYPES)
        _check_choice("activation_dtype", self.activation_dtype, DTYPES)
        _check_choice("weight_granularity", self.weight_granularity, GRANULARITIES)
        _check_choice("weight_scheme", self.weight_scheme, SCHEMES)
        _check_choice("activation_scheme", self.activation_scheme, SCHEMES)
        _check_choice("observer", self.observer, OBSERVERS)

    def fields_set(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, data: Any, where: str) -> QuantSetting:
        if not isinstance(data, Mapping):
            raise RecipeError(f"{where} is not an object.", 'Write it as {"field": value, ...}.')
        _check_known(where, data, [f.name for f in dataclasses.fields(cls)])
        return cls(**data)


@dataclass(frozen=True)
class Override:
    """One rule: what it matches (`kind` and `pattern`) and the setting it applies."""

    kind: MatchKind
    pattern: str
    setting: QuantSetting

    def __post_init__(self) -> None:
        _check_choice("override match kind", self.kind, MATCH_KINDS)
        if not isinstance(self.pattern, str) or not self.pattern:
            raise RecipeError(
                f"An override matches {self.kind} {self.pattern!r}.", "Give a non-empty name."
            )

    @property
    def label(self) -> str:
        return f"{self.kind}:{self.pattern}"

    def matches(self, node: NodeInfo) -> bool:
        if self.kind == "node":
            return node.name == self.pattern
        if self.kind == "op":
            return self.pattern in (node.op_name, node.family)
        return any(module_matches(self.pattern, path) for path in node.module_chain)

    def as_dict(self) -> dict[str, Any]:
        return {"match": {self.kind: self.pattern}, "set": self.setting.fields_set()}


def module_matches(pattern: str, path: str) -> bool:
    """`block1` matches `block1` and `block1.conv`; globs (`block*.conv?`) match whole paths."""
    if any(ch in pattern for ch in "*?["):
        return fnmatch.fnmatchcase(path, pattern)
    return path == pattern or path.startswith(pattern + ".")


@dataclass(frozen=True)
class Recipe:
    """The whole quantization plan, as saved to and read from JSON."""

    backend: str = "x86_inductor"
    mode: str = "ptq"
    default: QuantSetting = field(default_factory=QuantSetting)
    overrides: tuple[Override, ...] = ()
    # The task (workbench.data.task): which output leaf is the prediction, and the user's loss
    # and metric functions (path/to/file.py:FUNC); None: the defaults.
    output: str | None = None
    loss: str | None = None
    metric: str | None = None
    # convert_pt2e(use_reference_representation=True): integer arithmetic written out in aten
    # ops instead of q/dq pairs around float ops (torchao rewrites int8-activation patterns).
    reference_representation: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.reference_representation, bool):
            raise RecipeError(
                f"reference_representation is {self.reference_representation!r}.",
                "Use true or false (JSON booleans).",
            )
        for name, allowed in (("backend", BACKENDS), ("mode", MODES)):
            value = getattr(self, name)
            if value is None:
                raise RecipeError(f"{name} is null.", f"Use one of: {', '.join(allowed)}.")
            _check_choice(name, value, allowed)
        for name in TASK_FIELDS:
            value = getattr(self, name)
            if value is not None and not (isinstance(value, str) and value.strip()):
                raise RecipeError(
                    f"{name} is {value!r}.",
                    "Give a string (output: a leaf name such as logits, or an index; loss and "
                    "metric: path/to/file.py:FUNC), or leave it out.",
                )
        object.__setattr__(self, "overrides", tuple(self.overrides))

    def task(self) -> Task:
        """The prediction leaf, loss and metric this recipe names (imports the user's files)."""
        return Task.load(self.output, self.loss, self.metric)

    def with_overrides(self, *more: Override) -> Recipe:
        return dataclasses.replace(self, overrides=self.overrides + more)

    def as_dict(self) -> dict[str, Any]:
        return {
            "version": SCHEMA_VERSION,
            "backend": self.backend,
            "mode": self.mode,
            "default": self.default.fields_set(),
            "overrides": [o.as_dict() for o in self.overrides],
            **{name: getattr(self, name) for name in TASK_FIELDS if getattr(self, name)},
            **({"reference_representation": True} if self.reference_representation else {}),
        }

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=2) + "\n"

    def tuning_key(self) -> str:
        """What calibration and training depend on: the recipe but for the form convert
        writes (`reference_representation`), so switching the form needs no new tuning."""
        return dataclasses.replace(self, reference_representation=False).to_json()

    @classmethod
    def from_dict(cls, data: Any) -> Recipe:
        if not isinstance(data, Mapping):
            raise RecipeError("The recipe is not a JSON object.", "Start it with {.")
        _check_known("The recipe", data, ["version", "backend", "mode", "default", "overrides",
                                          "reference_representation", *TASK_FIELDS])  # fmt: skip
        version = data.get("version", SCHEMA_VERSION)
        if type(version) is not int or version != SCHEMA_VERSION:
            raise RecipeError(
                f"The recipe has schema version {version!r}; this workbench reads version "
                f"{SCHEMA_VERSION}.",
                f'Set "version": {SCHEMA_VERSION} and check the fields against the README.',
            )
        overrides = data.get("overrides", [])
        if not isinstance(overrides, list):
            raise RecipeError("overrides is not a list.", "Write it as [ {...}, {...} ].")
        return cls(
            backend=data.get("backend", "x86_inductor"),
            mode=data.get("mode", "ptq"),
            default=QuantSetting.from_dict(data.get("default", {}), "default"),
            overrides=tuple(_override_from_dict(o, i) for i, o in enumerate(overrides)),
            **{name: data[name] for name in TASK_FIELDS if data.get(name) is not None},
            reference_representation=data.get("reference_representation", False),
        )

    @classmethod
    def from_json(cls, text: str, *, source: str = "the recipe") -> Recipe:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise RecipeError(
                f"{source} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}.",
                "Fix the JSON syntax (a missing comma or quote is the usual cause).",
            ) from exc
        return cls.from_dict(data)


def _override_from_dict(data: Any, index: int) -> Override:
    where = f"overrides[{index}]"
    if not isinstance(data, Mapping) or set(data) - {"match", "set"} or "match" not in data:
        raise RecipeError(
            f'{where} is not of the form {{"match": {{...}}, "set": {{...}}}}.',
            'Write it as {"match": {"node": "conv2d_1"}, "set": {"keep_float": true}}.',
        )
    match = data["match"]
    if not (isinstance(match, Mapping) and len(match) == 1):
        raise RecipeError(
            f"{where}.match must name exactly one of: {', '.join(MATCH_KINDS)}.",
            'Write it as {"node": NAME}, {"module": PATH_OR_GLOB} or {"op": OP_OR_FAMILY}.',
        )
    ((kind, pattern),) = match.items()
    _check_choice(f"{where}.match", kind, MATCH_KINDS)
    return Override(kind, pattern, QuantSetting.from_dict(data.get("set", {}), f"{where}.set"))


@dataclass(frozen=True)
class Effective:
    """A node's resolved setting, which rule decided it and where each field came from."""

    node: str
    setting: QuantSetting
    rule: str  # "default", or the label of the highest-precedence matching override
    level: str  # one of LEVELS
    sources: Mapping[str, str]  # field -> "default" or an override label


def annotation_status(eff: Effective | None) -> str:
    """float, default, override or not quantized: how a node's setting was decided (None: the
    node has no setting, it is not quantized)."""
    if eff is None:
        return "not quantized"
    if eff.setting.keep_float:
        return "float"
    return "default" if eff.rule == "default" else "override"


def resolve(recipe: Recipe, node: NodeInfo) -> Effective:
    """The effective setting of one node under `recipe`."""
    values = recipe.default.fields_set()
    sources = dict.fromkeys(values, "default")
    rule, level = "default", "default"
    for lvl in LEVELS[1:]:
        for override in recipe.overrides:
            if override.kind != lvl or not override.matches(node):
                continue
            for key, value in override.setting.fields_set().items():
                values[key] = value
                sources[key] = override.label
            rule, level = override.label, lvl
    return Effective(node.name, QuantSetting(**values), rule, level, sources)


def effective_settings(
    recipe: Recipe, view: GraphView, nodes: Iterable[str] | None = None
) -> dict[str, Effective]:
    """Effective settings of `nodes` (default: every op node) in graph order."""
    wanted = set(nodes) if nodes is not None else None
    return {
        n.name: resolve(recipe, n)
        for n in view.nodes
        if n.op == "call_function" and (wanted is None or n.name in wanted)
    }


def validate(recipe: Recipe, view: GraphView) -> None:
    """Raise RecipeError naming every override that matches nothing, with the closest names."""
    problems: list[str] = []
    node_names = [n.name for n in view.nodes if n.op == "call_function"]
    module_paths = [m.path for m in view.modules.walk() if m.path]
    ops = sorted({n.op_name for n in view.nodes if n.op == "call_function"})
    families = sorted({n.family for n in view.nodes if n.op == "call_function"})
    for override in recipe.overrides:
        if any(override.matches(n) for n in view.nodes if n.op == "call_function"):
            continue
        if override.kind == "node":
            candidates = node_names
        elif override.kind == "module":
            candidates = module_paths
        else:
            candidates = ops + [f for f in families if f not in ops]
        close = difflib.get_close_matches(override.pattern, candidates, n=3, cutoff=0.4)
        hint = f"closest: {', '.join(close)}" if close else f"e.g. {', '.join(candidates[:3])}"
        problems.append(f"{override.kind} '{override.pattern}' ({hint})")
    if problems:
        raise RecipeError(
            "The recipe names what this model does not have: " + "; ".join(problems) + ".",
            "Use node names, module paths and ops from `python -m workbench inspect` "
            f"(op families: {', '.join(f for f in FAMILIES if f not in ('input', 'output'))}).",
        )


def check_output(recipe: Recipe, outputs: Sequence[str]) -> None:
    """Raise RecipeError unless the recipe's `output` names one of the model's output leaves
    (by label or index); `outputs` as CapturedModel.outputs lists them."""
    chosen = recipe.output
    if chosen is None or not outputs:
        return
    text = chosen.strip()
    if text.lstrip("-").isdigit() and -len(outputs) <= int(text) < len(outputs):
        return
    if text in outputs or text in (f"['{o}']" for o in outputs):
        return
    raise RecipeError(
        f"The recipe's output '{chosen}' is not an output of this model.",
        f"Name one of its outputs ({', '.join(outputs)}) or give its index "
        f"(0 to {len(outputs) - 1}).",
    )
