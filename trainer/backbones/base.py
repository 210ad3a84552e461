"""The one interface every backbone implements, the shared masking/gather helpers, and the registry.

A backbone maps item representations to sequence representations; it never owns the item table, so the
same SASRec runs on ID embeddings or on fused ID + modality representations. Sequences are right-padded
with item 0 (RecBole's layout): with a causal model the outputs at real positions never see padding.
"""

from __future__ import annotations

import torch
from torch import nn


class Backbone(nn.Module):
    """x (B, L, D) item representations, pad (B, L) bool True at padding -> (B, L, D) sequence states.

    `causal`: True when the state at position t summarises items 0..t and predicts item t + 1 (SASRec,
    GRU4Rec); False for cloze models (BERT4Rec) that predict masked positions from both sides.
    """

    causal: bool = True

    def forward(self, x: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @staticmethod
    def score(h: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Scores over all items: h (..., D) x items (N + 1, D) -> (..., N + 1)."""
        return h @ items.T


class TransformerBackbone(Backbone):
    """Learned absolute positions + LayerNorm + dropout on the input, then post-norm GELU Transformer
    layers (RecBole's layout), shared by SASRec (causal mask) and BERT4Rec (bidirectional)."""

    def __init__(self, cfg):
        super().__init__()
        d = cfg.hidden
        self.pos = nn.Embedding(cfg.max_len, d)
        # NOTE: std 0.02 like the item embeddings (RecBole's init). nn.Embedding's default N(0, 1) is 50x larger:
        # after the LayerNorm the model then sees almost only the position and learns items very slowly.
        nn.init.normal_(self.pos.weight, std=0.02)
        self.norm = nn.LayerNorm(d)
        self.drop = nn.Dropout(cfg.dropout)
        layer = nn.TransformerEncoderLayer(
            d, cfg.n_heads, dim_feedforward=4 * d, dropout=cfg.dropout, activation="gelu", batch_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, cfg.n_layers, enable_nested_tensor=False)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, D) item representations -> (B, L, D) with positions, normalised, dropped out."""
        return self.drop(self.norm(x + self.pos.weight[: x.size(1)]))


def gather_at(h: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """h (B, L, D), index (B,) -> (B, D): the state at one position per sequence (e.g. its last item)."""
    return h[torch.arange(h.size(0), device=h.device), index]


def causal_mask(length: int, device: torch.device) -> torch.Tensor:
    """(L, L) float mask with -inf above the diagonal: position t attends to 0..t only."""
    return nn.Transformer.generate_square_subsequent_mask(length, device=device)


BACKBONES: dict[str, type[Backbone]] = {}


def register(name: str):
    def wrap(cls: type[Backbone]) -> type[Backbone]:
        BACKBONES[name] = cls
        return cls

    return wrap


def build_backbone(cfg) -> Backbone:
    """cfg: trainer.config.ModelConfig (backbone by name, sizes, dropout)."""
    if cfg.backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {cfg.backbone!r}; known: {', '.join(sorted(BACKBONES))}")
    return BACKBONES[cfg.backbone](cfg)
