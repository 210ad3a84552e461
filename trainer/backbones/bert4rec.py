"""BERT4Rec (Sun et al., CIKM 2019): a bidirectional Transformer trained with the cloze objective.

Training masks a fraction of the items with a [MASK] token (item id N + 1) and predicts them from both
sides; at inference a [MASK] is appended after the history and its state ranks the next item.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from trainer.backbones.base import TransformerBackbone, register


@register("bert4rec")
class BERT4Rec(TransformerBackbone):
    causal = False

    def __init__(self, cfg):
        super().__init__(cfg)
        self.head = nn.Linear(cfg.hidden, cfg.hidden)  # the published output transform: dense + GELU + LayerNorm
        self.head_norm = nn.LayerNorm(cfg.hidden)

    def output(self, h: torch.Tensor) -> torch.Tensor:
        return self.head_norm(F.gelu(self.head(h)))
