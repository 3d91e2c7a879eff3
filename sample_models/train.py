"""Reproducibly (re)train the sample models and write their weights and test accuracies.

Usage::

    python -m sample_models.train                 # all samples
    python -m sample_models.train --name mobilenet --epochs 40

Writes ``sample_models/weights/<name>.pt`` (a plain state_dict) and merges the float test
accuracy (%) into ``sample_models/weights/accuracy.json``. Training is single-threaded with
``torch.use_deterministic_algorithms(True)``, a fixed init seed and a fixed shuffling /
augmentation generator, so re-running it reproduces the same weights on the same machine and
torch build.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from . import attention_mlp, digits_cnn, mobilenet
from ._weights import ACCURACY_FILE, WEIGHTS_DIR, read_accuracies, weights_path
from .data import accuracy, load_digits_split

logger = logging.getLogger(__name__)

__all__ = [
    "CONFIGS",
    "TrainConfig",
    "TrainResult",
    "main",
    "shift_augment",
    "train_sample",
    "write_accuracies",
]


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters used to train one sample model."""

    epochs: int
    lr: float = 3e-3
    weight_decay: float = 1e-4
    batch_size: int = 64
    augment: bool = True
    seed: int = 0


@dataclass(frozen=True)
class TrainResult:
    """Outcome of training one sample: its test accuracy (%) and wall time (s)."""

    name: str
    accuracy: float
    seconds: float
    num_params: int


_BUILDERS = {
    digits_cnn.NAME: digits_cnn.build,
    mobilenet.NAME: mobilenet.build,
    attention_mlp.NAME: attention_mlp.build,
}

CONFIGS: dict[str, TrainConfig] = {
    digits_cnn.NAME: TrainConfig(epochs=30),
    mobilenet.NAME: TrainConfig(epochs=40),
    attention_mlp.NAME: TrainConfig(epochs=100, lr=3e-3, weight_decay=1e-4),
}


def shift_augment(x: torch.Tensor, generator: torch.Generator, max_shift: int = 1) -> torch.Tensor:
    """Randomly translate each ``(N, 1, 8, 8)`` image by up to ``max_shift`` pixels (zero fill)."""
    size = 2 * max_shift + 1
    padded = F.pad(x, (max_shift, max_shift, max_shift, max_shift))
    choice = torch.randint(0, size * size, (x.shape[0],), generator=generator)
    out = torch.empty_like(x)
    h, w = x.shape[-2:]
    for k in range(size * size):
        mask = choice == k
        dy, dx = divmod(k, size)
        out[mask] = padded[mask, :, dy : dy + h, dx : dx + w]
    return out


def train_sample(name: str, config: TrainConfig | None = None) -> TrainResult:
    """Train sample ``name`` from a seeded init, save its weights and return its test accuracy.

    Does not touch ``accuracy.json``; :func:`main` merges the results into it.
    """
    if name not in _BUILDERS:
        raise KeyError(f"unknown sample model {name!r}; available: {', '.join(_BUILDERS)}")
    cfg = config or CONFIGS[name]
    torch.manual_seed(cfg.seed)
    model, _ = _BUILDERS[name](pretrained=False)
    split = load_digits_split()
    generator = torch.Generator().manual_seed(cfg.seed)

    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = -(-len(split.train_x) // cfg.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=cfg.lr, total_steps=cfg.epochs * steps_per_epoch
    )
    loss_fn = nn.CrossEntropyLoss()
    num_params = sum(p.numel() for p in model.parameters())
    logger.info("training %s (%d params) for %d epochs", name, num_params, cfg.epochs)

    start = time.perf_counter()
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        order = torch.randperm(len(split.train_x), generator=generator)
        total_loss = 0.0
        for i in range(0, len(order), cfg.batch_size):
            idx = order[i : i + cfg.batch_size]
            xb, yb = split.train_x[idx], split.train_y[idx]
            if cfg.augment:
                xb = shift_augment(xb, generator)
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(xb), yb)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total_loss += loss.item() * len(idx)
        if epoch % 10 == 0 or epoch == cfg.epochs:
            logger.info(
                "%s epoch %d/%d loss %.4f train acc %.2f%%",
                name,
                epoch,
                cfg.epochs,
                total_loss / len(order),
                accuracy(model, split.train_x, split.train_y),
            )
    seconds = time.perf_counter() - start

    model.eval()
    test_acc = round(accuracy(model, split.test_x, split.test_y), 2)
    WEIGHTS_DIR.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), weights_path(name))
    logger.info(
        "%s: test accuracy %.2f%% in %.1f s -> %s", name, test_acc, seconds, weights_path(name)
    )
    return TrainResult(name=name, accuracy=test_acc, seconds=seconds, num_params=num_params)


def write_accuracies(results: Sequence[TrainResult]) -> None:
    """Merge trained accuracies into ``weights/accuracy.json`` (keys in registry order)."""
    merged = read_accuracies()
    merged.update({r.name: r.accuracy for r in results})
    ordered = {n: merged[n] for n in _BUILDERS if n in merged}
    ACCURACY_FILE.write_text(json.dumps(ordered, indent=2) + "\n", encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> list[TrainResult]:
    """Command-line entry point: train the requested samples and record their accuracies."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--name",
        choices=list(_BUILDERS),
        action="append",
        help="sample to train (repeatable; default: all)",
    )
    parser.add_argument("--epochs", type=int, default=None, help="override the epoch count")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (fixed for reproducibility; default 1)",
    )
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    results = []
    for name in args.name or list(_BUILDERS):
        cfg = CONFIGS[name]
        if args.epochs is not None:
            cfg = TrainConfig(**{**cfg.__dict__, "epochs": args.epochs})
        results.append(train_sample(name, cfg))
    write_accuracies(results)
    return results


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    table = main()
    print(f"{'sample':<15}{'params':>8}{'test acc %':>12}{'seconds':>10}")
    for r in table:
        print(f"{r.name:<15}{r.num_params:>8}{r.accuracy:>12.2f}{r.seconds:>10.1f}")
