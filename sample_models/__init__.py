"""Registry of small trained float PyTorch sample models for the PT2E quantization workbench.

Every sample classifies scikit-learn's 8x8 digits: it takes a float ``(N, 1, 8, 8)`` batch
and returns ``(N, 10)`` logits, and it can be captured by ``torch.export`` with a dynamic
batch dimension. Use :func:`names` to list the samples and :func:`build` to get one::

    model, example_inputs = sample_models.build("digits_cnn")
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from . import attention_mlp, digits_cnn, mobilenet
from ._weights import ACCURACY_FILE, recorded_accuracy, weights_path
from .data import DigitsSplit, accuracy, load_digits_split

BuildFn = Callable[..., tuple[nn.Module, tuple[torch.Tensor, ...]]]

__all__ = [
    "ACCURACY_FILE",
    "DEFAULT_SAMPLE",
    "SAMPLES",
    "DigitsSplit",
    "SampleInfo",
    "accuracy",
    "build",
    "load_digits_split",
    "names",
    "weights_path",
]


@dataclass(frozen=True)
class SampleInfo:
    """Metadata of one registered sample model and how to build it.

    ``accuracy`` is the float model's top-1 test accuracy (%) on the digits split, read from
    ``weights/accuracy.json`` (written by ``python -m sample_models.train``) and rounded to 2
    decimals; it is NaN if the sample has not been trained yet.
    """

    name: str
    description: str
    module: str
    build: BuildFn
    accuracy: float


def _info(name: str, description: str, module: object, build_fn: BuildFn) -> SampleInfo:
    """Create a registry entry whose accuracy comes from ``weights/accuracy.json``."""
    return SampleInfo(
        name=name,
        description=description,
        module=getattr(module, "__name__", str(module)),
        build=build_fn,
        accuracy=recorded_accuracy(name),
    )


SAMPLES: dict[str, SampleInfo] = {
    digits_cnn.NAME: _info(
        digits_cnn.NAME,
        "Residual CNN: conv-bn-relu stem, residual block with identity add, max-pool, "
        "conv-bn-relu, global average pool, linear head.",
        digits_cnn,
        digits_cnn.build,
    ),
    mobilenet.NAME: _info(
        mobilenet.NAME,
        "MobileNetV2-style: conv-bn-relu6 stem, inverted residual blocks (depthwise 3x3 + "
        "pointwise 1x1, skip add), ReLU6/Hardswish, global average pool, linear head.",
        mobilenet,
        mobilenet.build,
    ),
    attention_mlp.NAME: _info(
        attention_mlp.NAME,
        "One-block transformer over the 8 image rows as tokens: linear embedding, learned "
        "positions, 2-head self-attention (matmul/softmax), GELU MLP, LayerNorms, mean pool.",
        attention_mlp,
        attention_mlp.build,
    ),
}

DEFAULT_SAMPLE = digits_cnn.NAME


def names() -> list[str]:
    """List the registered sample names, in registry order."""
    return list(SAMPLES)


def build(
    name: str = DEFAULT_SAMPLE, pretrained: bool = True
) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """Build sample ``name`` in eval mode and return ``(model, example_inputs)``.

    Raises:
        KeyError: if ``name`` is not a registered sample; the message lists the valid names.
    """
    try:
        info = SAMPLES[name]
    except KeyError:
        raise KeyError(f"unknown sample model {name!r}; available: {', '.join(names())}") from None
    return info.build(pretrained=pretrained)
