"""The README's examples are real: the recipe parses and fits the default sample."""

from __future__ import annotations

import re
from pathlib import Path

from workbench.graph.view import GraphView
from workbench.quantization.recipe import Recipe, effective_settings, validate

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_recipe_example_fits_digits_cnn(views: dict[str, GraphView]) -> None:
    digits_view = views["digits_cnn"]
    block = re.search(r"### Recipe schema.*?```json\n(.*?)```", README.read_text(), re.S)
    assert block is not None
    recipe = Recipe.from_json(block[1])
    validate(recipe, digits_view)
    settings = effective_settings(recipe, digits_view)
    assert settings["linear"].rule == "node:linear"
    assert settings["linear"].setting.keep_float is True
    assert settings["conv2d_1"].setting.weight_dtype == "int4"
    assert settings["conv2d_1"].sources["observer"] == "module:block*.conv?"
    assert settings["relu_1"].sources["activation_dtype"] == "module:block1"
    assert settings["conv2d"].rule == "default"


def test_readme_starts_with_the_two_commands() -> None:
    lines = README.read_text().splitlines()
    commands = [line for line in lines[:8] if line.startswith("make ")]
    assert [c.split()[1] for c in commands] == ["run", "test"]
