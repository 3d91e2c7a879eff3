"""Per-node SQNR between the float export and converted PTQ/QAT models of the digits CNN."""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass

import pytest
import torch
from torch.fx import GraphModule
from torchao.quantization.pt2e import move_exported_model_to_eval
from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e, prepare_qat_pt2e
from torchao.quantization.pt2e.quantizer import QuantizationSpec
from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
    X86InductorQuantizer,
    get_default_x86_inductor_quantization_config,
)

import sample_models
from workbench.analysis.sqnr import NodeError, per_node_sqnr, record_outputs, sqnr
from workbench.model.capture import CapturedModel, capture

# Exported conv -> the batch_norm folded into it.
CONV_BN = {
    "conv2d": "batch_norm",
    "conv2d_1": "batch_norm_1",
    "conv2d_2": "batch_norm_2",
    "conv2d_3": "batch_norm_3",
}


@dataclass
class Flow:
    float_gm: GraphModule
    prepared: GraphModule
    converted: GraphModule
    errors: list[NodeError]


def _quantizer(is_qat: bool) -> X86InductorQuantizer:
    config = get_default_x86_inductor_quantization_config(is_qat=is_qat)
    return X86InductorQuantizer().set_global(config)


class _Int4WeightQuantizer(X86InductorQuantizer):
    """The default x86 quantizer, with one conv's weight quantized to int4 (-7..7)."""

    def __init__(self, node: str) -> None:
        super().__init__()
        self.node = node
        self.set_global(get_default_x86_inductor_quantization_config())

    def annotate(self, model: GraphModule) -> GraphModule:
        super().annotate(model)
        for node in model.graph.nodes:
            if node.name != self.node:
                continue
            annotation = node.meta["quantization_annotation"]
            for arg, spec in annotation.input_qspec_map.items():
                if arg.op == "get_attr" and isinstance(spec, QuantizationSpec):
                    annotation.input_qspec_map[arg] = dataclasses.replace(
                        spec, quant_min=-7, quant_max=7
                    )
        return model


def _calibrate(model: GraphModule, images: torch.Tensor, batches: int) -> None:
    with torch.no_grad():
        for i in range(batches):
            model(images[i * 64 : (i + 1) * 64])


def _ptq(cap: CapturedModel, images: torch.Tensor, quantizer: X86InductorQuantizer) -> Flow:
    prepared = prepare_pt2e(cap.graph_module(), quantizer)
    _calibrate(prepared, images, 4)
    converted = convert_pt2e(copy.deepcopy(prepared))
    float_gm = cap.graph_module()
    return Flow(float_gm, prepared, converted, per_node_sqnr(float_gm, converted, (images,)))


@pytest.fixture(scope="module")
def digits() -> CapturedModel:
    return capture("sample:digits_cnn")


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return sample_models.load_digits_split().test_x


@pytest.fixture(scope="module")
def ptq(digits: CapturedModel, images: torch.Tensor) -> Flow:
    return _ptq(digits, images, _quantizer(is_qat=False))


@pytest.fixture(scope="module")
def qat(digits: CapturedModel, images: torch.Tensor) -> Flow:
    """QAT prepared, observed for two batches in train mode, moved to eval, converted once."""
    prepared = prepare_qat_pt2e(digits.graph_module(), _quantizer(is_qat=True))
    _calibrate(prepared, images, 2)
    move_exported_model_to_eval(prepared)
    converted = convert_pt2e(copy.deepcopy(prepared))
    float_gm = digits.graph_module()
    return Flow(float_gm, prepared, converted, per_node_sqnr(float_gm, converted, (images,)))


@pytest.fixture(params=["ptq", "qat"])
def flow(request: pytest.FixtureRequest) -> Flow:
    return request.getfixturevalue(request.param)


def _by_exported(errors: list[NodeError]) -> dict[str, NodeError]:
    return {e.exported: e for e in errors}


def test_every_conv_is_paired_once_with_its_folded_batch_norm(flow: Flow) -> None:
    convs = [e for e in flow.errors if e.exported.startswith("conv2d")]
    assert sorted(e.exported for e in convs) == sorted(CONV_BN)
    for error in convs:
        assert error.bn_folded
        assert error.reference == CONV_BN[error.exported]
    converted_convs = {
        n.name
        for n in flow.converted.graph.find_nodes(
            op="call_function", target=torch.ops.aten.conv2d.default
        )
    }
    assert {e.node for e in convs} == converted_convs
    assert len({e.node for e in flow.errors}) == len(flow.errors)
    # The folded batch norms have no node of their own in the converted graph.
    assert not any(e.exported.startswith("batch_norm") for e in flow.errors)


def test_qat_pairs_renamed_convs_by_provenance(qat: Flow) -> None:
    convs = {e.exported: e.node for e in qat.errors if e.bn_folded}
    assert set(convs) == set(CONV_BN)
    # convert renames the convs (conv2d_1 -> conv2d_5 -> conv2d_8 ...): names alone would
    # pair conv2d_1 with the wrong layer or with nothing.
    assert any(node != exported for exported, node in convs.items())
    prepared_names = {n.name for n in qat.prepared.graph.nodes}
    assert "add_1" in prepared_names  # a pattern node whose root name, "add", is the user's too
    assert _by_exported(qat.errors)["add"].node == "add"


def test_sqnr_of_convs_and_linear_is_high(flow: Flow) -> None:
    errors = _by_exported(flow.errors)
    for name in [*CONV_BN, "linear"]:
        assert errors[name].sqnr_db > 20, errors[name]
        assert 0 < errors[name].max_abs_error < 2
    assert all(math.isfinite(e.sqnr_db) for e in flow.errors)


def test_compared_output_is_the_dequantize_when_there_is_one(flow: Flow) -> None:
    errors = _by_exported(flow.errors)
    # x86: conv+relu is one pattern, quantized after the relu; the conv output stays float.
    for name in CONV_BN:
        assert errors[name].compared == errors[name].node
        assert not errors[name].quantized
    for name in ("relu", "relu_1", "relu_2", "relu_3", "max_pool2d", "flatten"):
        assert errors[name].quantized
        assert errors[name].compared.startswith("dequantize_per_tensor")
    assert errors["linear"].compared == errors["linear"].node


def test_last_linear_matches_model_output_sqnr(flow: Flow, images: torch.Tensor) -> None:
    with torch.no_grad():
        expected = sqnr(flow.float_gm(images), flow.converted(images))
    linear = _by_exported(flow.errors)["linear"]
    assert linear.sqnr_db == pytest.approx(expected, abs=1e-6)
    assert 20 < expected < 60


def test_pairing_with_the_pre_bn_output_would_be_meaningless(
    flow: Flow, images: torch.Tensor
) -> None:
    float_out = record_outputs(flow.float_gm, (images,))
    conv_out = record_outputs(flow.converted, (images,))
    gaps = {}
    for error in flow.errors:
        if error.bn_folded:
            pre_bn = sqnr(float_out[error.exported], conv_out[error.compared])
            gaps[error.exported] = error.sqnr_db - pre_bn
    assert set(gaps) == set(CONV_BN)
    assert max(gaps.values()) > 15, gaps


def test_int4_weights_on_one_conv_show_up_at_that_conv(
    digits: CapturedModel, images: torch.Tensor, ptq: Flow
) -> None:
    broken = _by_exported(_ptq(digits, images, _Int4WeightQuantizer("conv2d_1")).errors)
    healthy = _by_exported(ptq.errors)
    # Upstream of the broken conv nothing changes.
    for name in ("conv2d", "relu"):
        assert broken[name].sqnr_db == pytest.approx(healthy[name].sqnr_db, abs=1e-6)
    assert broken["conv2d_1"].sqnr_db < healthy["conv2d_1"].sqnr_db - 12
    assert broken["conv2d_1"].sqnr_db < broken["conv2d"].sqnr_db - 12


def test_float_graph_from_another_capture_pairs_the_same(ptq: Flow, images: torch.Tensor) -> None:
    # Another export has another graph id in its provenance roots; names still line up.
    other = capture("sample:digits_cnn").graph_module()
    assert per_node_sqnr(other, ptq.converted, (images,)) == ptq.errors


def test_same_graph_gives_infinite_sqnr_and_keeps_batch_norm(digits: CapturedModel) -> None:
    gm = digits.graph_module()
    errors = per_node_sqnr(gm, gm, digits.example_inputs)
    assert errors and all(e.sqnr_db == math.inf and e.max_abs_error == 0 for e in errors)
    by_name = _by_exported(errors)
    # The batch norm has its own node, so the conv is compared with its own output.
    assert by_name["conv2d_1"].reference == "conv2d_1"
    assert not any(e.bn_folded for e in errors)
    assert by_name["batch_norm_1"].node == "batch_norm_1"


def test_unfolded_batch_norm_behind_pattern_nodes(qat: Flow, images: torch.Tensor) -> None:
    """A QAT graph still holding torchao's conv-bn pattern: the BN is not folded into the conv.

    The same structure remains after convert when a conv is kept float. The conv runs with
    BN-scaled weights and a pattern `div` undoes the scale, so that `div` is compared with the
    float conv, and the pattern batch_norm (its provenance is torchao's) with the float one.
    """
    prepared = copy.deepcopy(qat.prepared)  # observers update even in eval mode
    errors = _by_exported(per_node_sqnr(qat.float_gm, prepared, (images,)))
    for conv, bn in CONV_BN.items():
        assert not errors[conv].bn_folded
        assert errors[conv].reference == conv
        assert errors[conv].compared.startswith("div")
        assert errors[conv].sqnr_db > 20
        assert errors[bn].node.startswith("batch_norm_")
        assert errors[bn].node != bn
        assert errors[bn].sqnr_db > 20
