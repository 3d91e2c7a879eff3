"""Recipes: JSON round trip, rule precedence on the digits CNN, and bad input explained."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workbench.graph.view import GraphView
from workbench.quantization.recipe import (
    BACKENDS,
    DTYPES,
    GRANULARITIES,
    MATCH_KINDS,
    MODES,
    OBSERVERS,
    SCHEMES,
    Override,
    QuantSetting,
    Recipe,
    RecipeError,
    annotation_status,
    effective_settings,
    resolve,
    validate,
)

CONVS = ["conv2d", "conv2d_1", "conv2d_2", "conv2d_3"]
BLOCK1 = ["conv2d_1", "batch_norm_1", "relu_1", "conv2d_2", "batch_norm_2", "add", "relu_2"]
BLOCK2 = ["conv2d_3", "batch_norm_3", "relu_3"]
OPS = [  # every call_function of the exported digits CNN, in graph order
    "conv2d", "batch_norm", "relu", *BLOCK1, "max_pool2d", *BLOCK2, "adaptive_avg_pool2d",
    "flatten", "linear",
]  # fmt: skip


def rule(kind: str, pattern: str, **fields: object) -> Override:
    return Override(kind, pattern, QuantSetting(**fields))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def view(views: dict[str, GraphView]) -> GraphView:
    return views["digits_cnn"]


# ---------------------------------------------------------------- JSON round trip


def _maybe(values: tuple[str, ...]) -> st.SearchStrategy[str | None]:
    return st.none() | st.sampled_from(values)


settings_strategy = st.builds(
    QuantSetting,
    keep_float=st.none() | st.booleans(),
    weight_dtype=_maybe(DTYPES),
    activation_dtype=_maybe(DTYPES),
    weight_granularity=_maybe(GRANULARITIES),
    weight_scheme=_maybe(SCHEMES),
    activation_scheme=_maybe(SCHEMES),
    observer=_maybe(OBSERVERS),
)
pattern_strategy = st.one_of(
    st.text(min_size=1, max_size=12),  # any text: JSON must carry it exactly (quotes, unicode)
    st.sampled_from(["conv2d_1", "block1", "block*.conv?", "block[12]", "conv", "linear"]),
)
override_strategy = st.builds(
    Override, kind=st.sampled_from(MATCH_KINDS), pattern=pattern_strategy, setting=settings_strategy
)
recipe_strategy = st.builds(
    Recipe,
    backend=st.sampled_from(BACKENDS),
    mode=st.sampled_from(MODES),
    default=settings_strategy,
    overrides=st.lists(override_strategy, max_size=6).map(tuple),
)


@settings(max_examples=300, deadline=None)
@given(recipe_strategy)
def test_json_round_trip(recipe: Recipe) -> None:
    text = recipe.to_json()
    back = Recipe.from_json(text)
    assert back == recipe
    assert back.as_dict() == recipe.as_dict() == json.loads(text)
    assert back.to_json() == text  # stable: a second round trip writes the same bytes
    assert Recipe.from_dict(recipe.as_dict()) == recipe
    document = recipe.as_dict()
    assert document["version"] == 1
    assert set(document) == {"version", "backend", "mode", "default", "overrides"}
    # Only the fields a setting sets are written; None means "inherit".
    assert document["default"] == {k: v for k, v in vars(recipe.default).items() if v is not None}
    assert [o["match"] for o in document["overrides"]] == [
        {o.kind: o.pattern} for o in recipe.overrides
    ]


def test_json_shape_of_a_known_recipe() -> None:
    recipe = Recipe(
        backend="xnnpack",
        mode="qat",
        default=QuantSetting(observer="minmax"),
        overrides=(
            rule("node", "conv2d_1", keep_float=True),
            rule("op", "conv", weight_dtype="int4"),
        ),
    )
    assert json.loads(recipe.to_json()) == {
        "version": 1,
        "backend": "xnnpack",
        "mode": "qat",
        "default": {"observer": "minmax"},
        "overrides": [
            {"match": {"node": "conv2d_1"}, "set": {"keep_float": True}},
            {"match": {"op": "conv"}, "set": {"weight_dtype": "int4"}},
        ],
    }
    # Missing fields take their defaults; "set" may be left out.
    assert Recipe.from_json('{"overrides": [{"match": {"module": "fc"}}]}') == Recipe(
        overrides=(Override("module", "fc", QuantSetting()),)
    )


# ---------------------------------------------------------------- resolution and precedence


def _rules(recipe: Recipe, view: GraphView) -> dict[str, str]:
    return {name: eff.rule for name, eff in effective_settings(recipe, view).items()}


def _matched(recipe: Recipe, view: GraphView) -> list[str]:
    return [name for name, label in _rules(recipe, view).items() if label != "default"]


def test_default_only(view: GraphView) -> None:
    recipe = Recipe(default=QuantSetting(weight_dtype="int8", observer="minmax"))
    effective = effective_settings(recipe, view)
    assert list(effective) == OPS  # every op node, in graph order; no params or placeholders
    for name, eff in effective.items():
        assert (eff.node, eff.rule, eff.level) == (name, "default", "default")
        assert eff.setting == QuantSetting(weight_dtype="int8", observer="minmax")
        assert dict(eff.sources) == {"weight_dtype": "default", "observer": "default"}
    empty = resolve(Recipe(), view["linear"])
    assert (empty.setting, empty.rule, empty.level, dict(empty.sources)) == (
        QuantSetting(), "default", "default", {},
    )  # fmt: skip
    assert list(effective_settings(recipe, view, ["linear", "conv2d", "nope"])) == [
        "conv2d",
        "linear",
    ]


@pytest.mark.parametrize(
    ("kind", "pattern", "expected"),
    [
        ("op", "conv2d", CONVS),  # op name
        ("op", "conv", CONVS),  # op family
        ("op", "pool", ["max_pool2d", "adaptive_avg_pool2d"]),
        ("op", "norm", ["batch_norm", "batch_norm_1", "batch_norm_2", "batch_norm_3"]),
        ("module", "block1", BLOCK1),  # exact path and dotted prefix (block1.conv1, ...)
        ("module", "block1.conv1", ["conv2d_1"]),
        ("module", "block1.bn2", ["batch_norm_2"]),
        ("module", "block*", BLOCK1 + BLOCK2),  # glob
        ("module", "block?.conv*", ["conv2d_1", "conv2d_2", "conv2d_3"]),
        ("module", "stem.*", ["conv2d", "batch_norm", "relu"]),
        ("module", "block", []),  # not a dotted prefix of block1
        ("node", "relu_2", ["relu_2"]),
    ],
)
def test_rule_matches(view: GraphView, kind: str, pattern: str, expected: list[str]) -> None:
    recipe = Recipe(overrides=(rule(kind, pattern, weight_dtype="int4"),))
    rules = _rules(recipe, view)
    assert _matched(recipe, view) == expected
    for name in expected:
        eff = resolve(recipe, view[name])
        assert (eff.rule, eff.level) == (f"{kind}:{pattern}", kind)
        assert eff.setting == QuantSetting(weight_dtype="int4")
        assert dict(eff.sources) == {"weight_dtype": f"{kind}:{pattern}"}
    assert set(rules.values()) <= {"default", f"{kind}:{pattern}"}


def test_node_beats_module_beats_op_beats_default(view: GraphView) -> None:
    layers = [
        ("default", None, "int8"),
        ("op", rule("op", "conv", weight_dtype="uint8"), "uint8"),
        ("module", rule("module", "block1", weight_dtype="int4"), "int4"),
        ("node", rule("node", "conv2d_1", weight_dtype="int8"), "int8"),
    ]
    default = QuantSetting(weight_dtype="int8")
    overrides: tuple[Override, ...] = ()
    for level, override, value in layers:
        if override is not None:
            # Highest level first in the list: precedence is by level, not by position.
            overrides = (override, *overrides)
        eff = resolve(Recipe(default=default, overrides=overrides), view["conv2d_1"])
        label = "default" if override is None else override.label
        assert (eff.level, eff.rule, eff.setting.weight_dtype) == (level, label, value)
        assert dict(eff.sources) == {"weight_dtype": label}
    # The same recipe, for the other nodes: each gets the highest level that matches it.
    recipe = Recipe(default=default, overrides=overrides)
    got = {
        n: (e.level, e.setting.weight_dtype) for n, e in effective_settings(recipe, view).items()
    }
    assert got["conv2d_1"] == ("node", "int8")
    assert got["conv2d_2"] == ("module", "int4")
    assert got["add"] == ("module", "int4")
    assert got["conv2d"] == got["conv2d_3"] == ("op", "uint8")
    assert got["linear"] == got["batch_norm"] == ("default", "int8")


def test_each_field_resolved_on_its_own(view: GraphView) -> None:
    recipe = Recipe(
        default=QuantSetting(observer="minmax", activation_scheme="affine"),
        overrides=(
            rule("node", "conv2d_1", activation_dtype="int8"),
            rule("module", "block1", weight_granularity="per_tensor", observer="histogram"),
            rule("op", "conv", weight_dtype="int4", weight_granularity="per_channel"),
        ),
    )
    eff = resolve(recipe, view["conv2d_1"])
    assert (eff.rule, eff.level) == ("node:conv2d_1", "node")
    assert eff.setting == QuantSetting(
        weight_dtype="int4",
        activation_dtype="int8",
        weight_granularity="per_tensor",
        activation_scheme="affine",
        observer="histogram",
    )
    assert dict(eff.sources) == {
        "observer": "module:block1",
        "activation_scheme": "default",
        "weight_dtype": "op:conv",
        "weight_granularity": "module:block1",
        "activation_dtype": "node:conv2d_1",
    }
    eff = resolve(recipe, view["conv2d_2"])
    assert (eff.rule, eff.level) == ("module:block1", "module")
    assert dict(eff.sources) == {
        "observer": "module:block1",
        "activation_scheme": "default",
        "weight_dtype": "op:conv",
        "weight_granularity": "module:block1",
    }
    eff = resolve(recipe, view["conv2d_3"])
    assert (eff.rule, eff.level) == ("op:conv", "op")
    assert eff.setting.weight_granularity == "per_channel"
    assert dict(eff.sources) == {
        "observer": "default",
        "activation_scheme": "default",
        "weight_dtype": "op:conv",
        "weight_granularity": "op:conv",
    }


def test_later_override_wins_within_a_level(view: GraphView) -> None:
    first = rule("op", "conv2d", weight_dtype="int4", observer="minmax")
    second = rule("op", "conv", weight_dtype="uint8")
    eff = resolve(Recipe(overrides=(first, second)), view["conv2d"])
    assert (eff.rule, eff.level) == ("op:conv", "op")
    assert (eff.setting.weight_dtype, eff.setting.observer) == ("uint8", "minmax")
    assert dict(eff.sources) == {"weight_dtype": "op:conv", "observer": "op:conv2d"}
    eff = resolve(Recipe(overrides=(second, first)), view["conv2d"])
    assert (eff.rule, eff.setting.weight_dtype) == ("op:conv2d", "int4")
    assert dict(eff.sources) == {"weight_dtype": "op:conv2d", "observer": "op:conv2d"}
    # Two module rules: an exact path after a glob.
    glob, exact = (
        rule("module", "block*", keep_float=True),
        rule("module", "block2", keep_float=False),
    )
    eff = resolve(Recipe(overrides=(glob, exact)), view["relu_3"])
    assert (eff.rule, eff.setting.keep_float) == ("module:block2", False)
    eff = resolve(Recipe(overrides=(exact, glob)), view["relu_3"])
    assert (eff.rule, eff.setting.keep_float) == ("module:block*", True)


README_RECIPE = """{
  "version": 1,
  "backend": "x86_inductor",
  "mode": "qat",
  "default": {"observer": "moving_average"},
  "overrides": [
    {"match": {"op": "linear"},          "set": {"weight_granularity": "per_tensor"}},
    {"match": {"module": "block1"},      "set": {"activation_dtype": "int8",
                                                 "activation_scheme": "symmetric"}},
    {"match": {"module": "block*.conv?"},"set": {"observer": "histogram"}},
    {"match": {"node": "conv2d_1"},      "set": {"weight_dtype": "int4"}},
    {"match": {"node": "linear"},        "set": {"keep_float": true}}
  ]
}"""  # the README's example (one line wrapped)


def test_readme_example_on_digits(view: GraphView) -> None:
    recipe = Recipe.from_json(README_RECIPE)
    validate(recipe, view)
    effective = effective_settings(recipe, view)
    assert {n: e.rule for n, e in effective.items() if e.rule != "default"} == {
        "conv2d_1": "node:conv2d_1",
        "batch_norm_1": "module:block1",
        "relu_1": "module:block1",
        "conv2d_2": "module:block*.conv?",  # the later of two module rules
        "batch_norm_2": "module:block1",
        "add": "module:block1",
        "relu_2": "module:block1",
        "linear": "node:linear",
    }
    conv = effective["conv2d_1"]
    assert conv.setting == QuantSetting(
        weight_dtype="int4", activation_dtype="int8", activation_scheme="symmetric",
        observer="histogram",
    )  # fmt: skip
    assert dict(conv.sources) == {
        "observer": "module:block*.conv?",
        "activation_dtype": "module:block1",
        "activation_scheme": "module:block1",
        "weight_dtype": "node:conv2d_1",
    }
    linear = effective["linear"]
    assert linear.setting == QuantSetting(
        keep_float=True, weight_granularity="per_tensor", observer="moving_average"
    )
    assert dict(linear.sources) == {
        "observer": "default",
        "weight_granularity": "op:linear",
        "keep_float": "node:linear",
    }
    assert effective["conv2d_3"].setting == QuantSetting(observer="moving_average")


def test_validate_accepts_a_rule_exactly_when_it_matches_a_node(view: GraphView) -> None:
    accepted = [
        (rule("node", "conv2d_1", keep_float=True), ["conv2d_1"]),
        (rule("module", "block1.conv1", weight_dtype="int4"), ["conv2d_1"]),
        (rule("module", "block?", observer="minmax"), BLOCK1 + BLOCK2),
        (rule("op", "conv", weight_granularity="per_tensor"), CONVS),
        (rule("op", "adaptive_avg_pool2d", activation_dtype="int8"), ["adaptive_avg_pool2d"]),
    ]
    validate(Recipe(overrides=tuple(o for o, _ in accepted)), view)  # raises nothing
    for override, nodes in accepted:
        assert _matched(Recipe(overrides=(override,)), view) == nodes
        # The same rule matching nothing is refused, and it alone is named.
        stray = Override(override.kind, override.pattern + "_x", override.setting)
        with pytest.raises(RecipeError) as err:
            validate(Recipe(overrides=(override, stray)), view)
        assert err.value.problem.startswith(
            "The recipe names what this model does not have: "
            f"{override.kind} '{override.pattern}_x' ("
        )
        assert ";" not in err.value.problem


def test_annotation_status_says_how_a_setting_was_decided(view: GraphView) -> None:
    recipe = Recipe(
        overrides=(
            rule("node", "linear", keep_float=True),
            rule("module", "block1", observer="minmax"),
        )
    )
    status = {n: annotation_status(e) for n, e in effective_settings(recipe, view).items()}
    assert status["linear"] == "float"
    assert [n for n, s in status.items() if s == "override"] == BLOCK1
    assert {s for n, s in status.items() if n not in [*BLOCK1, "linear"]} == {"default"}
    floated = resolve(Recipe(default=QuantSetting(keep_float=True)), view["conv2d"])
    assert annotation_status(floated) == "float"  # keep_float decides, whichever rule set it
    assert annotation_status(None) == "not quantized"  # a node without a setting


# ---------------------------------------------------------------- bad input


def _error(text: str) -> RecipeError:
    with pytest.raises(RecipeError) as info:
        Recipe.from_json(text, source="r.json")
    return info.value


def test_json_that_does_not_parse() -> None:
    err = _error('{\n  "mode": "ptq",\n  "backend": "xnnpack"\n  "default": {}\n}')
    assert err.problem == ("r.json is not valid JSON: Expecting ',' delimiter at line 4, column 3.")
    assert "missing comma or quote" in err.fix
    assert _error('{"mode": "ptq",}').problem.endswith("at line 1, column 16.")


@pytest.mark.parametrize(
    ("text", "problem", "fix"),
    [
        (
            '{"mode": "ptq", "colour": "red"}',
            "The recipe has unknown field(s): colour.",
            "Known fields: backend, default, loss, metric, mode, output, overrides, "
            "reference_representation, version.",
        ),
        (
            '{"default": {"weight_bits": 4}}',
            "default has unknown field(s): weight_bits.",
            "Known fields: activation_dtype, activation_scheme, keep_float, observer, "
            "weight_dtype, weight_granularity, weight_scheme.",
        ),
        (
            '{"overrides": [{"match": {"op": "conv"}, "set": {"keepfloat": true}}]}',
            "overrides[0].set has unknown field(s): keepfloat.",
            "Known fields: activation_dtype,",
        ),
        (
            '{"default": {"weight_dtype": "int7"}}',
            "weight_dtype is 'int7', which is not a known value.",
            "Use one of: int8, uint8, int4.",
        ),
        (
            '{"overrides": [{"match": {"node": "x"}, "set": {"observer": "ema"}}]}',
            "observer is 'ema', which is not a known value.",
            "Use one of: minmax, moving_average, histogram.",
        ),
        (
            '{"backend": "tensorrt"}',
            "backend is 'tensorrt', which is not a known value.",
            "Use one of: x86_inductor, xnnpack.",
        ),
        (
            '{"mode": "int8"}',
            "mode is 'int8', which is not a known value.",
            "Use one of: ptq, qat.",
        ),
        (
            '{"default": {"keep_float": "yes"}}',
            "keep_float is 'yes'.",
            "Use true or false (JSON booleans).",
        ),
        (
            '{"version": 2, "mode": "ptq"}',
            "The recipe has schema version 2; this workbench reads version 1.",
            'Set "version": 1',
        ),
        (
            '{"overrides": [{"match": {"node": "conv2d", "op": "conv"}, "set": {}}]}',
            "overrides[0].match must name exactly one of: node, module, op.",
            '{"node": NAME}, {"module": PATH_OR_GLOB} or {"op": OP_OR_FAMILY}',
        ),
        (
            '{"overrides": [{"match": {}}]}',
            "overrides[0].match must name exactly one of: node, module, op.",
            '{"node": NAME}',
        ),
        (
            '{"overrides": [{"match": {"layer": "fc"}}]}',
            "overrides[0].match is 'layer', which is not a known value.",
            "Use one of: node, module, op.",
        ),
        (
            '{"overrides": [{"match": {"node": ""}}]}',
            "An override matches node ''.",
            "Give a non-empty name.",
        ),
        (
            '{"overrides": [{"set": {"keep_float": true}}]}',
            'overrides[0] is not of the form {"match": {...}, "set": {...}}.',
            '{"match": {"node": "conv2d_1"}, "set": {"keep_float": true}}',
        ),
        ('{"overrides": {"node": "fc"}}', "overrides is not a list.", "[ {...}, {...} ]"),
        ('{"default": []}', "default is not an object.", '{"field": value, ...}'),
        ("[1, 2]", "The recipe is not a JSON object.", "Start it with {."),
        ('{"backend": null}', "backend is null.", "Use one of: x86_inductor, xnnpack."),
        ('{"mode": null}', "mode is null.", "Use one of: ptq, qat."),
        (
            '{"version": true}',
            "The recipe has schema version True; this workbench reads version 1.",
            'Set "version": 1',
        ),
    ],
)
def test_bad_recipe(text: str, problem: str, fix: str) -> None:
    err = _error(text)
    assert err.problem == problem
    assert fix in err.fix
    assert str(err) == f"{err.problem}\nFix: {err.fix}"


def _validate_error(view: GraphView, *overrides: Override) -> RecipeError:
    with pytest.raises(RecipeError) as info:
        validate(Recipe(overrides=overrides), view)
    assert "python -m workbench inspect" in info.value.fix
    assert "op families: param, conv, linear," in info.value.fix
    return info.value


def test_validate_unknown_node_lists_closest_names(view: GraphView) -> None:
    err = _validate_error(view, rule("node", "conv2d_11", keep_float=True))
    assert err.problem == (
        "The recipe names what this model does not have: "
        "node 'conv2d_11' (closest: conv2d_1, conv2d_3, conv2d_2)."
    )


def test_validate_unknown_module(view: GraphView) -> None:
    err = _validate_error(view, rule("module", "blok1.conv1", weight_dtype="int4"))
    assert err.problem == (
        "The recipe names what this model does not have: "
        "module 'blok1.conv1' (closest: block1.conv1, block1.conv2, block2.conv)."
    )
    err = _validate_error(view, rule("module", "head*", keep_float=True))
    assert "module 'head*' (e.g. stem, stem.conv, stem.bn)" in err.problem  # nothing close


def test_validate_unknown_op(view: GraphView) -> None:
    err = _validate_error(view, rule("op", "conv3d", keep_float=True))
    assert err.problem.endswith("op 'conv3d' (closest: conv2d, conv).")
    err = _validate_error(view, rule("op", "softmax", keep_float=True))
    assert err.problem.endswith("op 'softmax' (e.g. adaptive_avg_pool2d, add, batch_norm).")


def test_validate_names_every_problem(view: GraphView) -> None:
    err = _validate_error(
        view,
        rule("node", "conv2d_1", keep_float=True),  # fine
        rule("node", "linear_9", keep_float=True),
        rule("module", "block3", keep_float=True),
    )
    assert err.problem == (
        "The recipe names what this model does not have: node 'linear_9' (closest: linear); "
        "module 'block3' (closest: block2, block1, block2.bn)."
    )
