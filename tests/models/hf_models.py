"""transformers models built from small configs (random weights, nothing downloaded), as
`path/to/hf_models.py:FUNC` names them, and data functions for them.

Heads are re-initialised with N(0, 0.5) weights: a random-init HF head can be nearly
constant (one argmax for every input), and agreement would then mean nothing.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

VOCAB, LABELS, SEQ = 96, 3, 16


def _reinit_head(head: nn.Module) -> None:
    generator = torch.Generator().manual_seed(1)
    for module in head.modules():
        if isinstance(module, nn.Linear):
            with torch.no_grad():
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * 0.5)
                if module.bias is not None:
                    module.bias.zero_()


def resnet() -> tuple[nn.Module, tuple[torch.Tensor]]:
    """An HF ResNet image classifier (conv-BN blocks, residual adds); returns ModelOutput."""
    from transformers import ResNetConfig, ResNetForImageClassification

    torch.manual_seed(0)
    config = ResNetConfig(
        num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
        layer_type="basic", num_labels=4,
    )  # fmt: skip
    model = ResNetForImageClassification(config).eval()
    _reinit_head(model.classifier)
    return model, (torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0)),)


def bert() -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """An HF BERT text classifier taking input_ids and attention_mask as keyword inputs."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=64, num_labels=LABELS,
    )  # fmt: skip
    model = BertForSequenceClassification(config).eval()
    _reinit_head(model.classifier)
    return model, _tokens(4, SEQ, torch.Generator().manual_seed(0))


def _tokens(count: int, length: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    ids = torch.randint(1, VOCAB, (count, length), generator=generator)
    lengths = torch.randint(length // 2, length + 1, (count, 1), generator=generator)
    mask = (torch.arange(length) < lengths).long()
    return {"input_ids": ids * mask, "attention_mask": mask}


class _Sentences(Dataset):
    """Token sequences with labels, one dict per sample (as an HF dataset yields them)."""

    def __init__(self, count: int, seed: int) -> None:
        self.count, self.seed = count, seed

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + index)
        sample = {k: v[0] for k, v in _tokens(1, SEQ, generator).items()}
        sample["labels"] = torch.randint(0, LABELS, (), generator=generator)
        return sample


def bert_loader(split: str) -> DataLoader[Any]:
    """A DataLoader of dict batches (input_ids, attention_mask, labels), per split."""
    return DataLoader(_Sentences(48 if split == "train" else 16, 0 if split == "train" else 1),
                      batch_size=8)  # fmt: skip


def bert_unlabelled(split: str) -> Iterator[dict[str, torch.Tensor]]:
    """Dict batches without labels, at two sequence lengths (12 and 16): quality is agreement."""
    generator = torch.Generator().manual_seed(0 if split == "train" else 1)
    for index in range(4):
        yield _tokens(8, 12 if index % 2 else SEQ, generator)


def bert_without_mask(split: str) -> Iterator[dict[str, torch.Tensor]]:
    """Dict batches that lack the attention mask the model takes."""
    generator = torch.Generator().manual_seed(0)
    for _ in range(2):
        yield {"input_ids": _tokens(4, SEQ, generator)["input_ids"],
               "labels": torch.zeros(4, dtype=torch.long)}  # fmt: skip


def bert_too_long(split: str) -> Iterator[dict[str, torch.Tensor]]:
    """Dict batches of 80 tokens: longer than the model's 64 position embeddings."""
    yield _tokens(4, 80, torch.Generator().manual_seed(0))
