"""Weight-file helpers shared by the sample model builders (internal)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import nn

from .data import load_digits_split

__all__ = [
    "ACCURACY_FILE",
    "NUM_EXAMPLES",
    "WEIGHTS_DIR",
    "finish_build",
    "load_weights",
    "read_accuracies",
    "recorded_accuracy",
    "weights_path",
]

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
ACCURACY_FILE = WEIGHTS_DIR / "accuracy.json"
NUM_EXAMPLES = 4


def weights_path(name: str) -> Path:
    """Return where the trained state_dict of sample ``name`` lives."""
    return WEIGHTS_DIR / f"{name}.pt"


def load_weights(model: nn.Module, name: str) -> None:
    """Load the committed state_dict of sample ``name`` into ``model`` (strictly)."""
    path = weights_path(name)
    if not path.is_file():
        raise FileNotFoundError(
            f"no trained weights for sample {name!r} at {path}; "
            f"run `python -m sample_models.train --name {name}` to create them"
        )
    state = torch.load(path, weights_only=True, map_location="cpu")
    model.load_state_dict(state)


def finish_build(
    model: nn.Module, name: str, pretrained: bool
) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """Load weights if asked, switch to eval mode and attach the standard example inputs."""
    if pretrained:
        load_weights(model, name)
    model.eval()
    example = load_digits_split().test_x[:NUM_EXAMPLES].clone()
    return model, (example,)


def read_accuracies() -> dict[str, float]:
    """Read ``weights/accuracy.json`` (sample name -> test accuracy %); empty if missing."""
    if not ACCURACY_FILE.is_file():
        return {}
    raw = json.loads(ACCURACY_FILE.read_text(encoding="utf-8"))
    return {str(k): float(v) for k, v in raw.items()}


def recorded_accuracy(name: str) -> float:
    """Return the recorded float test accuracy of sample ``name``, or NaN if not trained yet."""
    return round(read_accuracies().get(name, math.nan), 2)
