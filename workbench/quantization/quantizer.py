"""A torchao Quantizer that applies a Recipe on top of a backend's own quantizer.

The base quantizer annotates the graph as it always does; the recipe then edits those
annotations node by node. Nothing else is changed: prepare reads the annotations as usual.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from torch.fx import GraphModule, Node
from torchao.quantization.pt2e import (
    FakeQuantize,
    FusedMovingAvgObsFakeQuantize,
    HistogramObserver,
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    MovingAveragePerChannelMinMaxObserver,
    PerChannelMinMaxObserver,
)
from torchao.quantization.pt2e.quantizer import (
    DerivedQuantizationSpec,
    QuantizationAnnotation,
    QuantizationSpec,
    Quantizer,
    SharedQuantizationSpec,
)

from workbench.graph.nodes import is_get_attr
from workbench.graph.provenance import node_source
from workbench.graph.view import GraphView
from workbench.locks import EXPORT_LOCK
from workbench.quantization.recipe import LEVELS, Effective, QuantSetting, Recipe, resolve

__all__ = [
    "ACTIVATION_FIELDS",
    "ANNOTATION_KEY",
    "DTYPE_RANGES",
    "RecipeQuantizer",
    "base_quantizer",
    "drop_dangling_shared_specs",
    "edit_spec",
    "exported_name",
    "observer_constructor",
    "quantizable_nodes",
]

ANNOTATION_KEY = "quantization_annotation"
_EPS = 2**-12

# dtype name -> (torch dtype, quant_min, quant_max); int4 is held in int8 storage.
DTYPE_RANGES: dict[str, tuple[torch.dtype, int, int]] = {
    "int8": (torch.int8, -128, 127),
    "uint8": (torch.uint8, 0, 255),
    "int4": (torch.int8, -7, 7),
}


def base_quantizer(backend: str, *, is_qat: bool) -> Quantizer:
    """The backend's own quantizer with its default global config."""
    if backend == "x86_inductor":
        from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
            X86InductorQuantizer,
            get_default_x86_inductor_quantization_config,
        )

        config = get_default_x86_inductor_quantization_config(is_qat=is_qat)
        return X86InductorQuantizer().set_global(config)
    if backend == "xnnpack":
        # executorch's public quantizer; it annotates with torchao's spec/annotation classes,
        # so the recipe's edits below apply to it unchanged.
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
            XNNPACKQuantizer,
            get_symmetric_quantization_config,
        )

        config = get_symmetric_quantization_config(is_per_channel=True, is_qat=is_qat)
        return XNNPACKQuantizer().set_global(config)
    raise ValueError(f"unknown backend {backend!r}")


class RecipeQuantizer(Quantizer):
    """Annotates like the recipe's backend, then applies the recipe's per-node settings.

    `view` is the exported graph's view: recipe rules address its node names and modules,
    and graph nodes are traced back to it through `from_node` provenance, so the same rule
    hits the same computation whether prepare renamed or fused things first.
    """

    def __init__(self, recipe: Recipe, view: GraphView, *, is_qat: bool | None = None) -> None:
        super().__init__()
        self.recipe = recipe
        self.view = view
        self.is_qat = recipe.mode == "qat" if is_qat is None else is_qat
        self.base = base_quantizer(recipe.backend, is_qat=self.is_qat)
        self.applied: dict[str, Effective] = {}

    def transform_for_annotation(self, model: GraphModule) -> GraphModule:
        return self.base.transform_for_annotation(model)

    def annotate(self, model: GraphModule) -> GraphModule:
        self.base.annotate(model)
        self.applied = {}
        effective: dict[Node, Effective] = {}
        for node in model.graph.nodes:
            annotation = node.meta.get(ANNOTATION_KEY)
            info = self.view[name] if (name := exported_name(node)) in self.view else None
            if annotation is None or info is None:
                continue
            eff = resolve(self.recipe, info)
            effective[node] = eff
            self.applied[info.name] = eff
            _apply_setting(node, annotation, eff.setting, self.is_qat)
        _apply_to_output_edges(effective, self.is_qat)
        _align_merged_observers(effective, self.is_qat)
        kept_float = {node for node, eff in effective.items() if eff.setting.keep_float}
        _drop_outputs_only_float_nodes_read(kept_float)
        drop_dangling_shared_specs(model)
        return model

    def validate(self, model: GraphModule) -> None:
        self.base.validate(model)


def exported_name(node: Node) -> str:
    """The name this node had in the exported graph it descends from."""
    return node_source(node).name


def quantizable_nodes(gm: GraphModule, recipe: Recipe, view: GraphView) -> dict[str, Effective]:
    """Exported-graph nodes the backend quantizes, with their effective settings.

    Runs the steps prepare runs before annotating on a copy: `prepare_pt2e` (PTQ) folds
    conv-bn and then linear-bn into the weights first, so the backend annotates the fused
    graph (xnnpack then sees linear+relu where a BatchNorm1d stood between them);
    `prepare_qat_pt2e` annotates the graph as exported and fuses afterwards.
    """
    model = copy.deepcopy(gm)
    if recipe.mode == "ptq":
        from torchao.quantization.pt2e.utils import _fuse_conv_bn_, _fuse_linear_bn_

        with EXPORT_LOCK:
            _fuse_conv_bn_(model)
            _fuse_linear_bn_(model)
    quantizer = RecipeQuantizer(recipe, view)
    quantizer.annotate(quantizer.transform_for_annotation(model))
    order = {n.name: i for i, n in enumerate(view.nodes)}
    return dict(sorted(quantizer.applied.items(), key=lambda item: order[item[0]]))


def _apply_setting(
    node: Node, annotation: QuantizationAnnotation, setting: QuantSetting, is_qat: bool
) -> None:
    if setting.keep_float:
        # Keys stay, in order: QAT conv-bn fusion remaps them by position (input, weight, bias).
        annotation.input_qspec_map = dict.fromkeys(annotation.input_qspec_map)
        annotation.output_qspec = None
        return
    for arg, spec in annotation.input_qspec_map.items():
        if isinstance(spec, QuantizationSpec):
            role = "weight" if is_get_attr(arg) else "activation"
            annotation.input_qspec_map[arg] = edit_spec(spec, setting, role, is_qat=is_qat)
    if isinstance(annotation.output_qspec, QuantizationSpec):
        annotation.output_qspec = edit_spec(
            annotation.output_qspec, setting, "activation", is_qat=is_qat
        )


def edit_spec(
    spec: QuantizationSpec, setting: QuantSetting, role: str, *, is_qat: bool
) -> QuantizationSpec:
    """`spec` with the setting's fields for this role (weight or activation) applied."""
    if spec.is_dynamic:
        return spec
    changes: dict[str, Any] = {}
    dtype_name = setting.weight_dtype if role == "weight" else setting.activation_dtype
    if dtype_name is not None:
        dtype, qmin, qmax = DTYPE_RANGES[dtype_name]
        changes.update(dtype=dtype, quant_min=qmin, quant_max=qmax)
    per_channel = spec.qscheme in (torch.per_channel_symmetric, torch.per_channel_affine)
    symmetric = spec.qscheme in (torch.per_tensor_symmetric, torch.per_channel_symmetric)
    scheme = setting.weight_scheme if role == "weight" else setting.activation_scheme
    if scheme is not None:
        symmetric = scheme == "symmetric"
    if role == "weight" and setting.weight_granularity is not None:
        per_channel = setting.weight_granularity == "per_channel"
    qscheme = _qscheme(per_channel, symmetric)
    if qscheme != spec.qscheme:
        changes.update(qscheme=qscheme, ch_axis=(spec.ch_axis or 0) if per_channel else None)
    observer = setting.observer if role == "activation" else None
    if observer is not None or (role == "weight" and "qscheme" in changes):
        changes["observer_or_fake_quant_ctr"] = observer_constructor(
            role, per_channel=per_channel, observer=observer, is_qat=is_qat
        )
    return dataclasses.replace(spec, **changes) if changes else spec


def _qscheme(per_channel: bool, symmetric: bool) -> torch.qscheme:
    if per_channel:
        return torch.per_channel_symmetric if symmetric else torch.per_channel_affine
    return torch.per_tensor_symmetric if symmetric else torch.per_tensor_affine


def observer_constructor(
    role: str, *, per_channel: bool, observer: str | None, is_qat: bool
) -> Callable[..., Any]:
    """The observer (PTQ) or fake-quant (QAT) constructor for a role and observer choice."""
    if role == "weight":
        if is_qat:
            inner = (
                MovingAveragePerChannelMinMaxObserver
                if per_channel
                else MovingAverageMinMaxObserver
            )
            return FusedMovingAvgObsFakeQuantize.with_args(observer=inner, eps=_EPS)
        return (PerChannelMinMaxObserver if per_channel else MinMaxObserver).with_args(eps=_EPS)
    kind = observer or ("moving_average" if is_qat else "histogram")
    if not is_qat:
        cls = {"minmax": MinMaxObserver, "moving_average": MovingAverageMinMaxObserver,
               "histogram": HistogramObserver}[kind]  # fmt: skip
        return cls.with_args(eps=_EPS)
    if kind == "moving_average":
        # FusedMovingAvgObsFakeQuantize accepts only moving-average observers.
        return FusedMovingAvgObsFakeQuantize.with_args(
            observer=MovingAverageMinMaxObserver, eps=_EPS
        )
    inner_cls = MinMaxObserver if kind == "minmax" else HistogramObserver
    return FakeQuantize.with_args(observer=inner_cls, eps=_EPS)


ACTIVATION_FIELDS = ("activation_dtype", "activation_scheme", "observer")


def _apply_to_output_edges(effective: dict[Node, Effective], is_qat: bool) -> None:
    """Apply a node's activation setting where its output is quantized: its consumers' inputs.

    Backends often quantize an op's output at the edge into the next op (x86 annotates the
    relu after a conv with no output spec; the next conv's input spec quantizes it). The
    consumer's own rule keeps that edge when it has higher precedence.
    """
    rank = {level: i for i, level in enumerate(LEVELS)}
    for node, eff in effective.items():
        fields = {k: v for k, v in eff.setting.fields_set().items() if k in ACTIVATION_FIELDS}
        annotation = node.meta[ANNOTATION_KEY]
        if not fields or eff.setting.keep_float or annotation.output_qspec is not None:
            continue
        setting = QuantSetting(**fields)
        for user in node.users:
            user_annotation = user.meta.get(ANNOTATION_KEY)
            spec = user_annotation.input_qspec_map.get(node) if user_annotation else None
            user_eff = effective.get(user)
            if not isinstance(spec, QuantizationSpec) or (
                user_eff is not None and rank[user_eff.level] > rank[eff.level]
            ):
                continue
            user_annotation.input_qspec_map[node] = edit_spec(
                spec, setting, "activation", is_qat=is_qat
            )


def _align_merged_observers(effective: dict[Node, Effective], is_qat: bool) -> None:
    """Make the higher-precedence rule's observer win where prepare merges two observers.

    prepare shares one observer between a producer's output and a consumer's input when
    dtype, range, qscheme and axis match, ignoring the observer class.
    """
    rank = {level: i for i, level in enumerate(LEVELS)}
    for consumer, eff in effective.items():
        annotation = consumer.meta[ANNOTATION_KEY]
        for producer, spec in annotation.input_qspec_map.items():
            p_ann = producer.meta.get(ANNOTATION_KEY)
            p_spec = p_ann.output_qspec if p_ann is not None else None
            if not (isinstance(spec, QuantizationSpec) and isinstance(p_spec, QuantizationSpec)):
                continue
            same = dataclasses.replace(
                p_spec, observer_or_fake_quant_ctr=spec.observer_or_fake_quant_ctr
            )
            if same != spec or p_spec == spec:
                continue
            p_eff = effective.get(producer)
            p_rank = rank[p_eff.level] if p_eff is not None else 0
            if rank[eff.level] >= p_rank:
                p_ann.output_qspec = spec
            else:
                annotation.input_qspec_map[producer] = p_spec


def _drop_outputs_only_float_nodes_read(kept_float: set[Node]) -> None:
    """Stop quantizing an output whose every reader was kept float by the recipe.

    Otherwise a float node would still read a quantize/dequantize pair (a flatten's shared
    output feeding a float linear, say) and pay the rounding error for nothing.
    """
    for node in {arg for user in kept_float for arg in user.all_input_nodes}:
        annotation = node.meta.get(ANNOTATION_KEY)
        if annotation is not None and node.users and set(node.users) <= kept_float:
            annotation.output_qspec = None


def drop_dangling_shared_specs(model: GraphModule) -> None:
    """Unset shared/derived specs that point at edges or nodes no longer quantized.

    Repeats until nothing changes: dropping one can leave another dangling.
    """
    changed = True
    while changed:
        changed = False
        for node in model.graph.nodes:
            annotation = node.meta.get(ANNOTATION_KEY)
            if annotation is None:
                continue
            for arg, spec in annotation.input_qspec_map.items():
                if spec is not None and not _spec_alive(spec):
                    annotation.input_qspec_map[arg] = None
                    changed = True
            if annotation.output_qspec is not None and not _spec_alive(annotation.output_qspec):
                annotation.output_qspec = None
                changed = True


def _spec_alive(spec: object) -> bool:
    if isinstance(spec, SharedQuantizationSpec):
        return _quantized(spec.edge_or_node)
    if isinstance(spec, DerivedQuantizationSpec):
        return all(_quantized(e) for e in spec.derived_from)
    return True


def _quantized(edge_or_node: Node | tuple[Node, Node]) -> bool:
    if isinstance(edge_or_node, tuple):
        producer, consumer = edge_or_node
        annotation = consumer.meta.get(ANNOTATION_KEY)
        return annotation is not None and annotation.input_qspec_map.get(producer) is not None
    annotation = edge_or_node.meta.get(ANNOTATION_KEY)
    return annotation is not None and annotation.output_qspec is not None
