"""Text items: template rendering, length-sorted batching, and pooling that ignores padding.

Padding is always on the right and every pooling reads the attention mask, so an item's embedding does not
depend on what else is in its batch: with right padding a causal LLM's real tokens never see the pads
(they come later), and positions start at 0 for every item, which left padding would break.
"""

from __future__ import annotations

import logging
import string
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import polars as pl
import torch

from feature_store.config import EncoderConfig
from feature_store.models import ModelError
from kdsr.errors import KdsrError

log = logging.getLogger(__name__)


class TemplateError(KdsrError, ValueError):
    """A template that names a field the item table does not have."""


def template_fields(template: str) -> list[str]:
    return [f for _, f, _, _ in string.Formatter().parse(template) if f]


def render_texts(items: pl.DataFrame, template: str, source: str = "items.parquet") -> list[str]:
    """One text per item row. A null field renders as ""; an item whose fields are all empty renders as "" too
    (masked later as "empty text"), not as the template's fixed words ("This product: "), which would give every
    such item the same, meaningless embedding."""
    fields = template_fields(template)
    missing = [f for f in fields if f not in items.columns]
    if missing:
        raise TemplateError(
            f"{source}: template {template!r} uses field(s) {', '.join(missing)} that the item table does not have "
            f"(columns: {', '.join(items.columns)})"
        )
    cols = {f: ["" if v is None else str(v) for v in items[f].to_list()] for f in fields}
    texts = []
    for i in range(items.height):
        values = {f: cols[f][i] for f in fields}
        empty = fields and not any(v.strip() for v in values.values())
        texts.append("" if empty else " ".join(template.format(**values).split()))
    return texts


def cpu_has_bf16() -> bool | None:
    """Whether this CPU computes bf16 natively (Linux /proc/cpuinfo flags); None where that cannot be read."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    return "avx512_bf16" in flags or "amx_bf16" in flags


def prepare_tokenizer(tokenizer) -> None:
    """Right padding always; decoder LLMs often ship without a pad token: reuse EOS (masked out anyway)."""
    tokenizer.padding_side = "right"
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ModelError("tokenizer has neither a pad nor an EOS token; cannot batch")
        tokenizer.pad_token = tokenizer.eos_token


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> Iterator[np.ndarray]:
    """Indices in batches of similar length (longest first, so a memory problem shows up at once)."""
    order = np.argsort(-np.asarray(lengths), kind="stable")
    for s in range(0, len(order), batch_size):
        yield order[s : s + batch_size]


def pool(hidden: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """hidden (B, T, H), mask (B, T) of 0/1 with right padding -> (B, H) in float32."""
    hidden = hidden.float()
    if pooling == "cls":
        return hidden[:, 0]
    if pooling == "mean":
        m = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)
    if pooling == "last_token":
        last = mask.long().sum(1).clamp(min=1) - 1  # index of the last real token per row
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    raise ModelError(f"pooling {pooling!r} is not defined for text (use mean, cls or last_token)")


class TextEmbedder:
    """Tokenise, run and pool a list of texts; one instance per actor, built around a loaded model."""

    def __init__(self, model, tokenizer, cfg: EncoderConfig, device: str = "cpu"):
        prepare_tokenizer(tokenizer)
        self.model, self.tokenizer, self.cfg = model, tokenizer, cfg
        self.device = device if device == "cpu" else str(next(model.parameters()).device)
        if cfg.pooling == "pooler":
            raise ModelError("pooling 'pooler' is for vision models; text uses mean, cls or last_token")
        if self.device == "cpu" and cfg.precision == "bf16" and cfg.quantization == "none" and not cpu_has_bf16():
            log.warning(
                "encoder.precision bf16 on a CPU without native bf16 (no avx512_bf16 / amx_bf16 flag): autocast "
                "emulates it and runs several times slower than fp32 (12x on a 2-core AVX2 EPYC); set "
                "encoder.precision=fp32"
            )
        self.dim = int(self.embed(["probe"]).shape[1])

    def _autocast(self):
        # On CPU the weights are fp32 and bf16/fp16 run as autocast; quantized models already compute
        # in their own dtype, so autocast is only used for plain models.
        on = self.cfg.precision != "fp32" and self.cfg.quantization == "none" and self.device == "cpu"
        dtype = torch.bfloat16 if self.cfg.precision == "bf16" else torch.float16
        return torch.autocast("cpu", dtype=dtype, enabled=on)

    @torch.inference_mode()
    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), H) float32, rows in the order of `texts`."""
        enc = self.tokenizer(list(texts), truncation=True, max_length=self.cfg.max_length)
        ids, att = enc["input_ids"], enc["attention_mask"]
        out = np.zeros((len(ids), getattr(self, "dim", 0)), np.float32)
        for idx in length_sorted_batches([len(x) for x in ids], self.cfg.batch_size):
            batch = self.tokenizer.pad(
                {"input_ids": [ids[i] for i in idx], "attention_mask": [att[i] for i in idx]}, return_tensors="pt"
            )
            batch = {k: v.to(self.device) for k, v in batch.items()}
            with self._autocast():
                hidden = self.model(**batch).last_hidden_state
            emb = pool(hidden, batch["attention_mask"], self.cfg.pooling)
            if self.cfg.normalize:
                emb = torch.nn.functional.normalize(emb, dim=-1)
            if out.shape[1] != emb.shape[1]:  # first call (the probe) learns the width
                out = np.zeros((len(ids), emb.shape[1]), np.float32)
            out[idx] = emb.cpu().numpy()
        return out
