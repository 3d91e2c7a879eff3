"""Model Explorer node data (artifacts/model_explorer.py) on the .pt2 `export_stages` writes.

Every node id is checked against the graph Model Explorer's own PyTorch adapter makes of the
file, every file is parsed with its node_data_builder classes, and the SQNR of each node is
recomputed from the saved program's own outputs at the node the file names: the ids point at
the same computation, not only at a name that exists. Measured (torch 2.13): re-export renames
every q/dq, and after QAT `conv2d_8` comes back as `conv2d_1`.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import Any

import dacite
import pytest
import torch
from model_explorer.builtin_pytorch_exportedprogram_adapter import (
    BuiltinPytorchExportedProgramAdapter,
)
from model_explorer.node_data_builder import GraphNodeData, ModelNodeData
from model_explorer.pytorch_exported_program_adapter_impl import PytorchExportedProgramAdapterImpl
from torch.export import ExportedProgram

from workbench.analysis.compare import Comparison
from workbench.analysis.sqnr import record_outputs, sqnr
from workbench.artifacts.export import program_for
from workbench.artifacts.model_explorer import (
    ANNOTATION_LABELS,
    GRAPH_ID,
    grid_ranges,
    node_data,
    saved_names,
    write_node_data,
)
from workbench.artifacts.pte import lower
from workbench.artifacts.report import compare_stages
from workbench.data.datasets import Dataset, load_data
from workbench.drawing.overlays import PLACEMENT_LABELS, sqnr_colour
from workbench.graph.nodes import argument_value, call_arguments, is_qdq, readable_op
from workbench.graph.view import op_family
from workbench.locks import EXPORT_LOCK
from workbench.model.capture import CapturedModel, capture
from workbench.quantization.recipe import Override, QuantSetting, Recipe
from workbench.stages.build import export_stages, quantize
from workbench.stages.stage import Stages
from workbench.stages.training import QatConfig

HF_MODELS = Path(__file__).resolve().parents[1] / "models" / "hf_models.py"
XNNPACK = dataclasses.replace(Recipe(), backend="xnnpack")
# One node kept float, so the annotation overlay has more than one label.
LINEAR_FLOAT = dataclasses.replace(
    XNNPACK, overrides=(Override("node", "linear", QuantSetting(keep_float=True)),)
)
SETTINGS = {"const_element_count_limit": 16}


@dataclasses.dataclass(frozen=True)
class Built:
    stages: Stages
    comparison: Comparison
    path: Path
    program: ExportedProgram  # torch.export.load of `path`


def _build(captured: CapturedModel, recipe: Recipe, data: Dataset, folder: Path,
           **quantize_options: Any) -> Built:  # fmt: skip
    stages = quantize(captured, recipe, data, **quantize_options)
    path = folder / "model.pt2"
    export_stages(captured, recipe, data, stages, path)
    with EXPORT_LOCK:
        program = torch.export.load(str(path))
    return Built(stages, compare_stages(stages, data), path, program)


def adapter_graph(path: Path) -> Any:
    """Model Explorer's graph of the file, by its own adapter. The output node's "val" is
    dropped first: the adapter cannot write a symbolic batch size (see the test below)."""
    with EXPORT_LOCK:
        program = torch.export.load(str(path))
    program.graph.output_node().meta.pop("val")
    (graph,) = PytorchExportedProgramAdapterImpl(program, SETTINGS).convert()["graphs"]
    return graph


def parsed(data: dict[str, Any]) -> GraphNodeData:
    """A node-data file read with the package's classes; its own writer gives the file back."""
    (graph_id,) = data
    values = [r["value"] for r in data[graph_id]["results"].values()]
    numeric = all(isinstance(v, int | float) for v in values)
    config = dacite.Config(strict=True, check_types=numeric)  # its value type says Num only
    result = dacite.from_dict(GraphNodeData, data[graph_id], config=config)
    again = ModelNodeData(graphsData={graph_id: result}).to_json_string()
    assert json.loads(again) == data
    return result


def saved_outputs(program: ExportedProgram, inputs: Any) -> dict[str, Any]:
    """Every node's output of the saved program, by node name."""
    with EXPORT_LOCK:
        module = program.module()
    ops = [n.name for n in program.graph.nodes if n.op == "call_function"]
    assert [n.name for n in module.graph.nodes if n.op == "call_function"] == ops
    return record_outputs(module, inputs)


def check_sqnr(built: Built, sqnr_data: dict[str, Any]) -> dict[str, float]:
    """SQNR results against the comparison and recomputed from the saved program's outputs
    at the nodes the file names; returns the file's node -> value."""
    converted = built.stages.converted.graph_module
    names = saved_names(converted, built.program)
    results = {k: r["value"] for k, r in sqnr_data[GRAPH_ID]["results"].items()}
    errors = built.comparison.errors
    assert len(results) == len(errors)  # one per measured op, none lost
    float_values = record_outputs(built.comparison.reference_module, built.comparison.inputs)
    converted_values = record_outputs(converted, built.comparison.inputs)
    ours = saved_outputs(built.program, built.comparison.inputs)
    for error in errors:
        node = names[error.node]
        assert results[node] == error.sqnr_db
        assert sqnr_data[GRAPH_ID]["results"][node]["bgColor"] == sqnr_colour(error.sqnr_db)
        assert torch.allclose(ours[node], converted_values[error.node], atol=1e-6)
        again = sqnr(float_values[error.reference], ours[names[error.compared]])
        assert again == pytest.approx(error.sqnr_db, abs=1e-6)
    return results


def conv_linear(program: ExportedProgram, names: set[str]) -> list[str]:
    return [n.name for n in program.graph.nodes
            if n.name in names and op_family(n) in ("conv", "linear")]  # fmt: skip


# --- the digits CNN, PTQ for XNNPACK with the linear kept float ----------------------------


@pytest.fixture(scope="module")
def digits(captured: dict[str, CapturedModel], digits_data: Dataset,
           tmp_path_factory: pytest.TempPathFactory) -> Built:  # fmt: skip
    folder = tmp_path_factory.mktemp("model-explorer")
    return _build(captured["digits_cnn"], LINEAR_FLOAT, digits_data, folder, batches=2,
                  batch_size=32)  # fmt: skip


@pytest.fixture(scope="module")
def digits_files(digits: Built, captured: dict[str, CapturedModel]) -> dict[str, Any]:
    gm = digits.stages.converted.graph_module
    model = captured["digits_cnn"]
    program = program_for(gm, model.example_inputs, dims=model.dynamic_dims,
                          parameters=model.parameters, keep_debug=True)  # fmt: skip
    lowered = lower(program, what="the converted model", source=gm)
    paths = write_node_data(digits.path.parent, digits.path, gm, comparison=digits.comparison,
                            effective=digits.stages.converted.applied,
                            placement=lowered.placement)  # fmt: skip
    return {"paths": paths, "lowered": lowered,
            "data": {p.stem: json.loads(p.read_text()) for p in paths}}  # fmt: skip


@pytest.mark.slow
def test_model_explorer_cannot_open_a_dynamic_batch_pt2(digits: Built) -> None:
    """Model Explorer 0.1.34's adapter, as `model-explorer model.pt2` runs it, fails on the
    symbolic batch size of the output's shape. When this fails, it opens the file: update
    the module docstring and `adapter_graph`."""
    with pytest.raises(TypeError, match="SymInt is not JSON serializable"):
        BuiltinPytorchExportedProgramAdapter().convert(str(digits.path), SETTINGS)


@pytest.mark.slow
def test_every_node_id_is_a_node_of_model_explorers_graph(
    digits: Built, digits_files: dict[str, Any]
) -> None:
    graph = adapter_graph(digits.path)
    ids = [n.id for n in graph.nodes]
    assert graph.id == GRAPH_ID
    assert ids == [n.name for n in digits.program.graph.nodes]  # its ids are the fx names
    files = digits_files["data"]
    assert sorted(files) == ["annotation", "delegation", "range", "sqnr"]
    assert [p.name for p in digits_files["paths"]] == [f"{k}.json" for k in files]
    for key, data in files.items():
        results = data[GRAPH_ID]["results"]
        assert results, key
        assert set(results) <= set(ids), key
        assert parsed(data).name
    ops = [n.name for n in digits.program.graph.nodes if n.op == "call_function"]
    converted = digits.stages.converted.graph_module
    assert len(ops) == len([n for n in converted.graph.nodes if n.op == "call_function"]) == 34
    assert set(files["delegation"][GRAPH_ID]["results"]) == set(ops)  # every op placed


@pytest.mark.slow
def test_sqnr_is_each_measured_node_at_its_saved_id(
    digits: Built, digits_files: dict[str, Any]
) -> None:
    results = check_sqnr(digits, digits_files["data"]["sqnr"])
    measured = [e.node for e in digits.comparison.errors]
    gm = digits.stages.converted.graph_module
    ops = {n.name: n for n in gm.graph.nodes}
    convs = [n for n in measured if op_family(ops[n]) in ("conv", "linear")]
    assert len(results) == 13
    assert len(convs) == 5  # 4 convs and the linear
    assert len(conv_linear(digits.program, set(results))) == 5
    assert all(30.0 < v < 60.0 for v in results.values())
    # The file ranks the nodes as the comparison does.
    assert sorted(results.values()) == sorted(e.sqnr_db for e in digits.comparison.errors)


@pytest.mark.slow
def test_ranges_are_the_grids_of_the_converted_q_dq(
    digits: Built, digits_files: dict[str, Any]
) -> None:
    gm = digits.stages.converted.graph_module
    names = saved_names(gm, digits.program)
    ranges = grid_ranges(digits.program)
    results = digits_files["data"]["range"][GRAPH_ID]["results"]
    qdq = [n for n in gm.graph.nodes if n.op == "call_function" and is_qdq(n)]
    assert len(qdq) == len(ranges) == len(results) == 21
    for node in qdq:
        args = {k: argument_value(gm, v) for k, v in call_arguments(node).items()}
        scale = torch.as_tensor(args.get("scale", args.get("scales")), dtype=torch.float64)
        zero = torch.as_tensor(args.get("zero_point", args.get("zero_points")),
                               dtype=torch.float64)  # fmt: skip
        low = float(((args["quant_min"] - zero) * scale).min())
        high = float(((args["quant_max"] - zero) * scale).max())
        saved = names[node.name]
        assert ranges[saved] == pytest.approx((low, high), rel=1e-12)
        assert results[saved]["value"] == pytest.approx(high - low, rel=1e-12)
        assert low <= 0.0 <= high
    per_channel = [names[n.name] for n in qdq if "per_channel" in readable_op(n)]
    assert len(per_channel) == 4  # the convs' weights (the linear's is float)


@pytest.mark.slow
def test_annotation_and_delegation_labels(digits: Built, digits_files: dict[str, Any]) -> None:
    annotation = digits_files["data"]["annotation"][GRAPH_ID]["results"]
    nodes = {n.name: n for n in digits.program.graph.nodes}
    labels = {name: r["value"] for name, r in annotation.items()}
    assert labels["linear"] == ANNOTATION_LABELS["float"]
    convs = [n for n in labels if op_family(nodes[n]) == "conv"]
    assert len(convs) == 4
    assert {labels[n] for n in convs} == {ANNOTATION_LABELS["default"]}
    assert not any(is_qdq(nodes[n]) for n in labels)
    delegation = digits_files["data"]["delegation"][GRAPH_ID]["results"]
    counts: dict[str, int] = {}
    for result in delegation.values():
        counts[result["value"]] = counts.get(result["value"], 0) + 1
    lowered = digits_files["lowered"]
    assert counts == {PLACEMENT_LABELS[k]: v for k, v in lowered.counts.items() if v}
    # The flatten runs on a portable kernel; its saved id is the flatten's.
    (outside,) = [o for o in lowered.outside if o.op == "flatten"]
    gm = digits.stages.converted.graph_module
    saved = saved_names(gm, digits.program)[outside.node]
    assert readable_op(nodes[saved]) == "flatten"
    assert delegation[saved]["value"] == PLACEMENT_LABELS["portable"]


def test_saved_names_align_by_structure_not_by_name() -> None:
    """An op missing from the saved graph is skipped, and the ops after it pair with their
    saved nodes, whatever those are named."""
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    with EXPORT_LOCK:
        program = torch.export.export(model, (torch.randn(2, 4),))
        gm = program.module()
    assert saved_names(gm, program) == {"linear": "linear", "relu": "relu",
                                        "linear_1": "linear_1"}  # fmt: skip
    edited = copy.deepcopy(gm)
    first = next(n for n in edited.graph.nodes if n.name == "linear")
    first.replace_all_uses_with(first.args[0])
    edited.graph.erase_node(first)
    edited.recompile()
    with EXPORT_LOCK:
        saved = torch.export.export(edited, (torch.randn(2, 4),))
    assert [n.name for n in saved.graph.nodes if n.op == "call_function"] == ["relu", "linear"]
    assert saved_names(gm, saved) == {"relu": "relu", "linear_1": "linear"}


# --- QAT renames the convs; an HF conv-BN model --------------------------------------------


@pytest.mark.slow
def test_qat_renamed_convs_map_to_their_saved_nodes(
    captured: dict[str, CapturedModel], digits_data: Dataset, tmp_path: Path
) -> None:
    recipe = dataclasses.replace(XNNPACK, mode="qat")
    built = _build(captured["digits_cnn"], recipe, digits_data, tmp_path,
                   qat=QatConfig(steps=2, batch_size=16))  # fmt: skip
    gm = built.stages.converted.graph_module
    names = saved_names(gm, built.program)
    ops = {n.name: n for n in gm.graph.nodes}
    renamed = {a: b for a, b in names.items() if a != b and not is_qdq(ops[a])}
    # convert's conv2d_8 is the saved conv2d_1: a name the converted graph gives another node
    assert renamed["conv2d_8"] == "conv2d_1"
    assert "conv2d_1" not in {n.name for n in gm.graph.nodes}
    made = node_data(built.path, gm, comparison=built.comparison)
    results = check_sqnr(built, made["sqnr"])
    assert len(conv_linear(built.program, set(results))) == 5
    ids = {n.id for n in adapter_graph(built.path).nodes}
    assert all(set(d[GRAPH_ID]["results"]) <= ids for d in made.values())


@pytest.mark.slow
def test_hf_resnet_node_data(tmp_path: Path) -> None:
    model = capture(f"{HF_MODELS}:resnet")
    data = load_data("random", model.signature)
    built = _build(model, XNNPACK, data, tmp_path, batches=2, batch_size=8)
    gm = built.stages.converted.graph_module
    made = node_data(built.path, gm, comparison=built.comparison,
                     effective=built.stages.converted.applied)  # fmt: skip
    ids = {n.id for n in adapter_graph(built.path).nodes}
    for data_ in made.values():
        assert set(data_[GRAPH_ID]["results"]) <= ids
        parsed(data_)
    results = check_sqnr(built, made["sqnr"])
    convs = conv_linear(built.program, set(results))
    ops = {n.name: n for n in gm.graph.nodes}
    measured = [e.node for e in built.comparison.errors]
    assert len(convs) == len([n for n in measured if op_family(ops[n]) in ("conv", "linear")])
    assert len(convs) == len(conv_linear(built.program, ids)) == 7  # 6 convs, the classifier
    annotation = made["annotation"][GRAPH_ID]["results"]
    assert {annotation[n]["value"] for n in convs} == {ANNOTATION_LABELS["default"]}
