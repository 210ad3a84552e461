"""GRU4Rec (Hidasi et al., ICLR 2016) in RecBole's form: embedding dropout, a GRU, a dense output layer.

NOTE: trained with full-softmax CE at every position (as RecBole does), not the paper's session-parallel
mini-batches with BPR/TOP1.
"""

from __future__ import annotations

import torch
from torch import nn

from trainer.backbones.base import Backbone, register


@register("gru4rec")
class GRU4Rec(Backbone):
    causal = True

    def __init__(self, cfg):
        super().__init__()
        self.drop = nn.Dropout(cfg.dropout)
        self.gru = nn.GRU(cfg.hidden, cfg.hidden, num_layers=cfg.n_layers, batch_first=True, bias=False)
        self.dense = nn.Linear(cfg.hidden, cfg.hidden)

    def forward(self, x: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        h, _ = self.gru(self.drop(x))  # (B, L, D); right padding cannot reach earlier positions
        return self.dense(h)  # (B, L, D)
