"""Typed configs of the stages that use a trained run: `kdsr recommend`, `kdsr export` and `kdsr serve`.

All take the run directory as their first argument (`kdsr recommend RUN_DIR k=20`) or a YAML file with a `run:`
key; pydantic only here, so `kdsr --help` and the config reference do not import torch.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from feature_store.config import RayConfig
from kdsr.config import Config


class RecommendConfig(Config):
    """`kdsr recommend RUN_DIR [key=value ...]`: the top-K items for every user of the run's prepared dataset,
    or for the histories in a file, in original IDs, as Parquet part files (user_id, rank, item_id, score)."""

    run: str  # a run directory (`kdsr train`'s out_dir: config.yaml, best/model.safetensors)
    output: str | None = None  # folder of part files; None: RUN_DIR/recommendations
    k: int = Field(10, gt=0)  # items per user, at most the catalog size
    # The dataset users' histories: all their interactions; the train rows only; or, as the evaluation has
    # them, every item before the user's first valid / test row (users without one are skipped and counted).
    history: Literal["all", "train", "before_valid", "before_test"] = "all"
    # A Parquet or CSV file of `user_id`, `item_id` rows in chronological order per user, instead of the
    # dataset's users; `history` is then ignored.
    histories: str | None = None
    exclude_history: bool = True  # never recommend an item already in the history
    unknown_items: Literal["drop", "error"] = "drop"  # history items not in the catalog: dropped and counted
    # An empty history (or one left empty by dropping unknown items): an error naming the user, or the
    # catalog's most popular training items (score NaN marks them).
    empty_history: Literal["error", "popular"] = "error"
    users_per_part: int = Field(10_000, gt=0)  # one Parquet part file per this many users: the unit of resume
    batch_size: int = Field(512, gt=0)  # users per forward pass
    item_chunk: int = Field(65536, gt=0)  # items scored at a time: memory O(batch_size x item_chunk)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Refuse a run whose prepared dataset or feature stores were rebuilt since training (the input identity
    # recorded in checkpoints/last); false uses the run as it is.
    check_inputs: bool = True
    progress: bool = True  # a bar on a terminal; off, or not a terminal: a log line with rate and ETA every 30 s
    # Ray actors that split the parts between them, each loading the run once and writing its own part files
    # (on a cluster `output` must be a path every node sees). 1: this process alone, without Ray.
    workers: int = Field(1, gt=0)
    worker_cpus: float = Field(1.0, gt=0)  # Ray CPUs per worker (and its torch threads, rounded up)
    worker_gpus: float = Field(0.0, ge=0)  # Ray GPUs per worker (with device=cuda)
    ray: RayConfig = RayConfig()  # where the workers run: embedded (default) or a cluster address


class ExportConfig(Config):
    """`kdsr export RUN_DIR [key=value ...]`: the trained item tables as Zarr feature stores (readable by
    `feature_store.store.FeatureStore`) with provenance, optionally as a Hugging Face `datasets` folder."""

    run: str  # a run directory (`kdsr train`'s out_dir)
    output: str | None = None  # folder of stores; None: RUN_DIR/export
    # Which tables: `scoring` (the rows that score candidates: the fused table, or the ID table under
    # model.score_items=id), `id` (the ID embeddings), and modality names (each trained V^m). None: all.
    tables: list[str] | None = None
    dtype: Literal["float32", "float16"] = "float32"
    shard_size: int = Field(65536, gt=0)  # rows per Zarr chunk (the unit of resume)
    hf_dataset: bool = False  # also write <output>/hf: one row per item, one column per table (save_to_disk)
    overwrite: bool = False  # replace stores exported from another run or checkpoint; else they are refused
    check_inputs: bool = True  # as in `recommend`: refuse a run whose dataset or stores changed since training


class ServeConfig(Config):
    """`kdsr serve RUN_DIR [key=value ...]`: the run as an HTTP endpoint on Ray Serve (POST /recommend with
    {"history": [...], "k": 10}; GET /health), on 127.0.0.1 unless `host` says otherwise."""

    run: str  # a run directory (`kdsr train`'s out_dir)
    host: str = "127.0.0.1"  # 0.0.0.0 exposes the endpoint to the network: set it deliberately
    port: int = Field(8000, gt=0, lt=65536)
    route_prefix: str = "/"
    replicas: int = Field(1, gt=0)  # model copies, each in its own Ray actor
    replica_cpus: float = Field(1.0, gt=0)  # Ray CPUs reserved per replica (and its torch threads, rounded up)
    max_batch_size: int = Field(32, gt=0)  # @serve.batch: requests scored in one forward pass
    batch_wait_timeout_s: float = Field(0.005, ge=0)  # how long a batch waits to fill
    default_k: int = Field(10, gt=0)  # k when a request gives none
    max_k: int | None = Field(None, gt=0)  # the largest k accepted; None: the catalog size
    max_history: int = Field(1000, gt=0)  # longer histories are refused (422), not truncated silently
    exclude_history: bool = True
    unknown_items: Literal["drop", "error"] = "drop"  # error: a request with an unknown item gets a 422
    empty_history: Literal["error", "popular"] = "error"
    device: Literal["auto", "cpu", "cuda"] = "cpu"
    check_inputs: bool = True
    ray: RayConfig = RayConfig()  # where Ray runs: embedded (default) or a cluster address
    blocking: bool = True  # false: return once the endpoint is up (tests, notebooks)
