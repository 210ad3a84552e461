"""SASRec (Kang & McAuley, ICDM 2018): a causal Transformer over the item sequence.

NOTE: like RecBole, this uses post-norm layers with GELU and right padding with learned absolute positions
(the paper left-pads); at real positions the two are equivalent under the causal mask.
"""
from __future__ import annotations

import torch
from torch import nn

from trainer.backbones.base import Backbone, causal_mask, register


@register("sasrec")
class SASRec(Backbone):
    causal = True

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

    def forward(self, x: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        L = x.size(1)
        x = self.drop(self.norm(x + self.pos.weight[:L]))  # (B, L, D)
        # Padding sits after the real items, so the causal mask alone keeps real positions clean.
        return self.encoder(x, mask=causal_mask(L, x.device), is_causal=True)  # (B, L, D)
