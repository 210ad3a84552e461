"""BERT4Rec (Sun et al., CIKM 2019): a bidirectional Transformer trained with the cloze objective.

Training masks a fraction of the items with a [MASK] token (item id N + 1) and predicts them from both
sides; at inference a [MASK] is appended after the history and its state ranks the next item.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from trainer.backbones.base import Backbone, register


@register("bert4rec")
class BERT4Rec(Backbone):
    causal = False

    def __init__(self, cfg):
        super().__init__()
        d = cfg.hidden
        self.pos = nn.Embedding(cfg.max_len, d)
        self.norm = nn.LayerNorm(d)
        self.drop = nn.Dropout(cfg.dropout)
        layer = nn.TransformerEncoderLayer(
            d, cfg.n_heads, dim_feedforward=4 * d, dropout=cfg.dropout, activation="gelu", batch_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, cfg.n_layers, enable_nested_tensor=False)
        self.head = nn.Linear(d, d)  # the published output transform: dense + GELU + LayerNorm
        self.head_norm = nn.LayerNorm(d)

    def forward(self, x: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        L = x.size(1)
        x = self.drop(self.norm(x + self.pos.weight[:L]))  # (B, L, D)
        h = self.encoder(x, src_key_padding_mask=pad)  # (B, L, D), padding never attended to
        return self.head_norm(F.gelu(self.head(h)))  # (B, L, D)
