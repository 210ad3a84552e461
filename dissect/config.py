"""The `kdsr dissect` config: where the features are, how to reduce them, how to cut facets and codes.

Defaults follow the paper's released run (d = 128, F = 8, K = 50); YAML files state only what differs.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from kdsr.config import Config


class ReduceConfig(Config):
    # pca: streamed covariance, top components by eigh (D <= 1024) or randomized SVD; autoencoder: the paper's
    # one-layer AE with a sigmoid bottleneck; none: keep the input dims (float32, so the trainer reads one store)
    method: Literal["pca", "autoencoder", "none"] = "pca"
    dim: int = Field(128, ge=1)
    # Rows used to fit (whole chunks drawn at random, seeded); null = every valid row. A 4096 x 4096
    # covariance from 262k rows is as good as from 1M and 4x cheaper on 2 cores.
    fit_rows: int | None = Field(262_144, ge=1)
    block_rows: int = Field(8192, ge=1)  # rows per streamed block (rounded to whole store chunks)
    # autoencoder only
    epochs: int = Field(5, ge=1)
    min_steps: int = Field(2000, ge=0)  # small catalogs repeat epochs until this many Adam steps
    lr: float = Field(1e-3, gt=0)
    batch_size: int = Field(512, ge=1)


class FacetConfig(Config):
    # clustered: group dims that co-vary across items (balanced sizes, see facets.py); chunks: the paper's
    # contiguous split (d must be divisible by F)
    mode: Literal["clustered", "chunks"] = "clustered"
    n_facets: int = Field(8, ge=1)
    # pearson: |corr(a, b)|; energy: corr(a^2, b^2) of centred dims, which still sees co-activation after
    # PCA has made every pair of reduced dims uncorrelated (Pearson is then ~0 everywhere)
    statistic: Literal["energy", "pearson"] = "energy"
    sample_items: int = Field(100_000, ge=2)  # items used for the dimension correlation matrix


class CodebookConfig(Config):
    n_codes: int = Field(50, ge=1)
    random_pairs: int = Field(1_000_000, ge=0)  # uniform pairs of distinct valid items
    cooccur_pairs: int = Field(1_000_000, ge=0)  # pairs inside training sequences (needs `dataset`)
    max_seq_len: int = Field(50, ge=2)  # the trainer's window: only pairs it can supervise
    batch_size: int = Field(4096, ge=1)  # MiniBatchKMeans batch
    n_init: int = Field(3, ge=1)
    max_iter: int = Field(100, ge=1)


class DissectConfig(Config):
    features: str  # input feature store (from `kdsr encode` / `kdsr import`)
    output: str | None = None  # default: <features without .zarr>.dissect.zarr beside the input
    dataset: str | None = None  # prepared dataset: its item order is checked, its train sequences give pairs
    seed: int = 0
    overwrite: bool = False  # replace an existing output (only ever a kdsr store); false: refuse it
    max_memory_gb: float = Field(8.0, gt=0)  # refuse to hold the reduced N x d matrix beyond this
    reduce: ReduceConfig = ReduceConfig()
    facets: FacetConfig = FacetConfig()
    codebook: CodebookConfig = CodebookConfig()

    def resolved_output(self) -> str:
        """`output`, else `<features without .zarr>.dissect.zarr` beside the input store."""
        if self.output:
            return self.output
        p = str(self.features).rstrip("/")
        return (p[: -len(".zarr")] if p.endswith(".zarr") else p) + ".dissect.zarr"
