"""Node data for Google's Model Explorer: our per-node numbers as overlays on the saved .pt2.

Model Explorer (`pip install ai-edge-model-explorer`) draws a .pt2 with its PyTorch adapter:
`torch.export.load`, one graph with id "graph", one node per FX node of the program's graph,
its id the node's name. A node-data file colours those nodes by a value, in the format of the
package's `node_data_builder.ModelNodeData.to_json_string` (graph id -> GraphNodeData:
`results` by node id, each a `value` with an optional `bgColor`, and `thresholds` or a
`gradient`). Its web app also shows string values, with counts per label. Load the files with
`model-explorer model.pt2 --node_data_paths=sqnr.json,range.json`.

Model Explorer 0.1.34 (the latest) cannot open a program with a dynamic dim, as `export_stages`
writes them (dynamic batch): its adapter writes the output node's shapes with `json.dumps`,
which fails on the symbolic batch size ("Object of type SymInt is not JSON serializable").
Until it is fixed, load the program in Python, drop that node's "val", and open it with the
node data: `program.graph.output_node().meta.pop("val")`, then
`model_explorer.visualize_pytorch("model", program, node_data=[{"name": "SQNR",
"node_data_path": "sqnr.json"}])`.

Node ids are the saved program's, not the converted graph's. The saved program re-exports the
converted GraphModule (`program_for`), and re-exporting names nodes afresh (measured, torch
2.13): every q/dq is renamed and renumbered (`dequantize_per_tensor_default_11` ->
`dequantize_per_tensor_1`), and QAT's converted `conv2d_8` comes back as `conv2d_1`, the name
of another converted node. So nodes are paired by structure, never by name: re-export traces
the ops in graph order, so the op nodes of both graphs are aligned by their targets
(`saved_names`); the names survive save and `torch.export.load` unchanged.

Overlays (`OVERLAYS`), each written only when its input is given:

- "sqnr": per-node SQNR of the comparison (`Comparison.errors`) on each measured op, coloured
  with the Graph page's SQNR bands.
- "range": the float range the grid of each quantize/dequantize covers,
  (quant_min - zero_point) * scale .. (quant_max - zero_point) * scale; the value is its width
  (per channel: of the union over channels).
- "annotation": how each op of the exported graph was annotated (quantized by the backend's
  defaults or by an override, kept float, not quantized), coloured as on the Graph page.
- "delegation": where the .pte runs each op (`Lowered.placement`).
"""

from __future__ import annotations

import difflib
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch.export import ExportedProgram
from torch.fx import GraphModule, Node

from workbench.analysis.compare import Comparison
from workbench.analysis.sqnr import badness
from workbench.artifacts.export import write_text
from workbench.artifacts.pte import Placement
from workbench.drawing.overlays import (
    ANNOTATION_COLOURS,
    PLACEMENT_COLOURS,
    PLACEMENT_LABELS,
    SQNR_BANDS,
    sqnr_colour,
)
from workbench.graph.nodes import QDQ_OPS, call_arguments, is_tensor_op, readable_op
from workbench.graph.provenance import exported_graph_id, node_source
from workbench.model.sources import ModelSpec, Pt2Source
from workbench.quantization.recipe import Effective, annotation_status

__all__ = [
    "ANNOTATION_LABELS",
    "GRAPH_ID",
    "OVERLAYS",
    "SQNR_CAP_DB",
    "grid_ranges",
    "node_data",
    "saved_names",
    "write_node_data",
]

GRAPH_ID = "graph"  # the id Model Explorer's PyTorch adapter gives the program's one graph
# Overlay key (its file is KEY.json) -> the name Model Explorer shows.
OVERLAYS = {
    "sqnr": "SQNR (dB)",
    "range": "quantization range (width)",
    "annotation": "annotation",
    "delegation": "delegation (.pte)",
}
# JSON has no infinity: an exact match (+inf dB) is written as this, the best band.
SQNR_CAP_DB = 200.0
ANNOTATION_LABELS = {
    "default": "quantized (default)",
    "override": "quantized (override)",
    "float": "kept float",
    "not quantized": "not quantized",
}
# Narrow grids light, wide grids dark.
_RANGE_GRADIENT = ({"stop": 0, "bgColor": "#f7fbff"}, {"stop": 1, "bgColor": "#6baed6"})


def saved_names(converted: GraphModule, saved: ExportedProgram) -> dict[str, str]:
    """Converted op node name -> the saved program's node computing the same.

    The op (call_function) nodes of both graphs are aligned by their targets in graph order
    (identical lists for a program `program_for` made of `converted`); an op without a
    partner in an alignment of differing lists is left out.
    """
    ours = [n for n in converted.graph.nodes if n.op == "call_function"]
    theirs = [n for n in saved.graph.nodes if n.op == "call_function"]
    matcher = difflib.SequenceMatcher(
        a=[str(n.target) for n in ours], b=[str(n.target) for n in theirs], autojunk=False
    )
    return {
        ours[block.a + i].name: theirs[block.b + i].name
        for block in matcher.get_matching_blocks()
        for i in range(block.size)
    }


def grid_ranges(saved: ExportedProgram) -> dict[str, tuple[float, float]]:
    """Float range (low, high) each static quantize/dequantize node's grid covers, by node.

    Per channel: the smallest low and the largest high over the channels. A q/dq whose scale
    is computed at run time (dynamic quantization) has no fixed range and is left out.
    """
    ranges: dict[str, tuple[float, float]] = {}
    for node in saved.graph.nodes:
        if node.op != "call_function" or readable_op(node) not in QDQ_OPS:
            continue
        args = call_arguments(node)
        scale = _constant(saved, args.get("scale", args.get("scales")))
        zero_point = _constant(saved, args.get("zero_point", args.get("zero_points")))
        qmin, qmax = args.get("quant_min"), args.get("quant_max")
        if scale is None or zero_point is None or qmin is None or qmax is None:
            continue
        scale = torch.as_tensor(scale, dtype=torch.float64)
        zero_point = torch.as_tensor(zero_point, dtype=torch.float64)
        low = float(((qmin - zero_point) * scale).min())
        high = float(((qmax - zero_point) * scale).max())
        ranges[node.name] = (low, high)
    return ranges


def node_data(
    saved: ExportedProgram | Path | str,
    converted: GraphModule,
    *,
    comparison: Comparison | None = None,
    effective: Mapping[str, Effective] | None = None,
    placement: Mapping[str, Placement] | None = None,
) -> dict[str, dict[str, Any]]:
    """Overlay key -> Model Explorer node data (a JSON-ready ModelNodeData dict).

    `saved` is the .pt2 `export_stages` wrote from `converted` (or its program);
    `comparison` gives "sqnr", `effective` (exported node -> setting, as
    `Stage.applied` or `quantizable_nodes` give it) "annotation", `placement`
    (`Lowered.placement` of `converted`) "delegation"; "range" is read from the program.
    Every node id is a node of the saved program's graph.
    """
    program = saved if isinstance(saved, ExportedProgram) else _load(Path(saved))
    names = saved_names(converted, program)
    made: dict[str, dict[str, Any]] = {}
    if comparison is not None:
        made["sqnr"] = _sqnr(comparison, names)
    ranges = grid_ranges(program)
    if ranges:
        results = {n: {"value": high - low} for n, (low, high) in ranges.items()}
        made["range"] = _graph_data("range", results, gradient=list(_RANGE_GRADIENT))
    if effective is not None:
        made["annotation"] = _annotation(converted, effective, names)
    if placement is not None:
        results = {
            names[n]: {"value": PLACEMENT_LABELS[where], "bgColor": PLACEMENT_COLOURS[where]}
            for n, where in placement.items()
            if n in names
        }
        made["delegation"] = _graph_data("delegation", results, labels=True)
    return made


def write_node_data(
    folder: Path,
    saved: ExportedProgram | Path | str,
    converted: GraphModule,
    *,
    comparison: Comparison | None = None,
    effective: Mapping[str, Effective] | None = None,
    placement: Mapping[str, Placement] | None = None,
) -> list[Path]:
    """Write each overlay of `node_data` to `folder`/KEY.json (atomically); the paths."""
    made = node_data(saved, converted, comparison=comparison, effective=effective,
                     placement=placement)  # fmt: skip
    paths = []
    Path(folder).mkdir(parents=True, exist_ok=True)
    for key, data in made.items():
        path = Path(folder) / f"{key}.json"
        write_text(path, json.dumps(data, indent=2, allow_nan=False) + "\n")
        paths.append(path)
    return paths


def _load(path: Path) -> ExportedProgram:
    return Pt2Source(ModelSpec("pt2", str(path))).load().program


def _constant(program: ExportedProgram, value: Any) -> Any:
    """A q/dq argument as a value: a lifted parameter, buffer or constant is read from the
    program; a node computed at run time is None."""
    if not isinstance(value, Node):
        return value
    signature = program.graph_signature
    for table in (signature.inputs_to_parameters, signature.inputs_to_buffers,
                  signature.inputs_to_lifted_tensor_constants):  # fmt: skip
        target = table.get(value.name)
        if target is not None:
            found = program.state_dict.get(target)
            return found if found is not None else program.constants.get(target)
    return None


def _sqnr(comparison: Comparison, names: Mapping[str, str]) -> dict[str, Any]:
    worst: dict[str, float] = {}
    for error in comparison.errors:
        db = error.sqnr_db
        node = names.get(error.node)
        if node is None or math.isnan(db):
            continue
        if node not in worst or badness(db) > badness(worst[node]):
            worst[node] = db
    results = {
        node: {"value": max(-SQNR_CAP_DB, min(SQNR_CAP_DB, db)), "bgColor": sqnr_colour(db)}
        for node, db in worst.items()
    }
    # Model Explorer colours a value up to each threshold: a band's upper bound is the lower
    # bound of the band above it.
    bands = sorted(SQNR_BANDS, key=lambda band: band[0])
    uppers = [band[0] for band in bands[1:]] + [SQNR_CAP_DB]
    thresholds = [{"value": upper, "bgColor": colour}
                  for upper, (_, _, colour) in zip(uppers, bands, strict=True)]  # fmt: skip
    return _graph_data("sqnr", results, thresholds=thresholds)


def _annotation(
    converted: GraphModule, effective: Mapping[str, Effective], names: Mapping[str, str]
) -> dict[str, Any]:
    exported_id = exported_graph_id(converted)
    results = {}
    for node in converted.graph.nodes:
        source = node_source(node)
        if not is_tensor_op(node) or source.graph_id != exported_id or node.name not in names:
            continue  # q/dq, getitem, and nodes torchao copied from its pattern graphs
        status = annotation_status(effective.get(source.name))
        results[names[node.name]] = {
            "value": ANNOTATION_LABELS[status],
            "bgColor": ANNOTATION_COLOURS[status],
        }
    return _graph_data("annotation", results, labels=True)


def _graph_data(
    key: str,
    results: dict[str, dict[str, Any]],
    *,
    thresholds: list[dict[str, Any]] | None = None,
    gradient: list[dict[str, Any]] | None = None,
    labels: bool = False,
) -> dict[str, Any]:
    """ModelNodeData with one GraphNodeData, every field written as the package writes it
    (string values: with each label's share on a collapsed module and counts per module)."""
    return {
        GRAPH_ID: {
            "results": results,
            "name": OVERLAYS[key],
            "thresholds": thresholds or [],
            "gradient": gradient or [],
            "hideInAggregatedStatsTable": False,
            "hideInChildrenStatsTable": False,
            "showExpandedSummaryOnGroupNode": labels,
            "showLabelCountColumnsInChildrenStatsTable": labels,
        }
    }
