"""SASRec (Kang & McAuley, ICDM 2018): a causal Transformer over the item sequence.

NOTE: like RecBole, this uses post-norm layers with GELU and right padding with learned absolute positions
(the paper left-pads); at real positions the two are equivalent under the causal mask. The layers and the
causal forward are TransformerBackbone's.
"""

from __future__ import annotations

from trainer.backbones.base import TransformerBackbone, register


@register("sasrec")
class SASRec(TransformerBackbone):
    causal = True
