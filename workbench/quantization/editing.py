"""Editing a recipe node by node, as the app's rule editor and settings table do.

Every edit gives a new Recipe (recipes are frozen): a rule set, replaced or removed, or the
cells changed in the table of effective settings turned into node rules.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import pandas as pd

from workbench.graph.view import GraphView
from workbench.quantization.recipe import Effective, MatchKind, Override, QuantSetting, Recipe

__all__ = [
    "SETTING_FIELDS",
    "TABLE_COLUMNS",
    "apply_table_edits",
    "effective_table",
    "rule_setting",
    "set_override",
]

SETTING_FIELDS = tuple(f.name for f in dataclasses.fields(QuantSetting))
TABLE_COLUMNS = ("node", "op", "module", "module_type", "rule", *SETTING_FIELDS)


def set_override(recipe: Recipe, kind: MatchKind, pattern: str, setting: QuantSetting) -> Recipe:
    """The recipe with the rule for (kind, pattern) replaced by `setting`, or removed if empty.

    A rule that already exists keeps its place (later rules of a level win); a new one is
    appended.
    """
    fields = setting.fields_set()
    kept: list[Override] = []
    replaced = False
    for override in recipe.overrides:
        if override.kind == kind and override.pattern == pattern:
            if fields and not replaced:
                kept.append(Override(kind, pattern, setting))
            replaced = True
        else:
            kept.append(override)
    if not replaced and fields:
        kept.append(Override(kind, pattern, setting))
    return dataclasses.replace(recipe, overrides=tuple(kept))


def rule_setting(recipe: Recipe, kind: MatchKind, pattern: str) -> QuantSetting:
    """The setting of the rule for (kind, pattern), empty if there is none."""
    for override in reversed(recipe.overrides):
        if override.kind == kind and override.pattern == pattern:
            return override.setting
    return QuantSetting()


def effective_table(effective: Mapping[str, Effective], view: GraphView) -> pd.DataFrame:
    """One row per quantizable node: what it is, its effective setting and the deciding rule."""
    rows = []
    for name, eff in effective.items():
        node = view[name]
        values = dataclasses.asdict(eff.setting)
        rows.append({
            "node": name, "op": node.op_name, "module": node.module,
            "module_type": node.module_type, **values, "rule": eff.rule,
        })  # fmt: skip
    frame = pd.DataFrame(rows, columns=list(TABLE_COLUMNS))
    frame["keep_float"] = frame["keep_float"].fillna(False).astype(bool)
    return frame


def apply_table_edits(recipe: Recipe, before: pd.DataFrame, after: pd.DataFrame) -> Recipe:
    """Turn cells edited in the table into node rules.

    An edited cell sets that field in the node's own rule (so it wins over module, op and
    default rules); a cell cleared to blank removes the field from the node's rule.
    """
    before = before.set_index("node")
    for _, row in after.iterrows():
        name = row["node"]
        current = rule_setting(recipe, "node", name).fields_set()
        changed = False
        for field in SETTING_FIELDS:
            old, new = before.at[name, field], row[field]
            if (_blank(old) and _blank(new)) or (not _blank(new) and old == new):
                continue
            changed = True
            if _blank(new):
                current.pop(field, None)
            else:
                current[field] = bool(new) if field == "keep_float" else str(new)
        if changed:
            recipe = set_override(recipe, "node", name, QuantSetting(**current))
    return recipe


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, float) and value != value) or value == ""
