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

    def states_at(self, x: torch.Tensor, pad: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
        """(B, D) the states at one position per sequence, at (B,): what evaluation and serving score with.
        Backbones that can skip work for the other positions override it."""
        return gather_at(self(x, pad), at)

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

    def output(self, h: torch.Tensor) -> torch.Tensor:
        """The transform after the last layer, per position (none here; BERT4Rec has a head)."""
        return h

    def forward(self, x: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)  # (B, L, D)
        if self.causal:  # padding sits after the real items, so the causal mask alone keeps real positions clean
            h = self.encoder(h, mask=causal_mask(h.size(1), h.device), is_causal=True)
        else:
            h = self.encoder(h, src_key_padding_mask=pad)  # padding never attended to
        return self.output(h)  # (B, L, D)

    def states_at(self, x: torch.Tensor, pad: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
        """The layers below the last run over every position; the last one only for the query position, as the
        others' outputs are never read: at evaluation that is most of a layer's work (one query row of L)."""
        *lower, last = self.encoder.layers
        if last.norm_first or self.training:  # the one-row layer below is the post-norm one, without dropout
            return super().states_at(x, pad, at)
        h = self.embed(x)  # (B, L, D)
        length = h.size(1)
        for layer in lower:
            if self.causal:
                h = layer(h, src_mask=causal_mask(length, h.device), is_causal=True)
            else:
                h = layer(h, src_key_padding_mask=pad)
        # keys the query may not see: those after it (causal), or padding
        hidden = torch.arange(length, device=h.device) > at[:, None] if self.causal else pad  # (B, L)
        q = gather_at(h, at)[:, None]  # (B, 1, D)
        # the post-norm layer of nn.TransformerEncoderLayer (norm_first=False), for one query row
        # need_weights: the explicit (bmm, softmax) attention; the fused kernel's result for one query row
        # varies with the thread count, so a top-K would differ between workers of 1 and 2 threads
        a = last.self_attn(q, h, h, key_padding_mask=hidden, need_weights=True)[0]
        q = last.norm1(q + a)  # (dropout is off in eval)
        q = last.norm2(q + last.linear2(last.activation(last.linear1(q))))
        return self.output(q[:, 0])  # (B, D)


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
