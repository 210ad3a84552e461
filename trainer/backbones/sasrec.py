"""SASRec (Kang & McAuley, ICDM 2018): a causal Transformer over the item sequence.

NOTE: like RecBole, this uses post-norm layers with GELU and right padding with learned absolute positions
(the paper left-pads); at real positions the two are equivalent under the causal mask.
"""

from __future__ import annotations

import torch

from trainer.backbones.base import TransformerBackbone, causal_mask, register


@register("sasrec")
class SASRec(TransformerBackbone):
    causal = True

    def forward(self, x: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)  # (B, L, D)
        # Padding sits after the real items, so the causal mask alone keeps real positions clean.
        return self.encoder(x, mask=causal_mask(x.size(1), x.device), is_causal=True)  # (B, L, D)
