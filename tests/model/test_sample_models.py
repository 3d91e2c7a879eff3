"""Tests for the trained float sample models in ``sample_models``."""

from __future__ import annotations

import json

import pytest
import torch

import sample_models
from sample_models import ACCURACY_FILE, weights_path
from sample_models.data import accuracy, load_digits_split

PARAM_LIMITS = {"digits_cnn": 30_000, "mobilenet": 40_000, "attention_mlp": 40_000}
MIN_ACCURACY = {"digits_cnn": 97.5, "mobilenet": 95.0, "attention_mlp": 94.0}
BATCH = torch.export.Dim("batch", min=1, max=1024)


@pytest.fixture(scope="module", params=sorted(PARAM_LIMITS))
def built(request: pytest.FixtureRequest) -> tuple[str, torch.nn.Module, tuple[torch.Tensor, ...]]:
    """Build each registered sample once per test module."""
    name = request.param
    model, example_inputs = sample_models.build(name)
    return name, model, example_inputs


def test_registry_builds_what_it_lists() -> None:
    """Every listed sample builds from its name, by the module its entry names; no name
    builds the default, the digits CNN."""
    assert sample_models.names() == ["digits_cnn", "mobilenet", "attention_mlp"]
    for name, info in sample_models.SAMPLES.items():
        model, (example,) = sample_models.build(name, pretrained=False)
        assert type(model).__module__ == info.module
        assert not model.training
        with torch.no_grad():
            assert model(example).shape == (4, 10)
        assert info.description
    default, _ = sample_models.build()
    assert type(default).__name__ == "DigitsCNN"


def test_unknown_name_raises_key_error_listing_names() -> None:
    """An unknown sample name gives a KeyError that names every available sample."""
    with pytest.raises(KeyError) as excinfo:
        sample_models.build("no_such_model")
    message = str(excinfo.value)
    assert "no_such_model" in message
    for name in sample_models.names():
        assert name in message


def test_digits_split() -> None:
    """The split has the documented shapes, dtypes and range and its cache is not shared."""
    split = load_digits_split()
    assert split.train_x.shape == (1437, 1, 8, 8)
    assert split.test_x.shape == (360, 1, 8, 8)
    assert split.train_x.dtype == torch.float32 and split.train_y.dtype == torch.int64
    assert float(split.train_x.min()) == 0.0 and float(split.train_x.max()) == 1.0
    assert torch.bincount(split.test_y).min() >= 35  # stratified: ~36 per class
    split.test_x.zero_()
    again = load_digits_split()
    assert float(again.test_x.sum()) > 0
    assert torch.equal(again.test_y, load_digits_split(seed=0).test_y)


def test_build_and_output_shape(built: tuple) -> None:
    """build() returns an eval-mode model and the first 4 test images; logits are (4, 10)."""
    _, model, example_inputs = built
    assert not model.training
    assert isinstance(example_inputs, tuple) and len(example_inputs) == 1
    assert torch.equal(example_inputs[0], load_digits_split().test_x[:4])
    with torch.no_grad():
        out = model(*example_inputs)
    assert out.shape == (4, 10)


def test_accuracy_matches_recorded(built: tuple) -> None:
    """The committed weights reproduce the test accuracy recorded in accuracy.json."""
    name, model, _ = built
    recorded = json.loads(ACCURACY_FILE.read_text(encoding="utf-8"))[name]
    split = load_digits_split()
    measured = accuracy(model, split.test_x, split.test_y)
    assert measured == pytest.approx(recorded, abs=0.01)
    assert sample_models.SAMPLES[name].accuracy == pytest.approx(recorded, abs=0.01)
    assert measured >= MIN_ACCURACY[name]


def test_size_limits(built: tuple) -> None:
    """Parameter counts and weight files stay small."""
    name, model, _ = built
    assert sum(p.numel() for p in model.parameters()) < PARAM_LIMITS[name]
    assert weights_path(name).stat().st_size < 300_000


def test_export_dynamic_batch_matches_eager(built: tuple) -> None:
    """torch.export with a dynamic batch dim works and matches eager at several batch sizes."""
    _, model, example_inputs = built
    ep = torch.export.export(model, example_inputs, dynamic_shapes={"x": {0: BATCH}})
    exported = ep.module()
    test_x = load_digits_split().test_x
    with torch.no_grad():
        for n in (1, 4, 37):
            x = test_x[:n]
            torch.testing.assert_close(exported(x), model(x), atol=1e-5, rtol=0)
    split = load_digits_split()
    assert accuracy(exported, split.test_x, split.test_y) == pytest.approx(
        accuracy(model, split.test_x, split.test_y), abs=0.01
    )
