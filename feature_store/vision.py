"""Image items: load from a local path or URL with every failure captured, then embed with a vision model.

A missing, unreadable or corrupt image never stops a job: `load_image` returns the reason, the row is
masked in the store and the reason recorded next to it (`FeatureStore.errors()`).
"""

from __future__ import annotations

import io
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from feature_store.config import EncoderConfig
from feature_store.models import ModelError

MAX_IMAGE_BYTES = 50 << 20  # refuse larger downloads: a catalog image is never this big


def load_image(
    ref: str | None, base_dir: str | Path | None = None, timeout: float = 20.0, allow_urls: bool = True
) -> tuple[Image.Image | None, str]:
    """(RGB image, "") or (None, reason). Relative paths are taken from `base_dir` (the dataset folder).
    http(s) URLs are fetched from whatever host they name (trusted catalogs only); allow_urls=False refuses them."""
    if ref is None or not str(ref).strip():
        return None, "no image"
    ref = str(ref).strip()
    try:
        if ref.startswith(("http://", "https://")) and not allow_urls:
            return None, f"image URLs are disabled (encoder.allow_urls: false): {ref}"
        if ref.startswith(("http://", "https://")):
            with urllib.request.urlopen(ref, timeout=timeout) as r:  # noqa: S310 (scheme checked above)
                data = r.read(MAX_IMAGE_BYTES + 1)
            if len(data) > MAX_IMAGE_BYTES:
                return None, f"image larger than {MAX_IMAGE_BYTES >> 20} MiB: {ref}"
            src: io.BytesIO | Path = io.BytesIO(data)
        elif "://" in ref:
            return None, f"unsupported image URL scheme: {ref}"
        else:
            src = Path(ref) if Path(ref).is_absolute() or base_dir is None else Path(base_dir) / ref
            if not src.is_file():
                return None, f"missing image file: {src}"
        with Image.open(src) as im:
            im.load()  # decode now: a truncated file fails here, not inside the processor
            return im.convert("RGB"), ""
    except UnidentifiedImageError:
        return None, f"unreadable image {ref}: not an image format PIL knows"
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        return None, f"unreadable image {ref}: {type(e).__name__}: {e}"


def pool_vision(out, pooling: str) -> torch.Tensor:
    """One vector per image from a vision model's output (ViT/CLIP/DINOv2: tokens; ResNet: feature maps)."""
    hidden = out.last_hidden_state
    if pooling == "pooler":
        pooled = getattr(out, "pooler_output", None)
        if pooled is None:
            raise ModelError("this vision model has no pooler output; use pooling cls or mean")
        return pooled.flatten(1).float()
    if hidden.dim() == 4:  # (B, C, H, W) feature maps: average over space
        if pooling != "mean":
            raise ModelError("convolutional models (ResNet) support pooling mean or pooler")
        return hidden.float().mean(dim=(2, 3))
    if pooling == "cls":
        return hidden[:, 0].float()
    if pooling == "mean":
        return hidden.float().mean(1)
    raise ModelError(f"pooling {pooling!r} is not defined for images (use pooler, cls or mean)")


class ImageEmbedder:
    """Load, preprocess, run and pool images; failed images give NaN-free zero rows plus a reason."""

    def __init__(self, model, processor, cfg: EncoderConfig, device: str = "cpu", base_dir: str | Path | None = None):
        self.model, self.processor, self.cfg, self.base_dir = model, processor, cfg, base_dir
        self.device = device if device == "cpu" else str(next(model.parameters()).device)
        self.dtype = next(model.parameters()).dtype if cfg.quantization == "none" else None
        self.dim = int(self._forward([Image.new("RGB", (64, 64))]).shape[1])  # probe once: sizes all-failed shards

    def _autocast(self):
        on = self.cfg.precision != "fp32" and self.cfg.quantization == "none" and self.device == "cpu"
        return torch.autocast(
            "cpu", dtype=torch.bfloat16 if self.cfg.precision == "bf16" else torch.float16, enabled=on
        )

    @torch.inference_mode()
    def _forward(self, images: list[Image.Image]) -> torch.Tensor:
        pix = self.processor(images=images, return_tensors="pt")["pixel_values"]
        pix = pix.to(self.device, self.dtype if self.dtype is not None and self.device != "cpu" else torch.float32)
        with self._autocast():
            emb = pool_vision(self.model(pixel_values=pix), self.cfg.pooling)
        return torch.nn.functional.normalize(emb, dim=-1) if self.cfg.normalize else emb

    def embed(self, refs: Sequence[str | None]) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """(embeddings (N, D) float32, valid mask (N,), reasons) for image references in order."""
        loaded = [load_image(r, self.base_dir, allow_urls=self.cfg.allow_urls) for r in refs]
        reasons = [why for _, why in loaded]
        ok = [i for i, (im, _) in enumerate(loaded) if im is not None]
        out = np.zeros((len(refs), self.dim), np.float32)
        for s in range(0, len(ok), self.cfg.batch_size):
            idx = ok[s : s + self.cfg.batch_size]
            out[idx] = self._forward([loaded[i][0] for i in idx]).cpu().numpy()
        mask = np.zeros(len(refs), bool)
        mask[ok] = True
        return out, mask, reasons
