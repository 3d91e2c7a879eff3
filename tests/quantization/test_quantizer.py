"""RecipeQuantizer on the digits CNN: what each recipe setting does to the real graphs.

PTQ (x86_inductor) unless a test says otherwise; each recipe is prepared, calibrated on two
batches and converted once per module. Only one QAT model is converted here (convert_pt2e of
a QAT conv-bn model takes 10-20 s on two cores).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch.fx import GraphModule, Node
from torchao.quantization.pt2e import (
    HistogramObserver,
    MinMaxObserver,
    PerChannelMinMaxObserver,
)

from workbench.artifacts.report import op_counts
from workbench.data.datasets import Dataset
from workbench.graph.view import describe
from workbench.model.capture import CapturedModel
from workbench.quantization.quantizer import exported_name, quantizable_nodes
from workbench.quantization.recipe import Override, QuantSetting, Recipe
from workbench.stages.stage import Stage
from workbench.stages.steps import calibrate, convert, evaluate, prepare
from workbench.stages.training import QatConfig, train_qat

Q = torch.ops.quantized_decomposed
QUANTIZE = (Q.quantize_per_tensor.default,)
DEQUANTIZE = (Q.dequantize_per_tensor.default, Q.dequantize_per_channel.default)
QDQ_COUNTS = ("quantize_per_tensor", "dequantize_per_tensor", "dequantize_per_channel")
CONVS = ("conv2d", "conv2d_1", "conv2d_2", "conv2d_3")

# The default PTQ recipe on the digits CNN: every op after BN folding.
DEFAULT_CONVERTED_OPS = {
    "adaptive_avg_pool2d": 1,
    "add": 1,
    "conv2d": 4,
    "dequantize_per_channel": 5,  # 4 conv weights + the linear weight
    "dequantize_per_tensor": 9,  # relu's output feeds conv2d_1 and add: two dequantizes
    "flatten": 1,
    "linear": 1,
    "max_pool2d": 1,
    "quantize_per_tensor": 8,
    "relu": 4,
}


def rule(kind: str, pattern: str, **fields: Any) -> Override:
    return Override(kind, pattern, QuantSetting(**fields))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def digits(captured: dict[str, CapturedModel]) -> CapturedModel:
    return captured["digits_cnn"]


@pytest.fixture(scope="module")
def ptq(digits: CapturedModel, digits_data: Dataset) -> Any:
    """`ptq(*overrides, **recipe_fields)` -> (prepared, converted), each recipe built once;
    `ptq.prepared(...)` stops after prepare."""
    prepared_cache: dict[Recipe, Stage] = {}
    converted_cache: dict[Recipe, Stage] = {}

    def prepared(*overrides: Override, **fields: Any) -> Stage:
        recipe = Recipe(overrides=overrides, **fields)
        if recipe not in prepared_cache:
            prepared_cache[recipe] = prepare(digits, recipe)
        return prepared_cache[recipe]

    def run(*overrides: Override, **fields: Any) -> tuple[Stage, Stage]:
        recipe = Recipe(overrides=overrides, **fields)
        stage = prepared(*overrides, **fields)
        if recipe not in converted_cache:
            converted_cache[recipe] = convert(calibrate(stage, digits_data, batches=2))
        return stage, converted_cache[recipe]

    run.prepared = prepared  # type: ignore[attr-defined]
    return run


def node_for(gm: GraphModule, name: str) -> Node:
    """The node of `gm` that descends from exported node `name` (convert renames convs)."""
    found = [
        n for n in gm.graph.nodes
        if n.op == "call_function" and n.target not in QUANTIZE + DEQUANTIZE
        and exported_name(n) == name
    ]  # fmt: skip
    assert len(found) == 1, (name, found)
    return found[0]


def weight_dequantize(gm: GraphModule, name: str) -> Node:
    """The dequantize node that feeds the weight (argument 1) of exported conv/linear `name`."""
    weight = node_for(gm, name).args[1]
    assert isinstance(weight, Node) and weight.target in DEQUANTIZE, weight
    return weight


def qdq_args(node: Node) -> tuple[Any, ...]:
    """(quant_min, quant_max, dtype) of a quantize/dequantize node."""
    return tuple(node.args[-3:])


def observer_of(prepared: GraphModule, producer: str) -> type:
    """Class of the observer that reads node `producer` of the prepared graph."""
    readers = [u for u in prepared.graph.find_nodes(op="call_module") if u.args[0].name == producer]
    assert len(readers) == 1, readers
    return type(prepared.get_submodule(readers[0].target))


def activation_observers(prepared: GraphModule) -> dict[str, str]:
    """{node an observer reads: observer class} for activation (non-weight) observers."""
    return {
        n.args[0].name: type(prepared.get_submodule(n.target)).__name__
        for n in prepared.graph.find_nodes(op="call_module")
        if n.args[0].op != "get_attr"
    }


# ---------------------------------------------------------------- default recipe


def test_default_recipe_op_counts(digits_ptq: dict[str, Stage]) -> None:
    converted = digits_ptq["converted"].graph_module
    counts = op_counts(converted)
    assert counts == DEFAULT_CONVERTED_OPS
    assert counts.get("batch_norm", 0) == 0  # all four BNs folded into their convs
    print("\ndefault PTQ q/dq counts:", {k: counts[k] for k in QDQ_COUNTS})
    # Weights per channel (int8, -128..127), activations per tensor uint8 (0..255).
    for name in (*CONVS, "linear"):
        dq = weight_dequantize(converted, name)
        assert dq.target is Q.dequantize_per_channel.default
        assert qdq_args(dq) == (-128, 127, torch.int8)
    activation_dqs = [
        n for n in converted.graph.nodes if n.target is Q.dequantize_per_tensor.default
    ]
    assert {qdq_args(n) for n in activation_dqs} == {(0, 255, torch.uint8)}


def test_prepared_default_observers(digits_ptq: dict[str, Stage]) -> None:
    prepared = digits_ptq["prepared"].graph_module
    weights = {
        n.args[0].target: type(prepared.get_submodule(n.target))
        for n in prepared.graph.find_nodes(op="call_module")
        if n.args[0].op == "get_attr"
    }
    assert weights == dict.fromkeys(
        ["stem.conv.weight", "block1.conv1.weight", "block1.conv2.weight", "block2.conv.weight",
         "fc.weight"],
        PerChannelMinMaxObserver,
    )  # fmt: skip
    assert activation_observers(prepared) == dict.fromkeys(
        ["x", "relu", "relu_1", "relu_2", "max_pool2d", "relu_3", "adaptive_avg_pool2d",
         "flatten"],
        "HistogramObserver",
    )  # fmt: skip


# ---------------------------------------------------------------- per-node settings


def test_keep_float_linear(ptq: Any) -> None:
    prepared, converted = ptq(rule("op", "linear", keep_float=True))
    assert prepared.applied["linear"].rule == "op:linear"
    gm = converted.graph_module
    linear = node_for(gm, "linear")
    inputs = linear.all_input_nodes
    assert [n.target for n in inputs if n.target in DEQUANTIZE] == []  # nothing dequantized
    assert [n.name for n in inputs] == ["flatten", "fc_weight", "fc_bias"]
    weight = linear.args[1]
    assert weight.op == "get_attr" and weight.target == "fc.weight"
    assert gm.get_parameter("fc.weight").dtype == torch.float32
    assert [u.op for u in linear.users] == ["output"]  # no quantize reads its output
    # flatten only feeds the float linear, so its output is not quantized either.
    flatten = node_for(gm, "flatten")
    assert flatten.args[0].target is Q.dequantize_per_tensor.default
    assert [u.name for u in flatten.users] == ["linear"]
    counts = op_counts(gm)
    assert {k: counts[k] for k in QDQ_COUNTS} == {
        "quantize_per_tensor": 7,
        "dequantize_per_tensor": 8,
        "dequantize_per_channel": 4,
    }


def test_per_tensor_weight_on_one_conv(ptq: Any) -> None:
    prepared, converted = ptq(rule("node", "conv2d_1", weight_granularity="per_tensor"))
    gm = converted.graph_module
    dq = weight_dequantize(gm, "conv2d_1")
    assert dq.target is Q.dequantize_per_tensor.default
    assert qdq_args(dq) == (-128, 127, torch.int8)
    assert dq.args[2] == 0  # symmetric: zero point 0
    assert dq.args[0].op == "get_attr"  # a frozen int8 weight
    assert getattr(gm, dq.args[0].target).dtype == torch.int8
    for other in ("conv2d", "conv2d_2", "conv2d_3", "linear"):
        assert weight_dequantize(gm, other).target is Q.dequantize_per_channel.default
    counts = op_counts(gm)
    assert (counts["dequantize_per_channel"], counts["dequantize_per_tensor"]) == (4, 10)
    assert observer_of(prepared.graph_module, "block1_conv1_weight") is MinMaxObserver
    assert observer_of(prepared.graph_module, "stem_conv_weight") is PerChannelMinMaxObserver


def test_int4_weight_on_one_conv(ptq: Any) -> None:
    _, converted = ptq(rule("node", "conv2d_3", weight_dtype="int4"))
    gm = converted.graph_module
    dq = weight_dequantize(gm, "conv2d_3")
    assert dq.target is Q.dequantize_per_channel.default
    assert qdq_args(dq) == (-7, 7, torch.int8)
    stored = getattr(gm, dq.args[0].target)
    assert stored.dtype == torch.int8
    # Per-channel symmetric: each of the 32 output channels reaches +-7 and nothing is beyond.
    assert stored.abs().amax(dim=(1, 2, 3)).tolist() == [7] * 32
    for other in ("conv2d", "conv2d_1", "conv2d_2", "linear"):
        assert qdq_args(weight_dequantize(gm, other)) == (-128, 127, torch.int8)
    assert op_counts(gm) == DEFAULT_CONVERTED_OPS


def test_activation_int8_on_one_node(ptq: Any) -> None:
    _, default = ptq()
    _, converted = ptq(rule("node", "conv2d", activation_dtype="int8"))

    def input_qdq(gm: GraphModule) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
        dq = node_for(gm, "conv2d").args[0]
        assert dq.target is Q.dequantize_per_tensor.default
        q = dq.args[0]
        assert q.target is Q.quantize_per_tensor.default and q.args[0].name == "x"
        return tuple(q.args[1:]), tuple(dq.args[1:])

    q, dq = input_qdq(default.graph_module)
    assert q == dq == (0.003919653594493866, 0, 0, 255, torch.uint8)
    q, dq = input_qdq(converted.graph_module)
    # Same range [0, 1] and scale; int8 moves the zero point to -128.
    assert q == dq == (0.003919653594493866, -128, -128, 127, torch.int8)
    # Every other activation quantize/dequantize (7 + 8) stays uint8.
    gm = converted.graph_module
    x_quantize = node_for(gm, "conv2d").args[0].args[0]
    others = [
        qdq_args(n) for n in gm.graph.nodes
        if n.target in (Q.quantize_per_tensor.default, Q.dequantize_per_tensor.default)
        and n is not x_quantize and x_quantize not in n.all_input_nodes
    ]  # fmt: skip
    assert len(others) == 15 and set(others) == {(0, 255, torch.uint8)}
    assert op_counts(gm) == DEFAULT_CONVERTED_OPS


def test_observer_override(ptq: Any) -> None:
    prepared = ptq.prepared(rule("node", "conv2d", observer="minmax"))
    observers = activation_observers(prepared.graph_module)
    assert observers.pop("x") == "MinMaxObserver"  # the input of conv2d
    assert set(observers.values()) == {"HistogramObserver"}
    assert len(observers) == 7


def test_observer_override_aligns_the_shared_observer(ptq: Any) -> None:
    # relu's output feeds conv2d_1 and add through one observer: a node rule on the consumer
    # conv2d_1 beats the default on the producer, so that one observer is a histogram.
    prepared = ptq.prepared(
        rule("node", "conv2d_1", observer="histogram"),
        default=QuantSetting(observer="minmax"),
    )
    gm = prepared.graph_module
    assert observer_of(gm, "relu") is HistogramObserver
    observers = activation_observers(gm)
    assert observers.pop("relu") == "HistogramObserver"
    assert set(observers.values()) == {"MinMaxObserver"}
    assert len(observers) == 7


# ---------------------------------------------------------------- quantizable nodes


def test_quantizable_nodes(digits: CapturedModel) -> None:
    view = describe(digits.graph_module())
    ptq_nodes = quantizable_nodes(digits.graph_module(), Recipe(), view)
    assert list(ptq_nodes) == [
        "conv2d", "relu", "conv2d_1", "relu_1", "conv2d_2", "add", "relu_2", "max_pool2d",
        "conv2d_3", "relu_3", "adaptive_avg_pool2d", "flatten", "linear",
    ]  # fmt: skip
    assert {e.rule for e in ptq_nodes.values()} == {"default"}
    qat = Recipe(mode="qat", overrides=(rule("module", "block1", keep_float=True),))
    qat_nodes = quantizable_nodes(digits.graph_module(), qat, view)
    # QAT annotates before conv-bn fusion, so the BN nodes are there.
    assert list(qat_nodes) == [
        "conv2d", "batch_norm", "relu", "conv2d_1", "batch_norm_1", "relu_1", "conv2d_2",
        "batch_norm_2", "add", "relu_2", "max_pool2d", "conv2d_3", "batch_norm_3", "relu_3",
        "adaptive_avg_pool2d", "flatten", "linear",
    ]  # fmt: skip
    assert [n for n, e in qat_nodes.items() if e.rule == "module:block1"] == [
        "conv2d_1", "batch_norm_1", "relu_1", "conv2d_2", "batch_norm_2", "add", "relu_2",
    ]  # fmt: skip
    assert all(e.setting.keep_float for e in qat_nodes.values() if e.rule != "default")


# ---------------------------------------------------------------- QAT and other backends


@pytest.fixture(scope="module")
def qat_keep_conv(digits: CapturedModel, digits_data: Dataset) -> dict[str, Any]:
    recipe = Recipe(mode="qat", overrides=(rule("node", "conv2d_1", keep_float=True),))
    prepared = prepare(digits, recipe)
    trained = train_qat(prepared, digits_data, QatConfig(steps=10))
    converted = convert(trained)
    return {"prepared": prepared, "trained": trained, "converted": converted}


def test_keep_float_conv_in_qat(
    qat_keep_conv: dict[str, Any], digits_data: Dataset, digits_ptq: dict[str, Stage]
) -> None:
    assert qat_keep_conv["prepared"].applied["conv2d_1"].setting.keep_float is True
    gm = qat_keep_conv["converted"].graph_module
    counts = op_counts(gm)
    print("\nQAT keep_float conv2d_1 converted ops:", counts)
    assert counts == {
        "adaptive_avg_pool2d": 1,
        "add": 2,  # the residual add + running_var + eps
        "batch_norm": 1,  # block1.bn1 stays: its conv has no weight q/dq to fold into
        "conv2d": 4,
        "dequantize_per_channel": 4,
        "dequantize_per_tensor": 9,
        "div": 2,
        "flatten": 1,
        "linear": 1,
        "max_pool2d": 1,
        "mul": 1,
        "quantize_per_tensor": 8,
        "relu": 4,
        "reshape": 2,
        "sqrt": 1,
    }
    (bn,) = [n for n in gm.graph.nodes if n.target is torch.ops.aten.batch_norm.default]
    assert bn.args[1].target == "block1.bn1.weight"
    assert bn.args[5] is False  # eval-mode BN after convert
    conv = node_for(gm, "conv2d_1")
    assert conv.args[1].target is torch.ops.aten.mul.Tensor  # float weight * BN scale
    assert conv.args[1].args[0].target == "block1.conv1.weight"
    assert bn.args[0].args[0] is conv  # conv -> div (undo the scale) -> batch_norm
    for other in ("conv2d", "conv2d_2", "conv2d_3"):
        assert weight_dequantize(gm, other).target is Q.dequantize_per_channel.default
    accuracy = evaluate(gm, digits_data)
    float_accuracy = evaluate(digits_ptq["exported"].graph_module, digits_data)
    print(f"QAT keep_float conv2d_1: {accuracy:.2f} % (float {float_accuracy:.2f} %)")
    assert abs(accuracy - float_accuracy) <= 1.0


def test_xnnpack_backend_converts(ptq: Any) -> None:
    prepared, converted = ptq(backend="xnnpack")
    gm = converted.graph_module
    counts = op_counts(gm)
    assert counts == {
        "adaptive_avg_pool2d": 1,
        "add": 1,
        "conv2d": 4,
        "dequantize_per_channel": 5,
        "dequantize_per_tensor": 11,
        "flatten": 1,
        "linear": 1,
        "max_pool2d": 1,
        "quantize_per_tensor": 10,  # also the add's conv input and the model output
        "relu": 4,
    }
    activations = [
        n for n in gm.graph.nodes
        if n.target in (Q.quantize_per_tensor.default, Q.dequantize_per_tensor.default)
    ]  # fmt: skip
    assert {qdq_args(n) for n in activations} == {(-128, 127, torch.int8)}
    weights = [n for n in gm.graph.nodes if n.target is Q.dequantize_per_channel.default]
    assert {qdq_args(n) for n in weights} == {(-127, 127, torch.int8)}  # symmetric int8
    assert [u.op for u in node_for(gm, "linear").users] == ["call_function"]  # output quantized
    assert prepared.created_by == "prepare_pt2e (xnnpack)"


def test_activation_setting_on_a_relu_reaches_the_edge_that_quantizes_its_output(
    captured: dict[str, CapturedModel],
) -> None:
    """x86 quantizes the relu after a conv at the next op's input; the relu's rule goes there."""
    from workbench.data.datasets import load_data
    from workbench.quantization.recipe import Override, QuantSetting, Recipe
    from workbench.stages.steps import calibrate, convert, evaluate, prepare

    cap = captured["digits_cnn"]
    setting = QuantSetting(activation_dtype="int4", activation_scheme="symmetric")
    recipe = Recipe(overrides=(Override("node", "relu_1", setting),))
    prepared = prepare(cap, recipe)
    observers = [
        prepared.graph_module.get_submodule(str(n.target))
        for n in prepared.graph_module.graph.nodes
        if n.op == "call_module" and [a.name for a in n.all_input_nodes] == ["relu_1"]
    ]
    assert [(o.dtype, o.quant_min, o.quant_max, o.qscheme) for o in observers] == [
        (torch.int8, -7, 7, torch.per_tensor_symmetric)
    ]
    data = load_data("digits", cap.signature)
    converted = convert(calibrate(prepared, data, batches=4)).graph_module
    quant = [n for n in converted.graph.nodes
             if n.target == torch.ops.quantized_decomposed.quantize_per_tensor.default
             and n.args[0].name == "relu_1"]  # fmt: skip
    assert [n.args[3:] for n in quant] == [(-7, 7, torch.int8)]
    assert evaluate(converted, data) < 99.44  # the 4-bit edge costs accuracy: it is real
