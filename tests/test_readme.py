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


def test_readme_layout_lists_every_package_once() -> None:
    """The layout table has one row per library package and per top-level folder of code."""
    layout = README.read_text().split("## Layout", 1)[1]
    cells = re.findall(r"^\| ([^|]+) \|", layout, re.M)  # the first cell of each row
    rows = [path for cell in cells for path in re.findall(r"`([^`]+)`", cell)]
    root = README.parent
    packages = sorted(
        str(init.parent.relative_to(root)) + "/"
        for init in (root / "workbench").rglob("__init__.py")
        if init.parent != root / "workbench"
    )
    assert packages, "the library has packages"
    for package in packages:
        assert rows.count(package) == 1, package
    for folder in ("workbench/", "app_pages/", "ui/", "sample_models/", "tests/", "benchmarks/"):
        assert any(row == folder or row.startswith(folder) for row in rows), folder
