"""Tiny one-block transformer over image rows (8 tokens x 8 pixels) for the digits."""

from __future__ import annotations

import math

import torch
from torch import nn

from ._weights import finish_build

NAME = "attention_mlp"
NUM_TOKENS = 8
TOKEN_DIM = 8
__all__ = ["NAME", "MultiHeadSelfAttention", "TinyAttentionMLP", "TransformerBlock", "build"]


class MultiHeadSelfAttention(nn.Module):
    """Explicit multi-head self-attention: q/k/v Linear, scaled matmul, softmax, out Linear."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = 1.0 / math.sqrt(self.head_dim)
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def _split_heads(self, t: torch.Tensor) -> torch.Tensor:
        """Reshape ``(N, T, D)`` to ``(N, H, T, D/H)`` without touching the batch size."""
        return t.reshape(-1, NUM_TOKENS, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Attend over the tokens of ``x`` shaped ``(N, T, D)``."""
        q = self._split_heads(self.q_proj(x))
        k = self._split_heads(self.k_proj(x))
        v = self._split_heads(self.v_proj(x))
        scores = torch.matmul(q, k.transpose(-2, -1)) * self.scale
        weights = torch.softmax(scores, dim=-1)
        out = torch.matmul(weights, v)
        out = out.transpose(1, 2).reshape(-1, NUM_TOKENS, self.num_heads * self.head_dim)
        return self.out_proj(out)


class TransformerBlock(nn.Module):
    """Pre-norm transformer block: LN, attention, residual add, LN, Linear-GELU-Linear, add."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: int = 2) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = MultiHeadSelfAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, dim * mlp_ratio)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(dim * mlp_ratio, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply attention and MLP sub-blocks, each with a residual add."""
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(self.act(self.fc1(self.norm2(x))))


class TinyAttentionMLP(nn.Module):
    """Row-token transformer classifier: ``(N, 1, 8, 8)`` images to ``(N, 10)`` logits."""

    def __init__(
        self, dim: int = 32, num_heads: int = 2, mlp_ratio: int = 2, num_classes: int = 10
    ) -> None:
        super().__init__()
        self.embed = nn.Linear(TOKEN_DIM, dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, NUM_TOKENS, dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.block = TransformerBlock(dim, num_heads, mlp_ratio)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map a ``(N, 1, 8, 8)`` image batch to ``(N, 10)`` logits."""
        tokens = x.reshape(-1, NUM_TOKENS, TOKEN_DIM)
        h = self.embed(tokens) + self.pos_embed
        h = self.block(h)
        h = self.norm(h.mean(dim=1))
        return self.head(h)


def build(pretrained: bool = True) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """Build the row-attention model in eval mode plus a 1-tuple of 4 example test images."""
    return finish_build(TinyAttentionMLP(), NAME, pretrained)
