"""The released KDSR code's own backbone (HoldenHu/KDSR, model_corvector.py + aggregator.py RGATLayer), made causal.

What the released model does, per training sequence: a graph over the sequence's distinct items (SR-GNN style:
a self loop on every node, and for each transition a -> b the relation "out" on a's side, "in" on b's side,
"both" when a -> b and b -> a occur), one round of relational graph attention over it (a shared projection W,
per relation r a vector a_r: e_ij = LeakyReLU_0.1(a_r . (W h_i * W h_j)), softmax over i's edges, sum of
W h_j), a learned softmax gate per node over [ID, graph, modality] states, and "last-two" pooling: the
sequence representation is the sum of the node states of its last two items. Candidates are scored against the
ID table. Here the fusion of ID and modality rows happens before the backbone (trainer/student.py, Fusion
"gate"), `model.score_items: id` scores against the ID table, and this module does the rest: graph attention
over the input rows, a gate between a node's input row and its graph state, last-two pooling.

Causal adaptation (ours): the released model predicts one target after the whole input, so its graph may join
an item to the items after it. The student takes the loss at every position, so the state at t must only
depend on items 0..t: it reads the graph of the prefix 0..t, built exactly as the released code builds it,
at the node of item t plus the node of item t - 1 (last-two pooling). Each node of the prefix graph is its
item's latest position <= t. With one round (n_layers: 1, the released model) the state at t equals the
released model's on that prefix, up to the differences below (tests/test_backbones.py rebuilds it per prefix
with the released adjacency). With more rounds, a neighbour's state from the previous round is the one computed
for its own prefix: the exact per-prefix graph would cost O(L^3 D). Last-two pooling is done per position:
the student reads the state at the last position, which already sums the last two items' nodes.

NOTE: the backbone sees representations, not ids, so rows within 1e-4 relative distance are taken for the same
item. The fused table's rows are gathered, so one id gives one row; two items with equal rows would share a
node. Other differences from the released code: the gate mixes two states (input row, graph state) instead
of four (the input row already gates ID and modality); no per-relation "amplifier" scalar (a_r absorbs its
scale); dropout after the attention softmax (the released code drops logits before it, which also lets
non-edges through) and on the gated states; a history of one item reads its node once (the released index
clamp reads it twice: the same ranking). n_heads and max_len are unused: the released graph has one head and
no positions. The released config names aggregator hete_attention and max_relid 10, but model_corvector.py
builds this RGATLayer with 4 relations whatever they say.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from trainer.backbones.base import Backbone, register

# Relation ids as the released data_utils.py writes them into its adjacency; 0 = no edge.
SELF, OUT, IN, BOTH = 1, 2, 3, 4


def shift(x: torch.Tensor) -> torch.Tensor:
    """(B, L, ...) -> the same with position t holding position t - 1's entry (zeros at t = 0)."""
    return torch.cat([torch.zeros_like(x[:, :1]), x[:, :-1]], dim=1)


@torch.no_grad()
def same_items(x: torch.Tensor, pad: torch.Tensor, rtol: float = 1e-4) -> torch.Tensor:
    """x (B, L, D), pad (B, L) -> (B, L, L) bool: positions i, j real and holding the same item (equal rows)."""
    x = x.detach().float()
    # The direct kernel, not the matmul expansion: equal rows give exactly 0, without an O(B L^2 D) buffer.
    dist = torch.cdist(x, x, compute_mode="donot_use_mm_for_euclid_dist")  # (B, L, L)
    norm = x.norm(dim=-1)
    same = dist <= rtol * torch.maximum(norm[:, :, None], norm[:, None, :])
    real = ~pad
    return same & real[:, :, None] & real[:, None, :]


@torch.no_grad()
def prefix_relations(same: torch.Tensor, pad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """same (B, L, L), pad (B, L) -> (now, prev), each (B, L, L) long relation ids [t, s].

    Row t is the graph of the prefix 0..t as the released code builds it, its nodes the items' latest positions
    s <= t; `now` holds the edges of item t's node, `prev` those of item t - 1's node (empty at t = 0).
    O(B L^2): each transition m - 1 -> m (m <= t) is scattered onto the node of its other end.
    """
    b, length, _ = same.shape
    pos = torch.arange(length, device=same.device)
    upto = pos[None, :] <= pos[:, None]  # (L, L) [t, s]: s <= t
    # latest[b, m, t]: the latest position <= t of the item at m (its node in prefix t), -1 when none
    latest = torch.where(same, pos, -1).cummax(dim=2).values  # (B, L_m, L_t)
    node = latest.transpose(1, 2) == pos  # (B, L_t, L_s): s is a node of prefix t (latest <= t, so s <= t)
    real = ~pad
    step = real & shift(real)  # (B, L_m): the transition m - 1 -> m exists
    in_prefix = step[:, None, :] & upto  # (B, L_t, L_m): ... and lies in prefix t
    to_node = latest.transpose(1, 2).clamp(min=0)  # (B, L_t, L_m): node of item m in prefix t
    from_node = shift(latest).transpose(1, 2).clamp(min=0)  # node of item m - 1 in prefix t

    def edges(query: torch.Tensor) -> torch.Tensor:
        """query (B, L_t, L) bool: position j holds the query node's item -> relation ids (B, L_t, L_s)."""
        # out: the query item is followed by item m (query at m - 1); in: the query item follows item m - 1
        is_out = (shift(query.transpose(1, 2)).transpose(1, 2) & in_prefix).float()  # query[t, m - 1]
        is_in = (query & in_prefix).float()  # query[t, m]
        out = torch.zeros(b, length, length, device=same.device).scatter_add_(2, to_node, is_out) > 0
        inn = torch.zeros(b, length, length, device=same.device).scatter_add_(2, from_node, is_in) > 0
        rel = torch.where(out & inn, BOTH, torch.where(out, OUT, torch.where(inn, IN, 0)))
        rel = torch.where(query, SELF, rel)  # a self transition a -> a is the self loop only
        return rel * node  # (B, L_t, L_s), 0 off the prefix's nodes

    return edges(same), edges(shift(same))  # shift: row t asks for item t - 1's node


class RelationalAttention(nn.Module):
    """One round of the released RGAT: states of query nodes q from their edges' nodes kv, (B, L, D) each."""

    def __init__(self, d: int, dropout: float, n_relations: int = 4):
        super().__init__()
        self.proj = nn.Linear(d, d, bias=False)  # W, shared by both ends of an edge as in the released layer
        bound = 1 / math.sqrt(d)  # the released init (uniform +- 1 / sqrt(D)), like nn.Linear's default
        self.rel = nn.Parameter(torch.empty(n_relations, d).uniform_(-bound, bound))  # a_r per relation
        self.drop = nn.Dropout(dropout)

    def forward(self, q: torch.Tensor, kv: torch.Tensor, rel: torch.Tensor) -> torch.Tensor:
        q, kv = self.proj(q), self.proj(kv)  # (B, L, D)
        e = (q[:, None] * self.rel[None, :, None]) @ kv[:, None].transpose(-1, -2)  # (B, R, L, L) every relation
        e = e.gather(1, (rel - 1).clamp(min=0)[:, None]).squeeze(1)  # (B, L, L) the edge's own relation
        edge = rel > 0
        e = F.leaky_relu(e, 0.1).masked_fill(~edge, torch.finfo(e.dtype).min)
        w = e.softmax(dim=-1) * edge  # a row without edges (padding, no item t - 1) gives 0
        return self.drop(w) @ kv  # (B, L, D)


@register("graph")
class Graph(Backbone):
    causal = True

    def __init__(self, cfg):
        super().__init__()
        d = cfg.hidden
        self.rounds = nn.ModuleList(RelationalAttention(d, cfg.dropout) for _ in range(cfg.n_layers))
        # The released gate's form: energy w^T ReLU(W s + b) per state, softmax over the states.
        self.gate = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, 1))
        for m in self.gate:
            if isinstance(m, nn.Linear):  # the released init of its Linear layers
                nn.init.normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.drop = nn.Dropout(cfg.dropout)

    def mix(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """A node's input row and graph state (..., D) each -> their gated sum (..., D)."""
        s = torch.stack([x, g.to(x.dtype)], dim=-2)  # (..., 2, D)
        a = self.gate(s).softmax(dim=-2)  # (..., 2, 1)
        return (a * s).sum(-2)

    def forward(self, x: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        now, prev = prefix_relations(same_items(x, pad), pad)  # (B, L, L) each
        h = x
        for i, layer in enumerate(self.rounds):
            if i == len(self.rounds) - 1:  # item t - 1's node in prefix t, from the same round's inputs
                g_prev = layer(shift(h), h, prev)  # (B, L, D)
            h = layer(h, h, now)  # (B, L, D) item t's node in prefix t
        real = ~pad
        has_prev = (real & shift(real))[:, :, None]  # (B, L, 1)
        out = self.drop(self.mix(x, h)) + self.drop(self.mix(shift(x), g_prev)) * has_prev  # last-two pooling
        return out * real[:, :, None]  # (B, L, D)
