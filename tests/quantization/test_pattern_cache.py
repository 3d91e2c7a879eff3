"""The pattern cache changes nothing but speed: converted models are bit-identical."""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
import torchao.quantization.pt2e.utils as ao_utils
from torch.fx import GraphModule
from torchao.quantization.pt2e.export_utils import WrapperModule

from workbench.data.datasets import load_data
from workbench.model.capture import CapturedModel, capture
from workbench.quantization import pattern_cache as pc
from workbench.quantization.recipe import Recipe
from workbench.stages.steps import calibrate, convert, prepare

SAMPLES = ("digits_cnn", "mobilenet", "attention_mlp")
EXTRA = {
    "conv1d_bn": f"{Path(__file__).parents[1] / 'models' / 'cache_models.py'}:conv1d_bn",
    "linear_bn": f"{Path(__file__).parents[1] / 'models' / 'cache_models.py'}:linear_bn",
}


@pytest.fixture
def no_cache() -> Iterator[None]:
    """Run with torchao's own function, and put back whatever was installed before."""
    before = pc.installed_cache()
    pc.uninstall_pattern_cache()
    try:
        yield
    finally:
        if before is not None:
            pc.install_pattern_cache()


def _convert(captured: CapturedModel, mode: str) -> GraphModule:
    data = load_data("digits", captured.signature)
    prepared = prepare(captured, Recipe(mode=mode))
    return convert(calibrate(prepared, data, batches=2, batch_size=32)).graph_module


@pytest.fixture(scope="module")
def models(captured: dict[str, CapturedModel]) -> dict[str, CapturedModel]:
    return {**{s: captured[s] for s in SAMPLES}, **{k: capture(v) for k, v in EXTRA.items()}}


@pytest.fixture(scope="module")
def bare(models: dict[str, CapturedModel]) -> dict[tuple[str, str], GraphModule]:
    """Every model in PTQ and QAT, converted by bare torchao (no cache installed)."""
    before = pc.installed_cache()
    pc.uninstall_pattern_cache()
    assert ao_utils._get_aten_graph_module_for_pattern.__name__ == pc._FUNCTION
    try:
        return {(s, m): _convert(models[s], m) for s in models for m in ("ptq", "qat")}
    finally:
        if before is not None:
            pc.install_pattern_cache()


def _assert_identical(expected: GraphModule, got: GraphModule, x: torch.Tensor) -> None:
    assert got.code == expected.code
    want, have = expected.state_dict(), got.state_dict()
    assert list(have) == list(want)
    for key in want:
        assert torch.equal(have[key], want[key]), key
    assert torch.equal(got(x), expected(x))


@pytest.mark.slow  # `bare` converts every model with uncached torchao (about a minute)
@pytest.mark.parametrize("mode", ["ptq", "qat"])
@pytest.mark.parametrize("sample", [*SAMPLES, *EXTRA])
def test_cached_convert_is_bit_identical(
    sample: str,
    mode: str,
    models: dict[str, CapturedModel],
    bare: dict[tuple[str, str], GraphModule],
    digits_test_x: torch.Tensor,
) -> None:
    with pc.pattern_cache() as cache:
        assert cache is not None and cache.skipping
        assert ao_utils._get_aten_graph_module_for_pattern is cache
        before = dataclasses.replace(cache.stats)
        first = _convert(models[sample], mode)
        misses = cache.stats.misses
        again = _convert(models[sample], mode)
        assert cache.stats.misses == misses  # the second run is served from the cache
        assert cache.stats.hits - before.hits >= 10
        # QAT fusion (prepare) and folding (convert) try 4 conv types each where the graph has a
        # batch_norm; the absent types are skipped, in each of the two runs.
        absent = {"attention_mlp": 0, "linear_bn": 4}.get(sample, 3)
        skipped = cache.stats.skipped_helpers - before.skipped_helpers
        assert skipped == (absent * 2 * 2 if mode == "qat" else 0)
    x = digits_test_x[:50]
    _assert_identical(bare[(sample, mode)], first, x)
    _assert_identical(bare[(sample, mode)], again, x)


@pytest.mark.slow  # compares with `bare`: uncached torchao converts of every model
def test_two_threads_converting_at_once(
    models: dict[str, CapturedModel],
    bare: dict[tuple[str, str], GraphModule],
    digits_test_x: torch.Tensor,
) -> None:
    results: dict[str, GraphModule] = {}
    errors: list[BaseException] = []

    def work(sample: str) -> None:
        try:
            results[sample] = _convert(models[sample], "qat")
        except BaseException as exc:  # reported below
            errors.append(exc)

    with pc.pattern_cache() as cache:
        assert cache is not None
        cache.clear()  # both threads start cold and race for the same keys
        threads = [threading.Thread(target=work, args=(s,)) for s in ("digits_cnn", "mobilenet")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert not errors
    for sample, got in results.items():
        _assert_identical(bare[(sample, "qat")], got, digits_test_x[:20])


def test_install_is_reversible(no_cache: None) -> None:
    original = ao_utils._get_aten_graph_module_for_pattern
    cache = pc.install_pattern_cache()
    assert cache is not None and cache.original is original
    assert pc.install_pattern_cache() is cache  # idempotent
    for module in pc._modules():
        assert getattr(module, pc._FUNCTION) is cache
    pc.uninstall_pattern_cache()
    for module in pc._modules():
        assert getattr(module, pc._FUNCTION) is original
    assert pc.installed_cache() is None


def test_version_guard_falls_back_when_the_signature_changes(
    no_cache: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def changed(pattern: Any, example_inputs: Any, device: str = "cpu") -> GraphModule:
        raise AssertionError("never called")

    for module in pc._modules():
        monkeypatch.setattr(module, pc._FUNCTION, changed)
    with caplog.at_level(logging.WARNING, logger="workbench.quantization.pattern_cache"):
        assert pc.install_pattern_cache() is None
    assert "is not the expected signature" in caplog.text
    assert pc.installed_cache() is None
    for module in pc._modules():
        assert getattr(module, pc._FUNCTION) is changed  # nothing patched


def test_version_guard_when_modules_disagree(
    no_cache: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import torchao.quantization.pt2e.qat_utils as qat_utils

    other = pc._modules()[0]._get_aten_graph_module_for_pattern

    def wrapper(pattern: Any, example_inputs: Any, is_cuda: bool = False, **kwargs: Any) -> Any:
        return other(pattern, example_inputs, is_cuda, **kwargs)

    monkeypatch.setattr(qat_utils, pc._FUNCTION, wrapper)
    with caplog.at_level(logging.WARNING, logger="workbench.quantization.pattern_cache"):
        assert pc.install_pattern_cache() is None
    assert "hold different" in caplog.text


@pytest.fixture
def installed(no_cache: None) -> Iterator[Any]:
    """`installed()` installs the cache; it is uninstalled again after the test."""
    try:
        yield pc.install_pattern_cache
    finally:
        pc.uninstall_pattern_cache()


def test_installed_copies_match_torchao_sources(installed: Any) -> None:
    cache = installed()
    # Misses run the copied export body, and the copied conv helpers are installed.
    assert cache is not None and not cache.strict and cache.skipping


def test_source_guard_exports_strictly_when_torchao_changed(
    installed: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(pc, "_EXPORT_SOURCE", "0" * 16)
    with caplog.at_level(logging.WARNING, logger="workbench.quantization.pattern_cache"):
        cache = installed()
    assert cache is not None and cache.strict  # misses call torchao's own function
    assert f"{pc._FUNCTION} changed" in caplog.text
    calls: list[tuple[Any, ...]] = []
    original = cache.original

    def spy(*args: Any, **kwargs: Any) -> GraphModule:
        calls.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr(cache, "original", spy)
    ao_utils._get_aten_graph_module_for_pattern(WrapperModule(torch.relu), (torch.randn(3),))
    assert len(calls) == 1 and cache.stats.misses == 1


def test_source_guard_keeps_torchao_helpers_when_they_changed(
    installed: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import torchao.quantization.pt2e.qat_utils as qat_utils

    helper = qat_utils._fuse_conv_bn_qat_helper
    key = ("torchao.quantization.pt2e.qat_utils", "_fuse_conv_bn_qat_helper")
    monkeypatch.setitem(pc._REPLICATED_SOURCES, key, "0" * 16)
    with caplog.at_level(logging.WARNING, logger="workbench.quantization.pattern_cache"):
        cache = installed()
    assert cache is not None and not cache.skipping
    assert qat_utils._fuse_conv_bn_qat_helper is helper
    assert "_fuse_conv_bn_qat_helper changed" in caplog.text


def _closure_pattern(conv: Any, flag: bool) -> Any:
    def pattern(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        y = conv(x, w)
        return torch.relu(y) if flag else y

    return pattern


def test_key_covers_closure_values_inputs_and_kwargs() -> None:
    x2, w2 = torch.randn(1, 1, 3, 3), torch.randn(1, 1, 1, 1)
    key = pc.pattern_key(_closure_pattern(F.conv2d, True), (x2, w2), False, {})
    # A fresh closure over the same values is the same pattern.
    assert pc.pattern_key(_closure_pattern(F.conv2d, True), (x2, w2), False, {}) == key
    assert pc.pattern_key(_closure_pattern(F.conv2d, False), (x2, w2), False, {}) != key
    assert pc.pattern_key(_closure_pattern(F.conv1d, True), (x2, w2), False, {}) != key
    assert pc.pattern_key(_closure_pattern(F.conv2d, True), (x2, w2), True, {}) != key
    bigger = (torch.randn(1, 1, 4, 4), w2)
    assert pc.pattern_key(_closure_pattern(F.conv2d, True), bigger, False, {}) != key
    assert pc.pattern_key(_closure_pattern(F.conv2d, True), (x2.double(), w2), False, {}) != key
    # Values of example tensors do not matter: tracing specialises on shapes only.
    assert pc.pattern_key(_closure_pattern(F.conv2d, True), (x2 * 2, w2), False, {}) == key
    with_kwargs = pc.pattern_key(_closure_pattern(F.conv2d, True), (x2, w2), False, {"s": 1.0})
    assert with_kwargs != key


def test_a_tensor_in_a_closure_is_not_cached(no_cache: None) -> None:
    captured_tensor = torch.randn(3)

    def pattern(x: torch.Tensor) -> torch.Tensor:
        return x + captured_tensor

    with pytest.raises(pc._Uncacheable):
        pc.pattern_key(pattern, (torch.randn(3),), False, {})
    with pc.pattern_cache() as cache:
        assert cache is not None
        graph = ao_utils._get_aten_graph_module_for_pattern(
            WrapperModule(pattern), (torch.randn(3),)
        )
        assert cache.stats.uncached == 1 and len(cache) == 0
    assert [n.op for n in graph.graph.nodes].count("call_function") == 1


def test_a_stopped_warm_up_ends_before_its_next_step(monkeypatch: pytest.MonkeyPatch) -> None:
    """The server's exit sets the event: the warm-up ends after the step it is in."""
    steps = []
    real = pc.EXPORT_LOCK.when_idle

    def counted(seconds: float) -> Any:
        steps.append(seconds)
        if len(steps) == 2:
            stop.set()  # asked to stop during the second step (the first prepare)
        return real(0.0)

    stop = threading.Event()
    monkeypatch.setattr(pc.EXPORT_LOCK, "when_idle", counted)
    with pc.pattern_cache():
        pc.warm_pattern_cache(stop)
    assert steps == [pc.WARM_IDLE_S, pc.WARM_IDLE_S]  # of 10 (5 steps for each backend)
