"""A plain, UI-free description of an FX graph: nodes, edges, modules and provenance."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.fx import GraphModule, Node

from workbench.graph.nodes import CONV_OPS, QUANT_OPS, readable_op
from workbench.graph.provenance import provenance_key

__all__ = [
    "FAMILIES",
    "HIDDEN_MODULES",
    "GraphView",
    "ModuleInfo",
    "NodeInfo",
    "ParamInfo",
    "describe",
    "module_table",
    "op_family",
    "readable_op",  # lives in workbench.graph.nodes; importable from here as before
    "search",
]

HIDDEN_MODULES = frozenset({"_guards_fn"})

# Op family by readable op name; anything not listed is "other" (see op_family).
# fmt: off
_FAMILY_OPS: dict[str, tuple[str, ...]] = {
    "conv": CONV_OPS,
    "linear": ("linear", "addmm"),
    "matmul": ("matmul", "mm", "bmm", "baddbmm", "einsum", "scaled_dot_product_attention"),
    "norm": ("batch_norm", "_native_batch_norm_legit", "_native_batch_norm_legit_no_training",
             "native_batch_norm", "layer_norm", "native_layer_norm", "group_norm", "instance_norm",
             "rms_norm"),
    "activation": ("relu", "relu_", "relu6", "hardtanh", "hardtanh_", "gelu", "silu", "sigmoid",
                   "tanh", "hardswish", "hardswish_", "hardsigmoid", "leaky_relu", "elu", "mish",
                   "softmax", "_softmax", "log_softmax", "clamp", "clamp_min", "clamp_max"),
    "pool": ("max_pool1d", "max_pool2d", "max_pool3d", "avg_pool1d", "avg_pool2d", "avg_pool3d",
             "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_max_pool2d",
             "max_pool2d_with_indices"),
    "elementwise": ("add", "add_", "sub", "mul", "mul_", "div", "neg", "pow", "sqrt", "rsqrt",
                    "exp", "log", "abs", "where", "maximum", "minimum", "reciprocal"),
    "reduction": ("mean", "sum", "amax", "amin", "max", "min", "var", "std", "argmax"),
    "shape": ("view", "reshape", "flatten", "permute", "transpose", "t", "unsqueeze", "squeeze",
              "cat", "stack", "split", "split_with_sizes", "chunk", "getitem", "expand",
              "contiguous", "slice", "select", "clone", "dropout", "_to_copy", "to", "unbind",
              "pad", "constant_pad_nd", "repeat", "alias", "detach"),
    "quant": QUANT_OPS,
}
# fmt: on
_FAMILY_BY_OP = {op: family for family, ops in _FAMILY_OPS.items() for op in ops}
FAMILIES = ("input", "output", "param", *_FAMILY_OPS, "observer", "other")


@dataclass(frozen=True)
class ParamInfo:
    """A parameter, buffer or constant a node reads through a get_attr node."""

    node: str
    target: str
    shape: tuple[int, ...]
    dtype: str


@dataclass(frozen=True)
class NodeInfo:
    """One node of the graph, described for people: what it computes, where it came from."""

    name: str
    op: str
    target: str
    op_name: str
    family: str
    module: str
    module_type: str
    module_chain: tuple[str, ...]
    shape: tuple[int | str, ...] | None
    dtype: str | None
    inputs: tuple[str, ...]
    params: tuple[ParamInfo, ...]
    source: str | None
    source_code: str | None
    provenance: tuple[str, ...] | None

    @property
    def is_param(self) -> bool:
        return self.op == "get_attr"

    def as_dict(self) -> dict[str, Any]:
        """The JSON form used by `inspect --format json`."""
        return {
            "name": self.name,
            "op": self.op,
            "target": self.target,
            "op_name": self.op_name,
            "family": self.family,
            "module": self.module,
            "module_type": self.module_type,
            "module_chain": list(self.module_chain),
            "shape": list(self.shape) if self.shape is not None else None,
            "dtype": self.dtype,
            "inputs": list(self.inputs),
            "params": [
                {"node": p.node, "target": p.target, "shape": list(p.shape), "dtype": p.dtype}
                for p in self.params
            ],
            "source": self.source,
            "source_code": self.source_code,
            "provenance": list(self.provenance) if self.provenance else None,
        }


@dataclass(frozen=True)
class ModuleInfo:
    """A module of the model's hierarchy and the graph nodes that belong to it."""

    path: str
    type: str
    nodes: tuple[str, ...]
    children: tuple[ModuleInfo, ...] = ()

    @property
    def depth(self) -> int:
        return 0 if not self.path else self.path.count(".") + 1

    @property
    def total_nodes(self) -> int:
        return len(self.nodes) + sum(c.total_nodes for c in self.children)

    def walk(self) -> Iterable[ModuleInfo]:
        yield self
        for child in self.children:
            yield from child.walk()

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "type": self.type,
            "nodes": list(self.nodes),
            "total_nodes": self.total_nodes,
            "children": [c.as_dict() for c in self.children],
        }


@dataclass(frozen=True)
class GraphView:
    """Nodes in graph order, data edges between them and the module tree."""

    stage: str
    nodes: tuple[NodeInfo, ...]
    edges: tuple[tuple[str, str], ...]
    modules: ModuleInfo
    _by_name: dict[str, NodeInfo] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_name", {n.name: n for n in self.nodes})

    def __getitem__(self, name: str) -> NodeInfo:
        return self._by_name[name]

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __len__(self) -> int:
        return len(self.nodes)

    def family_counts(self) -> dict[str, int]:
        """How many nodes of each op family, in FAMILIES order, zero counts left out."""
        counts = {f: 0 for f in FAMILIES}
        for node in self.nodes:
            counts[node.family] += 1
        return {f: c for f, c in counts.items() if c}

    def module(self, path: str) -> ModuleInfo:
        for mod in self.modules.walk():
            if mod.path == path:
                return mod
        raise KeyError(path)

    def by_provenance(self) -> dict[tuple[str, ...], list[str]]:
        """Node names grouped by provenance key, for matching this stage's nodes to another's."""
        groups: dict[tuple[str, ...], list[str]] = {}
        for node in self.nodes:
            if node.provenance is not None:
                groups.setdefault(node.provenance, []).append(node.name)
        return groups

    def as_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "nodes": [n.as_dict() for n in self.nodes],
            "edges": [list(e) for e in self.edges],
            "modules": self.modules.as_dict(),
        }


def describe(gm: GraphModule, *, stage: str = "exported") -> GraphView:
    """Describe a GraphModule from any PT2E stage; `_guards_fn` checks are left out."""
    graph_nodes = [n for n in gm.graph.nodes if not _is_hidden(n)]
    names = {n.name for n in graph_nodes}
    symbols = _batch_symbols(graph_nodes)
    module_types = _module_types(graph_nodes)
    chains = {n.name: _module_chain(n, module_types) for n in graph_nodes}
    infos: list[NodeInfo] = []
    edges: list[tuple[str, str]] = []
    for node in graph_nodes:
        inputs = tuple(a.name for a in node.all_input_nodes if a.name in names)
        edges.extend((src, node.name) for src in inputs)
        chain = chains[node.name]
        module = chain[-1] if chain else ""
        shape, dtype = _shape_dtype(node.meta.get("val"), symbols)
        op_name = readable_op(node, gm)
        source, code = _source(node)
        infos.append(
            NodeInfo(
                name=node.name,
                op=node.op,
                target=_target_text(node),
                op_name=op_name,
                family=op_family(node, op_name),
                module=module,
                module_type=module_types.get(module, type(gm).__name__ if not module else ""),
                module_chain=chain,
                shape=shape,
                dtype=dtype,
                inputs=inputs,
                params=tuple(_param_info(a) for a in node.all_input_nodes if a.op == "get_attr"),
                source=source,
                source_code=code,
                provenance=provenance_key(node),
            )
        )
    tree = _module_tree(infos, module_types)
    return GraphView(stage, tuple(infos), tuple(edges), tree)


def search(view: GraphView, text: str) -> list[str]:
    """Op nodes whose name, op or module path contains `text` (case-insensitive), in order."""
    needle = text.strip().lower()
    if not needle:
        return []
    return [
        n.name
        for n in view.nodes
        if n.op in ("call_function", "call_module")
        and (needle in n.name.lower() or needle in n.op_name.lower() or needle in n.module.lower())
    ]


def module_table(view: GraphView) -> list[dict[str, Any]]:
    """The module tree as rows (path, type, depth, own nodes, all nodes), parents first."""
    return [
        {"module": m.path or "(model)", "type": m.type, "depth": m.depth,
         "nodes": len(m.nodes), "total nodes": m.total_nodes}
        for m in view.modules.walk()
    ]  # fmt: skip


def op_family(node: Node, op_name: str | None = None) -> str:
    """The op family used for colours and counts (conv, linear, norm, activation, ...)."""
    if node.op in ("placeholder", "output", "get_attr"):
        return readable_op(node)  # input, output, param: their own families
    if node.op == "call_module":
        return "observer"
    name = op_name or readable_op(node)
    return _FAMILY_BY_OP.get(name, _FAMILY_BY_OP.get(name.rstrip("_"), "other"))


def _is_hidden(node: Node) -> bool:
    return node.op == "call_module" and node.target in HIDDEN_MODULES


def _target_text(node: Node) -> str:
    target = node.target
    if isinstance(target, str):
        return target
    return str(target) if isinstance(target, torch._ops.OpOverload) else readable_op(node)


def _batch_symbols(nodes: list[Node]) -> set[str]:
    """Names of the symbols that stand for the batch size (dim 0 of the inputs)."""
    symbols = set()
    for node in nodes:
        val = node.meta.get("val")
        if node.op == "placeholder" and isinstance(val, torch.Tensor) and val.dim() > 0:
            dim0 = val.shape[0]
            if not isinstance(dim0, int):
                symbols.add(str(dim0))
    return symbols


_SYMBOL = re.compile(r"\b[su]\d+\b")


def _shape_dtype(val: Any, symbols: set[str]) -> tuple[tuple[int | str, ...] | None, str | None]:
    if isinstance(val, (tuple, list)) and val and isinstance(val[0], torch.Tensor):
        val = val[0]
    if not isinstance(val, torch.Tensor):
        return None, None
    shape: list[int | str] = []
    for dim in val.shape:
        if isinstance(dim, int):
            shape.append(dim)
        else:
            text = _SYMBOL.sub(lambda m: "batch" if m[0] in symbols else m[0], str(dim))
            shape.append(text)
    return tuple(shape), str(val.dtype).removeprefix("torch.")


def _param_info(node: Node) -> ParamInfo:
    val = node.meta.get("val")
    if isinstance(val, torch.Tensor):
        return ParamInfo(
            node.name,
            str(node.target),
            tuple(int(d) for d in val.shape),
            str(val.dtype).removeprefix("torch."),
        )
    return ParamInfo(node.name, str(node.target), (), "")


def _module_types(nodes: list[Node]) -> dict[str, str]:
    types: dict[str, str] = {}
    for node in nodes:
        for path, cls in (node.meta.get("nn_module_stack") or {}).values():
            types.setdefault(path, _short_class(cls))
    return types


def _short_class(cls: Any) -> str:
    text = cls if isinstance(cls, str) else getattr(cls, "__qualname__", str(cls))
    return text.rsplit(".", 1)[-1]


def _module_chain(node: Node, module_types: dict[str, str]) -> tuple[str, ...]:
    stack = node.meta.get("nn_module_stack")
    if stack:
        return tuple(dict.fromkeys(path for path, _ in stack.values() if path))
    if node.op == "get_attr":
        # A parameter belongs to the module that owns it, where that module appears in the graph.
        parts = str(node.target).split(".")[:-1]
        prefixes = [".".join(parts[: i + 1]) for i in range(len(parts))]
        return tuple(p for p in prefixes if p in module_types)
    return ()


_FRAME = re.compile(r'File "([^"]+)", line (\d+), in [^\n]+\n\s*([^\n]*)')


def _source(node: Node) -> tuple[str | None, str | None]:
    """The innermost user frame of the node's stack trace, outside torch itself."""
    trace = node.meta.get("stack_trace")
    if not trace:
        return None, None
    frames = _FRAME.findall(trace)
    if not frames:
        return None, None
    user = [f for f in frames if "/site-packages/torch/" not in f[0]] or frames
    path, line, code = user[-1]
    return f"{path}:{line}", code.strip() or None


def _module_tree(infos: list[NodeInfo], module_types: dict[str, str]) -> ModuleInfo:
    direct: dict[str, list[str]] = {"": []}
    children: dict[str, list[str]] = {"": []}
    for info in infos:
        parent = ""
        for path in info.module_chain:
            if path not in direct:
                direct[path] = []
                children[path] = []
                children[parent].append(path)
            parent = path
        direct[info.module].append(info.name)

    def build(path: str) -> ModuleInfo:
        kind = module_types.get(path, "")
        return ModuleInfo(path, kind, tuple(direct[path]), tuple(build(c) for c in children[path]))

    return build("")
