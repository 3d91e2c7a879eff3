"""A process-wide cache for the tiny pattern graphs torchao exports during prepare and convert.

torchao's `_get_aten_graph_module_for_pattern` runs a strict `torch.export` of a small pattern
function every time it is called: about 96 times in one QAT convert, 24 in prepare_qat and
6 per train/eval switch (counted on torch 2.13 + torchao 0.18 with a conv-bn-relu CNN). The
patterns do not depend on the user's model, only on
the pattern function (its code, closure values and defaults), the example inputs' shapes,
dtypes and devices, the keyword arguments and `is_cuda`. This module caches the exported
graph under exactly that key and hands out deep copies, since callers rewrite them. A miss
exports with strict=False through a copy of torchao's function body, used only while
torchao's source is exactly the one copied (else misses call torchao's own function).

QAT conv-bn fusion (prepare) and folding (convert) also try every conv type — conv1d,
conv2d, conv_transpose1d, conv_transpose2d — exporting and matching its patterns even when the
graph has no such conv. Where a conv type is absent no pattern can match, so the installed
cache runs just the side effects those helpers have without a match (dead-code elimination,
dequantize duplication and its reversal, unused-submodule cleanup) and skips the rest. That
replica is only installed when torchao's and torch's sources are exactly the ones it copies.

`install_pattern_cache()` patches the function where torchao looks it up and
`uninstall_pattern_cache()` restores it. Anything the key cannot describe exactly (a tensor
captured in a closure, an unknown object) goes to torchao's own function uncached, and if
torchao's internals are not what this was written against, nothing is patched.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import importlib
import inspect
import logging
import threading
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.fx import GraphModule

from workbench.locks import EXPORT_LOCK

__all__ = [
    "WARM_IDLE_S",
    "CacheStats",
    "PatternCache",
    "install_pattern_cache",
    "installed_cache",
    "pattern_cache",
    "pattern_key",
    "uninstall_pattern_cache",
    "warm_pattern_cache",
]

log = logging.getLogger(__name__)

_SITES = (
    "torchao.quantization.pt2e.utils",
    "torchao.quantization.pt2e.qat_utils",
    "torchao.quantization.pt2e.reference_representation_rewrite",
)
_FUNCTION = "_get_aten_graph_module_for_pattern"
_EXPECTED_PARAMETERS = (
    ("pattern", inspect.Parameter.POSITIONAL_OR_KEYWORD),
    ("example_inputs", inspect.Parameter.POSITIONAL_OR_KEYWORD),
    ("is_cuda", inspect.Parameter.POSITIONAL_OR_KEYWORD),
    ("kwargs", inspect.Parameter.VAR_KEYWORD),
)
_PRIMITIVES = (bool, int, float, str, bytes, type(None), torch.dtype, torch.device,
               torch.memory_format, torch.layout)  # fmt: skip


class _Uncacheable(Exception):
    """The key would not describe the pattern graph exactly."""


@dataclass
class CacheStats:
    """Counts since installation: hits, misses and calls passed through uncached."""

    hits: int = 0
    misses: int = 0
    uncached: int = 0
    skipped_helpers: int = 0


class PatternCache:
    """The cache itself: a key -> GraphModule map behind a lock, callable like torchao's function.

    `strict` is passed to torch.export on a miss; strict=False was ~4x faster here and gave
    identical graphs (tests compare converted models with the cache on and off). strict=True
    calls torchao's own function.
    """

    def __init__(self, original: Callable[..., GraphModule], *, strict: bool = False) -> None:
        self.original = original
        self.strict = strict
        self.stats = CacheStats()
        self.skipping = False  # whether helpers for absent conv types are skipped
        self._graphs: dict[tuple[Any, ...], GraphModule] = {}
        self._lock = threading.Lock()  # guards the dict and stats; exports hold EXPORT_LOCK

    def __len__(self) -> int:
        return len(self._graphs)

    def clear(self) -> None:
        with self._lock:
            self._graphs.clear()

    def __call__(
        self, pattern: Callable[..., Any], example_inputs: tuple[Any, ...], is_cuda: bool = False,
        **kwargs: Any,
    ) -> GraphModule:  # fmt: skip
        try:
            key = pattern_key(pattern, example_inputs, is_cuda, kwargs)
        except _Uncacheable:
            with EXPORT_LOCK:
                with self._lock:
                    self.stats.uncached += 1
                return self.original(pattern, example_inputs, is_cuda, **kwargs)
        with self._lock:
            graph = self._graphs.get(key)
            if graph is not None:
                self.stats.hits += 1
        if graph is None:
            with EXPORT_LOCK:
                with self._lock:
                    graph = self._graphs.get(key)
                if graph is None:
                    graph = self._export(pattern, example_inputs, is_cuda, kwargs)
                with self._lock:
                    if key in self._graphs:
                        self.stats.hits += 1
                    else:
                        self.stats.misses += 1
                        self._graphs[key] = graph
                    graph = self._graphs[key]
        return copy.deepcopy(graph)

    def _export(
        self, pattern: Callable[..., Any], example_inputs: tuple[Any, ...], is_cuda: bool,
        kwargs: dict[str, Any],
    ) -> GraphModule:  # fmt: skip
        if self.strict:
            return self.original(pattern, example_inputs, is_cuda, **kwargs)
        # torchao's body (hash in _EXPORT_SOURCE) with strict=False where it passes strict=True.
        if is_cuda:
            example_inputs = tuple(
                x.cuda() if isinstance(x, torch.Tensor) else x for x in example_inputs
            )
        graph = torch.export.export(pattern, example_inputs, kwargs, strict=False).module()  # type: ignore[arg-type]
        graph.graph.eliminate_dead_code()
        graph.recompile()
        for node in list(graph.graph.nodes):
            if (
                node.op == "call_function"
                and node.target == torch.ops.aten.copy_.default
                and not node.users
            ):
                graph.graph.erase_node(node)
        graph.graph.eliminate_dead_code()
        graph.recompile()
        return graph


def pattern_key(
    pattern: Callable[..., Any], example_inputs: tuple[Any, ...], is_cuda: bool,
    kwargs: dict[str, Any],
) -> tuple[Any, ...]:  # fmt: skip
    """Everything that determines a pattern's exported graph; raises _Uncacheable otherwise."""
    return (
        _callable_key(pattern, depth=0),
        tuple(_value_key(x, traced=True) for x in example_inputs),
        bool(is_cuda),
        tuple(sorted((k, _value_key(v, traced=True)) for k, v in kwargs.items())),
    )


def _callable_key(fn: Any, *, depth: int) -> tuple[Any, ...]:
    if depth > 8:
        raise _Uncacheable("closures nested too deeply")
    if isinstance(fn, torch.nn.Module):
        inner = getattr(fn, "fn", None)
        # torchao wraps pattern functions in a parameterless WrapperModule(fn).
        if type(fn).__name__ != "WrapperModule" or inner is None or list(fn.parameters()):
            raise _Uncacheable(f"pattern module {type(fn).__name__}")
        fn = inner
    if isinstance(fn, types.MethodType):
        raise _Uncacheable("bound method")
    if isinstance(fn, types.FunctionType):
        cells = tuple(_value_key(c.cell_contents, depth + 1) for c in fn.__closure__ or ())
        defaults = tuple(_value_key(d, depth + 1) for d in fn.__defaults__ or ())
        kwdefaults = tuple(
            sorted((k, _value_key(v, depth + 1)) for k, v in (fn.__kwdefaults__ or {}).items())
        )
        return ("function", fn.__code__, cells, defaults, kwdefaults)
    if isinstance(
        fn, types.BuiltinFunctionType | torch._ops.OpOverload | torch._ops.OpOverloadPacket
    ):
        # Module-level builtins (F.conv2d, aten ops) live as long as the process.
        return ("builtin", id(fn), getattr(fn, "__qualname__", repr(fn)))
    raise _Uncacheable(f"callable of type {type(fn).__name__}")


def _value_key(value: Any, depth: int = 0, *, traced: bool = False) -> Any:
    """Key of a value; `traced` values are export inputs, whose tensor values do not matter."""
    if isinstance(value, torch.Tensor):
        if not traced:
            # A tensor held by the pattern itself becomes a constant of the graph.
            raise _Uncacheable("tensor captured by the pattern")
        return ("tensor", tuple(value.shape), value.dtype, value.device.type, value.requires_grad)
    if isinstance(value, (*_PRIMITIVES, torch.qscheme)):
        return (type(value).__name__, value)
    if isinstance(value, tuple | list):
        return (
            type(value).__name__,
            tuple(_value_key(v, depth + 1, traced=traced) for v in value),
        )
    if callable(value):
        return _callable_key(value, depth=depth + 1)
    raise _Uncacheable(f"value of type {type(value).__name__}")


_installed: PatternCache | None = None
_install_lock = threading.Lock()


def install_pattern_cache(*, strict: bool = False) -> PatternCache | None:
    """Patch torchao to use the cache; returns it, or None when torchao's internals differ."""
    global _installed
    with _install_lock:
        if _installed is not None:
            return _installed
        modules = _patch_sites()
        if modules is None:
            return None
        original = getattr(modules[0], _FUNCTION)
        if not strict and not _same_source(original, _EXPORT_SOURCE):
            log.warning("pattern cache: %s changed, misses export it strictly", _FUNCTION)
            strict = True
        cache = PatternCache(original, strict=strict)
        for module in modules:
            setattr(module, _FUNCTION, cache)
        cache.skipping = _install_conv_skips()
        _installed = cache
        return cache


def uninstall_pattern_cache() -> None:
    """Restore torchao's own function everywhere the cache was installed."""
    global _installed
    with _install_lock:
        if _installed is None:
            return
        for module in _modules():
            if getattr(module, _FUNCTION, None) is _installed:
                setattr(module, _FUNCTION, _installed.original)
        _uninstall_conv_skips()
        _installed = None


def installed_cache() -> PatternCache | None:
    return _installed


@contextlib.contextmanager
def pattern_cache(*, strict: bool = False) -> Iterator[PatternCache | None]:
    """The cache, installed for the duration of a `with` block (if it was not already)."""
    already = _installed is not None
    cache = install_pattern_cache(strict=strict)
    try:
        yield cache
    finally:
        if not already:
            uninstall_pattern_cache()


WARM_IDLE_S = 1.0  # the warm-up's steps wait for the export lock to be idle this long


def warm_pattern_cache(stop: threading.Event | None = None) -> None:
    """Fill the cache with the patterns of a QAT prepare/convert of conv1d/conv2d-bn-relu.

    The keys do not depend on the user's model, so this makes the first real convert fast.
    Once `stop` is set, it returns before its next step (a server shutting down waits for
    one step, not for the whole warm-up).
    """
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_qat_pt2e

    from workbench.quantization.quantizer import base_quantizer

    class Tiny(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = torch.nn.Conv1d(2, 2, 1)
            self.bn1 = torch.nn.BatchNorm1d(2)
            self.conv2 = torch.nn.Conv2d(2, 2, 1, bias=False)
            self.bn2 = torch.nn.BatchNorm2d(2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = torch.relu(self.bn1(self.conv1(x.flatten(2)))).reshape(x.shape)
            return torch.relu(self.bn2(self.conv2(y)))

    example = (torch.randn(2, 2, 2, 2),)

    def step() -> contextlib.AbstractContextManager[None]:
        if stop is not None and stop.is_set():
            raise _WarmUpStopped
        return EXPORT_LOCK.when_idle(WARM_IDLE_S)

    # Each step holds EXPORT_LOCK whole, as a session's own steps do: torchao's passes are
    # not thread-safe between their pattern exports either (run unlocked, a session's export
    # at the same time reloaded 0.0124 away from its in-memory model). A step of a cold cache
    # holds it for seconds, so each starts only once nobody has used the lock for a second:
    # a session's calibration or QAT run is never held up step by step.
    with contextlib.suppress(_WarmUpStopped):
        for backend in ("x86_inductor", "xnnpack"):
            with step():
                model = torch.export.export(Tiny().eval(), example).module()
            with step():
                prepared = prepare_qat_pt2e(model, base_quantizer(backend, is_qat=True))
            with step():
                prepared(*example)
            with step():
                move_exported_model_to_eval(prepared)
            with step():
                convert_pt2e(prepared)


class _WarmUpStopped(Exception):
    """Raised between warm-up steps once the warm-up was asked to stop."""


def _modules() -> list[types.ModuleType]:
    return [importlib.import_module(name) for name in _SITES]


def _patch_sites() -> list[types.ModuleType] | None:
    """The modules to patch, or None (logged) when they are not what the cache expects."""
    try:
        modules = _modules()
    except ImportError as exc:
        log.warning("pattern cache off: %s", exc)
        return None
    original = getattr(modules[0], _FUNCTION, None)
    if not callable(original):
        log.warning("pattern cache off: torchao has no %s", _FUNCTION)
        return None
    parameters = tuple((p.name, p.kind) for p in inspect.signature(original).parameters.values())
    if parameters != _EXPECTED_PARAMETERS:
        log.warning("pattern cache off: %s%s is not the expected signature", _FUNCTION,
                    inspect.signature(original))  # fmt: skip
        return None
    if any(getattr(m, _FUNCTION, None) is not original for m in modules):
        log.warning("pattern cache off: torchao's modules hold different %s", _FUNCTION)
        return None
    return modules


# sha256 (first 16 hex digits) of the torchao source PatternCache._export copies ...
_EXPORT_SOURCE = "2760e12e1e6e5325"
# ... and of the sources the conv-helper skip replicates.
_REPLICATED_SOURCES = {
    ("torchao.quantization.pt2e.qat_utils", "_fuse_conv_bn_qat_helper"): "bbed991592d56c25",
    ("torchao.quantization.pt2e.qat_utils", "_fold_conv_bn_qat_helper"): "a7f715d1f9f169b0",
    ("torchao.quantization.pt2e.qat_utils", "_fuse_conv_bn_qat"): "025776382b400f1f",
    ("torchao.quantization.pt2e.qat_utils", "_fold_conv_bn_qat"): "3454a434fefddb02",
    ("torch.fx.subgraph_rewriter", "_replace_pattern"): "bb1c8a5a74cef19d",
    ("torch.fx.subgraph_rewriter", "_replace_attributes"): "e29e0dd24a0d3623",
}
_HELPERS = ("_fuse_conv_bn_qat_helper", "_fold_conv_bn_qat_helper")
_original_helpers: dict[str, Callable[..., GraphModule]] = {}


def _same_source(function: Any, expected: str) -> bool:
    """Whether `function`'s source hashes to `expected` (sha256, first 16 hex digits)."""
    try:
        source = inspect.getsource(function)
    except (OSError, TypeError):
        return False
    return hashlib.sha256(source.encode()).hexdigest()[:16] == expected


def _replicated_sources_match() -> bool:
    for (module_name, name), expected in _REPLICATED_SOURCES.items():
        if not _same_source(getattr(importlib.import_module(module_name), name, None), expected):
            log.warning("conv-helper skip off: %s.%s changed", module_name, name)
            return False
    return True


def _has_conv(m: GraphModule, conv_fn: Callable[..., Any]) -> bool:
    name = getattr(conv_fn, "__name__", None)
    return name is None or any(
        node.op == "call_function"
        and isinstance(node.target, torch._ops.OpOverload)
        and node.target._overloadpacket.__name__ == name
        for node in m.graph.nodes
    )


def _skipping(helper: str, without_match: Callable[[GraphModule], None]) -> Callable[..., Any]:
    """A replacement for `helper` that runs only `without_match` where its conv type is absent."""

    def replacement(m: GraphModule, conv_fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if _has_conv(m, conv_fn):
            return _original_helpers[helper](m, conv_fn, *args, **kwargs)
        if _installed is not None:
            with _installed._lock:
                _installed.stats.skipped_helpers += 1
        without_match(m)
        return m

    return replacement


def _fuse_without_match(m: GraphModule) -> None:
    """What _fuse_conv_bn_qat_helper does when none of its patterns match."""
    import torchao.quantization.pt2e.qat_utils as qat_utils

    m.graph.eliminate_dead_code()
    m.recompile()
    for _ in range(2):  # two replace_pattern_with_filters calls, each followed by recompile
        m.delete_all_unused_submodules()
        m.recompile()
        m.recompile()
    for node in m.graph.nodes:
        qat_utils._update_special_qspecs_after_replacement(node, {})


def _fold_without_match(m: GraphModule) -> None:
    """What _fold_conv_bn_qat_helper does when none of its patterns match."""
    import torchao.quantization.pt2e.qat_utils as qat_utils

    m.graph.eliminate_dead_code()
    m.recompile()
    qat_utils._duplicate_dequantize_node(m)
    m.delete_all_unused_submodules()
    m.recompile()
    qat_utils._remove_extra_dequantize(m)
    m.graph.eliminate_dead_code()
    m.recompile()


def _install_conv_skips() -> bool:
    import torchao.quantization.pt2e.qat_utils as qat_utils

    if not _replicated_sources_match():
        return False
    for name, without_match in zip(_HELPERS, (_fuse_without_match, _fold_without_match),
                                   strict=True):  # fmt: skip
        _original_helpers[name] = getattr(qat_utils, name)
        setattr(qat_utils, name, _skipping(name, without_match))
    return True


def _uninstall_conv_skips() -> None:
    import torchao.quantization.pt2e.qat_utils as qat_utils

    for name, original in _original_helpers.items():
        setattr(qat_utils, name, original)
    _original_helpers.clear()
