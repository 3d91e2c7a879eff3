"""Node sources across stages, and the conv a batch_norm normalises, on tiny graphs."""

from __future__ import annotations

import torch
from torch.fx import Graph, Node
from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

from tests.models.tiny_models import ConvBN
from workbench.graph.nodes import (
    QDQ_OPS,
    QUANT_OPS,
    is_batch_norm,
    is_batch_norm_op,
    is_dequantize,
    is_qdq,
    is_quantize,
    readable_op,
)
from workbench.graph.provenance import (
    NodeSource,
    conv_before,
    exported_graph_id,
    node_source,
    provenance_key,
    root_source,
)
from workbench.model.capture import CapturedModel, ModelSpec, dynamic_dims, export_model
from workbench.quantization.recipe import Recipe
from workbench.stages.steps import prepare

ATEN = torch.ops.aten


def bn_after_conv(*, observed: bool = False, helper: bool = False) -> tuple[Graph, Node, Node]:
    """x -> conv2d [-> observer] [-> mul] -> batch_norm, a hand-made graph with no meta."""
    graph = Graph()
    x, w = graph.placeholder("x"), graph.placeholder("w")
    conv = graph.call_function(ATEN.conv2d.default, (x, w))
    y: Node = graph.call_module("obs", (conv,)) if observed else conv
    if helper:
        y = graph.call_function(ATEN.mul.Tensor, (y, 2.0))
    bn = graph.call_function(
        ATEN.batch_norm.default, (y, None, None, None, None, False, 0.1, 1e-5, True)
    )
    graph.output(bn)
    return graph, conv, bn


def test_a_node_without_from_node_is_its_own_source() -> None:
    graph, conv, _ = bn_after_conv()
    assert root_source(conv) is None
    assert node_source(conv) == NodeSource(conv.name, id(graph))
    assert provenance_key(conv) is None
    weight = graph.get_attr("conv.weight")
    assert provenance_key(weight) == ("param", "conv.weight")


def test_conv_before_walks_helpers_and_observers_only_when_asked() -> None:
    _, conv, bn = bn_after_conv(helper=True)
    assert conv_before(bn) is conv
    graph, conv, bn = bn_after_conv(observed=True)
    assert conv_before(bn) is None  # an observer ends the walk ...
    assert conv_before(bn, through_observers=True) is conv  # ... unless walked through
    assert conv_before(bn, exported_id=id(graph), through_observers=True) is conv
    # A conv of another graph (a torchao pattern graph, say) is not the exported one.
    assert conv_before(bn, exported_id=id(graph) + 1, through_observers=True) is None


def test_sources_survive_qat_prepare_and_convert() -> None:
    example = torch.rand(2, 1, 5, 5)
    program, _ = export_model(ConvBN(), (example,))
    captured = CapturedModel(ModelSpec("sample", "tiny"), program, (example,),
                             dynamic_dims(program), 0.0)  # fmt: skip
    exported = captured.graph_module()
    exported_id = exported_graph_id(exported)
    prepared = prepare(captured, Recipe(mode="qat")).graph_module
    assert exported_graph_id(prepared) == exported_id
    convs = [n for n in prepared.graph.nodes if readable_op(n) == "conv2d"]
    assert [node_source(n) for n in convs] == [NodeSource("conv2d", exported_id)]
    assert [n.name for n in convs] != ["conv2d"]  # prepare renamed it
    # QAT's conv-bn fusion puts its helper nodes between the conv and the batch_norm.
    (bn,) = [n for n in prepared.graph.nodes if is_batch_norm(n)]
    assert bn.args[0] is not convs[0]
    assert conv_before(bn, exported_id=exported_id) is convs[0]


def test_qdq_predicates_on_a_converted_graph() -> None:
    example = torch.rand(2, 1, 5, 5)
    program, _ = export_model(ConvBN(), (example,))
    captured = CapturedModel(ModelSpec("sample", "tiny"), program, (example,),
                             dynamic_dims(program), 0.0)  # fmt: skip
    prepared = prepare(captured, Recipe()).graph_module
    prepared(example)
    converted = convert_pt2e(prepared)
    qdq = [n for n in converted.graph.nodes if is_qdq(n)]
    assert {readable_op(n) for n in qdq} == {
        "quantize_per_tensor", "dequantize_per_tensor", "dequantize_per_channel"
    }  # fmt: skip
    assert {readable_op(n) for n in qdq} <= set(QDQ_OPS) <= set(QUANT_OPS)
    assert all(is_quantize(n) != is_dequantize(n) for n in qdq)
    assert not any(is_batch_norm(n) for n in converted.graph.nodes)  # PTQ folded it


def test_batch_norm_op_names() -> None:
    for name in ("batch_norm", "_native_batch_norm_legit_no_training",
                 "_native_batch_norm_legit", "native_batch_norm"):  # fmt: skip
        assert is_batch_norm_op(name)
    assert not is_batch_norm_op("layer_norm")
