"""MobileNetV2-style image classifiers with random weights, for QAT quality checks on
`random` data (quality is agreement with the float model), as `path/to/mobilenet_v2.py:FUNC`
names them.

`mobilenet_v2` is our own: a stem conv, inverted residual blocks (1x1 expand, 3x3 depthwise,
1x1 project, each conv followed by BatchNorm, ReLU6 after the first two, a residual add where
the shape allows) and a linear head. `hf_mobilenet_v2` is transformers' MobileNetV2 from a
small config. Both are random-init: their BatchNorm running statistics are the defaults
(mean 0, variance 1), far from the statistics of any batch, as in a model that was never
trained; heads are fitted so that predictions spread over the classes (`_fit_head`).
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from torch import nn

CLASSES = 10


class InvertedResidual(nn.Module):
    """1x1 expand -> 3x3 depthwise -> 1x1 project, BN after each, ReLU6 after the first two."""

    def __init__(self, inp: int, out: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = inp * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [nn.Conv2d(inp, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6()]
        layers += [
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(),
            nn.Conv2d(hidden, out, 1, bias=False),
            nn.BatchNorm2d(out),
        ]
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and inp == out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.residual else self.conv(x)


class MobileNetV2Style(nn.Module):
    """A small MobileNetV2: stem, six inverted residual blocks, 1x1 conv, pool, linear head."""

    def __init__(self, classes: int = CLASSES) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16),
                                  nn.ReLU6())  # fmt: skip
        blocks = [(16, 8, 1, 1), (8, 16, 2, 4), (16, 16, 1, 4), (16, 24, 2, 4), (24, 24, 1, 4),
                  (24, 32, 1, 4)]  # fmt: skip
        self.blocks = nn.Sequential(*[InvertedResidual(*b) for b in blocks])
        self.last = nn.Sequential(nn.Conv2d(32, 64, 1, bias=False), nn.BatchNorm2d(64),
                                  nn.ReLU6())  # fmt: skip
        self.classifier = nn.Linear(64, classes)
        for module in self.modules():  # torchvision's MobileNetV2 initialisation
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.last(self.blocks(self.stem(x)))
        return self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def _set_bn_statistics(model: nn.Module) -> None:
    """Set every BatchNorm's running statistics to those of random inputs like the example's
    (a cumulative average over four batches), as training on them would leave them."""
    generator = torch.Generator().manual_seed(2)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
    model.train()
    with torch.no_grad():
        for _ in range(4):
            model(torch.rand(64, *_example()[0].shape[1:], generator=generator))
    for norm in norms:
        norm.momentum = 0.1
    model.eval()


def _fit_head(model: nn.Module, head: nn.Linear) -> None:
    """Give `head` N(0, 1) weights, then centre and scale them on random inputs like the
    example's: pooled features of i.i.d. pixels barely vary between inputs, so an uncentred
    head would give every input the same argmax."""
    features: list[torch.Tensor] = []
    hook = head.register_forward_hook(lambda m, args, out: features.append(args[0].detach()))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        model(torch.rand(256, *_example()[0].shape[1:], generator=generator))
        hook.remove()
        pooled = features[0].flatten(1)
        weight = torch.randn(head.weight.shape, generator=generator)
        logits = (pooled - pooled.mean(0)) @ weight.T
        weight /= logits.std()
        head.weight.copy_(weight)
        head.bias.copy_(-(weight @ pooled.mean(0)))


def _example() -> tuple[torch.Tensor]:
    return (torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0)),)


def mobilenet_v2() -> tuple[nn.Module, tuple[torch.Tensor]]:
    """Our MobileNetV2-style classifier (10 classes, 1x3x32x32 inputs in [0, 1))."""
    torch.manual_seed(0)
    model = MobileNetV2Style()
    _set_bn_statistics(model)
    _fit_head(model, model.classifier)
    return model, _example()


def hf_mobilenet_v2() -> tuple[nn.Module, tuple[torch.Tensor]]:
    """transformers' MobileNetV2 from a small config (returns ModelOutput)."""
    from transformers import MobileNetV2Config, MobileNetV2ForImageClassification

    torch.manual_seed(0)
    config = MobileNetV2Config(num_channels=3, image_size=32, depth_multiplier=0.35,
                               num_labels=CLASSES)  # fmt: skip
    model = MobileNetV2ForImageClassification(config)
    _set_bn_statistics(model)
    _fit_head(model, model.classifier)
    return model, _example()
