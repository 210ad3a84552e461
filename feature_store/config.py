"""Typed configs of the `encode` and `import` stages (registered as `EncodeConfig`, `ImportConfig`).

YAML under configs/encode/ and configs/import/ states only what differs from the defaults here.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from kdsr.config import Config

Pooling = Literal["mean", "cls", "last_token", "pooler"]
Precision = Literal["fp32", "bf16", "fp16"]
Quantization = Literal["none", "int8", "nf4"]


class EncoderConfig(Config):
    """Which Hugging Face model embeds the items, and how its outputs become one vector per item."""

    modality: Literal["text", "image"] = "text"
    model: str  # hub id (e.g. sentence-transformers/all-MiniLM-L6-v2) or a local directory
    revision: str | None = None  # hub revision (branch, tag, commit); recorded in provenance
    trust_remote_code: bool = False  # never on unless a config says so: it runs code from the model repo
    pooling: Pooling = "mean"  # encoders: mean | cls; decoder LLMs: last_token | mean; vision: pooler | cls | mean
    normalize: bool = True  # L2-normalise: cosine is what distillation uses, and it keeps float16 safe
    max_length: int = Field(256, gt=0)  # tokens; all-MiniLM-L6-v2 was trained with 256
    # Text of an item from its fields, Python format syntax. A missing/null field becomes "".
    template: str = "{title}"
    image_column: str = "image"  # for modality=image: a local path or an http(s) URL per item
    # Off: local image files only, a URL is a refused row. For a catalog of image URLs (Amazon) set
    # `allow_urls: true` under `encoder:` (or `encoder.allow_urls=true` on the command line): http(s) only,
    # refusing hosts that resolve to loopback, private, link-local (cloud metadata), multicast, reserved or
    # unspecified addresses, checked again on every redirect.
    allow_urls: bool = False
    # Also fetch from loopback and private addresses (RFC 1918, IPv6 ULA): intranet catalogs, local test
    # servers. Link-local (169.254.169.254 cloud metadata), multicast, reserved and unspecified stay refused.
    allow_private_urls: bool = False
    url_deadline_s: float = Field(30.0, gt=0)  # whole download of one URL image, redirects included
    max_image_bytes: int = Field(20_000_000, gt=0)  # a larger download is refused (a catalog image never is)
    # Larger images are refused from their header, before decoding (a decompression bomb costs nothing).
    # Pillow's own error at 2x Image.MAX_IMAGE_PIXELS (about 179M) still applies above that.
    max_image_pixels: int = Field(40_000_000, gt=0)
    # Pillow formats an image may have (URL or local file); only these decoders ever see the bytes.
    image_formats: list[str] = ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"]
    # Content-Type a URL may answer with (parameters ignored). Buckets that serve images as
    # application/octet-stream can add it: image_formats still decides after the bytes arrive.
    url_content_types: list[str] = [
        "image/jpeg",
        "image/jpg",
        "image/png",
        "image/webp",
        "image/gif",
        "image/bmp",
        "image/x-ms-bmp",
        "image/tiff",
    ]
    # Compute precision. On CPU bf16/fp16 mean autocast over fp32 weights (measured faster than bf16
    # weights here, cosine >= 0.9999 to fp32); on CUDA the weights are loaded in that dtype.
    precision: Precision = "fp32"
    quantization: Quantization = "none"  # opt-in: saves memory, does not speed anything up
    batch_size: int = Field(64, gt=0)  # items per forward pass (length-sorted within a shard)

    @model_validator(mode="after")
    def _check(self) -> EncoderConfig:
        if self.modality == "image" and self.pooling == "last_token":
            raise ValueError("pooling last_token is for decoder text models, not images")
        return self

    @field_validator("image_formats", "url_content_types")
    @classmethod
    def _case(cls, values: list[str], info: ValidationInfo) -> list[str]:
        """Pillow names formats in upper case and MIME types are case-insensitive: accept `png` or `Image/PNG`."""
        return [v.strip().upper() if info.field_name == "image_formats" else v.strip().lower() for v in values]


class OutputConfig(Config):
    path: str  # local directory (default) or an fsspec URL such as s3://bucket/beauty/text/minilm
    dtype: Literal["float16", "float32"] = "float32"
    shard_size: int = Field(1024, gt=0)  # rows per shard = per Zarr chunk = per unit of work
    overwrite: bool = False  # False: resume an existing store with the same provenance


class RayConfig(Config):
    address: str | None = None  # null: embedded local Ray; "auto" or ray://host:10001 joins a cluster
    num_cpus: int | None = None  # embedded Ray only; null = all cores
    include_dashboard: bool = False
    dashboard_host: str = "127.0.0.1"  # never 0.0.0.0 by default: the dashboard runs jobs


class ResourcesConfig(Config):
    """Inputs of the planner (feature_store/planner.py); null = detect."""

    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_actors: int | None = Field(None, gt=0)  # null: as many as fit
    gpus_per_actor: int | None = Field(None, gt=0)  # null: the fewest GPUs that hold the model
    gpu_memory_gib: float | None = Field(None, gt=0)  # per GPU; null: read from the cluster / CUDA
    headroom: float = Field(0.25, ge=0, lt=1)  # fraction of GPU memory kept for activations and CUDA
    torch_threads: int | None = Field(None, gt=0)  # CPU actors: intra-op threads each; null: cores / actors
    # Ray CPUs one CPU actor reserves; null: its thread count, capped so that 0.5 CPU stays free. The driver
    # reads the catalog itself (no Ray read tasks), so actors can never starve the input (the 2-core
    # deadlock of Ray Data read tasks queued behind 1-CPU actors cannot happen).
    cpus_per_actor: float | None = Field(None, gt=0)


class EncodeConfig(Config):
    """`kdsr encode CONFIG`: embed a prepared dataset's items into a Zarr feature store."""

    dataset: str  # a prepared dataset folder (kdsr prepare's output)
    encoder: EncoderConfig
    output: OutputConfig
    ray: RayConfig = RayConfig()
    resources: ResourcesConfig = ResourcesConfig()
    progress_every_s: float = Field(5.0, gt=0)  # how often progress + ETA is logged
    limit: int | None = Field(None, gt=0)  # encode only the first N items (smoke tests); store has N rows


class ImportConfig(Config):
    """`kdsr import CONFIG`: bring an existing feature matrix into the feature store layout."""

    source: str  # .npy, a raw float32 matrix (.feat1CLS/.feat3CLS: needs dim), or .parquet
    format: Literal["auto", "npy", "raw_float32", "parquet"] = "auto"
    dim: int | None = Field(None, gt=0)  # raw float32 only
    column: str | None = None  # parquet: the column holding one vector per row
    id_column: str | None = None  # parquet: the column with the item IDs of the rows
    # Item order of the source rows: a file of `ID<TAB>row` lines (RecBole .item2index) or one ID per line.
    # Not needed for parquet with id_column.
    ids: str | None = None
    dataset: str | None = None  # prepared dataset to align to (rows reordered to its items; extras dropped and counted)
    output: OutputConfig
    provenance: dict[str, str] = {}  # free-form: model, pooling, source URL... recorded in the store attrs
