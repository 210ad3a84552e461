"""Dissection stage on real CLIP features (Scientific multimodal subset): store contract, both facet modes,
determinism, masked rows, co-occurring pairs, PCA against scikit-learn, and clear errors on bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from dissect.codebook import CodebookError, cooccur_pairs, uniform_pairs
from dissect.config import DissectConfig
from dissect.facets import FacetError, chunk_facets, clustered_facets, dimension_affinity, facet_quality
from dissect.run import run_dissect
from feature_store.store import FeatureStore, StoreError
from kdsr.config import ConfigError, load_config

torch.set_num_threads(1)
MASKED = [3, 700]  # rows written as masked
ZERO = 11  # a row that is all zeros but not masked: must come out masked


def read_clip(data_dir: Path, feat: str = "feat3CLS") -> tuple[list[str], np.ndarray]:
    """Scientific-mm CLIP features in item-index order (row i = index i in Scientific.item2index)."""
    base = data_dir / "scientific-mm"
    pairs = [line.split("\t") for line in (base / "Scientific.item2index").read_text().splitlines()]
    ids = [a for a, _ in sorted(pairs, key=lambda p: int(p[1]))]
    return ids, np.fromfile(base / f"Scientific.{feat}", "<f4").reshape(len(ids), 512)


@pytest.fixture(scope="module")
def clip_store(data_dir, tmp_path_factory) -> str:
    ids, x = read_clip(data_dir)
    x = x.copy()
    x[ZERO] = 0
    mask = np.ones(len(ids), bool)
    mask[MASKED] = False
    path = tmp_path_factory.mktemp("clip") / "image.zarr"
    store = FeatureStore.create(path, ids, x.shape[1], dtype="float16", shard_size=256)
    for s in range(store.n_shards):
        a, b = store.shard_rows(s)
        store.write_shard(s, x[a:b], mask=mask[a:b], errors=["no image" if not m else "" for m in mask[a:b]])
    return str(path)


def small_cfg(features: str, out: Path, **kw) -> DissectConfig:
    raw = {"features": features, "output": str(out), "codebook": {"random_pairs": 20_000, "n_init": 1}, **kw}
    return DissectConfig.model_validate(raw)


def dissect(cfg: DissectConfig) -> Path:
    """Run the stage; the path of the dissection store it wrote."""
    return Path(run_dissect(cfg)["output"])


@pytest.fixture(scope="module")
def clustered(clip_store, tmp_path_factory) -> Path:
    return dissect(small_cfg(clip_store, tmp_path_factory.mktemp("d") / "c.zarr"))


def test_output_is_a_feature_store_with_facets_and_codebook(clip_store, clustered):
    src, out = FeatureStore.open(clip_store), FeatureStore.open(clustered)
    assert out.is_complete()
    assert list(out.item_ids()) == list(src.item_ids())
    assert out.embeddings.shape == (1585, 128) and out.embeddings.dtype == np.float32
    mask = out.mask()
    assert (~mask).sum() == len(MASKED) + 1 and not mask[MASKED].any() and not mask[ZERO]
    x = out.read_all()
    assert not x[~mask].any()  # masked rows are zero rows
    assert dict(out.errors())[ZERO] == "all-zero feature row" and dict(out.errors())[3] == "no image"
    facets = np.asarray(out.group["facets"][:])
    assert np.bincount(facets).tolist() == [16] * 8
    assert out.group["centroids"].shape == (50, 8)
    meta = out.attrs["dissect"]
    assert meta["source"]["item_fingerprint"] == src.attrs["item_fingerprint"]
    assert meta["reduction"]["method"] == "pca" and meta["reduction"]["fit_rows"] == 1585 - 3
    assert meta["reduction"]["zero_rows"] == 1 and meta["reduction"]["masked_rows"] == 2
    sizes = meta["codebook"]["cluster_sizes"]
    assert sum(sizes) == 20_000 and min(sizes) > 0 and sizes == sorted(sizes, reverse=True)
    assert meta["codebook"]["inertia"] > 0


def test_clustered_facets_group_dims_that_covary_more_than_chunks(clustered):
    q = FeatureStore.open(clustered).attrs["dissect"]["facets"]["quality"]
    # energy affinity of PCA dims: clustered must beat the paper's contiguous split inside facets
    assert q["clustered"]["within"] > 1.1 * q["chunks"]["within"]
    assert q["clustered"]["within"] > 1.5 * q["clustered"]["across"]


def test_chunks_mode_is_the_paper_split(clip_store, tmp_path):
    out = dissect(small_cfg(clip_store, tmp_path / "k.zarr", facets={"mode": "chunks"}))
    facets = np.asarray(FeatureStore.open(out).group["facets"][:])
    assert facets.tolist() == np.repeat(np.arange(8), 16).tolist()


def test_same_seed_same_dissection_other_seed_other_codebook(clip_store, clustered, tmp_path):
    again = FeatureStore.open(dissect(small_cfg(clip_store, tmp_path / "a.zarr")))
    first = FeatureStore.open(clustered)
    for name in ("embeddings", "facets", "centroids"):
        np.testing.assert_array_equal(first.group[name][:], again.group[name][:])
    other = FeatureStore.open(dissect(small_cfg(clip_store, tmp_path / "b.zarr", seed=1)))
    assert not np.allclose(first.group["centroids"][:], other.group["centroids"][:])


def test_pca_matches_scikit_learn(data_dir, clip_store, clustered):
    from sklearn.decomposition import PCA

    mask = FeatureStore.open(clustered).mask()
    x = FeatureStore.open(clip_store).read_all()[mask]
    ref = PCA(n_components=128, svd_solver="full").fit(x)
    ours = FeatureStore.open(clustered).read_all()[mask]
    theirs = ref.transform(x)
    # same subspace, same ordering; components agree up to sign
    corr = np.abs(np.sum(ours * theirs, 0) / np.linalg.norm(ours, axis=0) / np.linalg.norm(theirs, axis=0))
    assert corr[:64].min() > 0.999
    meta = FeatureStore.open(clustered).attrs["dissect"]["reduction"]
    assert meta["explained_variance_ratio"] == pytest.approx(ref.explained_variance_ratio_.sum(), rel=1e-4)


def test_autoencoder_and_no_reduction(clip_store, tmp_path):
    ae = dissect(
        small_cfg(
            clip_store, tmp_path / "ae.zarr", reduce={"method": "autoencoder", "dim": 32, "epochs": 1, "min_steps": 300}
        ),
    )
    store = FeatureStore.open(ae)
    x, mask = store.read_all(), store.mask()
    assert x.shape == (1585, 32) and (x[mask] > 0).all() and (x[mask] < 1).all()  # sigmoid bottleneck
    assert store.attrs["dissect"]["reduction"]["final_mse_standardised"] < 1.0  # better than predicting the mean
    raw = dissect(
        small_cfg(clip_store, tmp_path / "raw.zarr", reduce={"method": "none"}, facets={"mode": "chunks"}),
    )
    src = FeatureStore.open(clip_store)
    np.testing.assert_array_equal(FeatureStore.open(raw).read_all(), src.read_all("float32"))
    assert FeatureStore.open(raw).group["facets"].shape == (512,)


def test_clustered_facets_recover_planted_groups():
    rng = np.random.default_rng(0)
    groups = rng.permutation(np.repeat(np.arange(4), 6))  # 24 dims in 4 hidden groups
    z = rng.normal(size=(3000, 4))
    x = z[:, groups] + 0.5 * rng.normal(size=(3000, 24))
    a = dimension_affinity(x, "pearson")
    facets = clustered_facets(a, 4, seed=0)
    # same partition up to relabelling
    assert len({(g, f) for g, f in zip(groups, facets)}) == 4
    assert facet_quality(a, facets)["within"] > facet_quality(a, chunk_facets(24, 4))["within"]


def test_uniform_and_cooccurring_pairs():
    rng = np.random.default_rng(0)
    p = uniform_pairs(np.array([2, 5, 9]), 1000, rng)
    assert (p[:, 0] != p[:, 1]).all() and set(np.unique(p)) == {2, 5, 9}
    # two sequences of store rows: 0..79 (user 0) and 100..104 (user 1); window 10
    rows = np.concatenate([np.arange(80), np.arange(100, 105)])
    offsets = np.array([0, 80, 85])
    q = cooccur_pairs(offsets, rows, 20_000, 10, rng)
    same_user = (q[:, 0] < 100) == (q[:, 1] < 100)
    assert same_user.all() and (np.abs(q[:, 0] - q[:, 1]) < 10).all() and (q[:, 0] != q[:, 1]).all()
    # user 0 has 2*(9*80 - 45) = 1350 ordered in-window pairs, user 1 has 20: sampled in proportion
    assert np.mean(q[:, 0] >= 100) == pytest.approx(20 / 1370, abs=0.005)


def write_prepared(data_dir: Path, out: Path) -> Path:
    """A minimal prepared dataset (the contract in kdsr/dataset.py) from scientific-mm's train file."""
    ids, _ = read_clip(data_dir)
    out.mkdir()
    pl.DataFrame({"item": np.arange(1, len(ids) + 1, dtype=np.int32), "original_id": ids}).write_parquet(
        out / "items.parquet"
    )
    train = (data_dir / "scientific-mm" / "Scientific.train.inter").read_text().splitlines()[1:]
    last = {}
    for line in train:  # `train` holds every prefix; the longest one per user is the full train history
        user, hist, target = line.split("\t")
        seq = [int(i) for i in hist.split()] + [int(target)]
        if len(seq) > len(last.get(user, [])):
            last[user] = seq
    users = sorted(last)
    rows = [(u + 1, item + 1, p, p) for u, name in enumerate(users) for p, item in enumerate(last[name])]
    inter = pl.DataFrame(rows, schema=["user", "item", "timestamp", "position"], orient="row")
    inter.with_columns(pl.lit("train").alias("split")).write_parquet(out / "interactions.parquet")
    pl.DataFrame({"user": np.arange(1, len(users) + 1, dtype=np.int32), "original_id": users}).write_parquet(
        out / "users.parquet"
    )
    (out / "stats.json").write_text(json.dumps({"name": "scientific-mm-test"}))
    return out


def test_cooccurring_pairs_from_a_prepared_dataset(data_dir, clip_store, tmp_path):
    ds = write_prepared(data_dir, tmp_path / "ds")
    cfg = small_cfg(
        clip_store,
        tmp_path / "co.zarr",
        dataset=str(ds),
        codebook={"random_pairs": 5000, "cooccur_pairs": 5000, "n_init": 1},
    )
    meta = FeatureStore.open(dissect(cfg)).attrs["dissect"]["codebook"]
    dropped = meta["dropped"]
    assert meta["pairs"]["random"] == 5000
    assert meta["pairs"]["cooccur"] + dropped["cooccur_same_item"] + dropped["cooccur_unusable_item"] == 5000
    assert meta["pairs"]["cooccur"] > 4000
    assert sum(meta["codes_by_source"]["cooccur"]) == meta["pairs"]["cooccur"]


def test_item_order_mismatch_with_dataset_is_refused(data_dir, clip_store, tmp_path):
    ds = write_prepared(data_dir, tmp_path / "ds")
    items = pl.read_parquet(ds / "items.parquet")
    items.with_columns(pl.col("original_id").reverse()).write_parquet(ds / "items.parquet")
    with pytest.raises(StoreError, match="item order differs"):
        dissect(small_cfg(clip_store, tmp_path / "x.zarr", dataset=str(ds)))


def test_bad_input_gives_clear_errors(clip_store, tmp_path):
    with pytest.raises(StoreError, match="no feature store here"):
        dissect(small_cfg(str(tmp_path / "missing.zarr"), tmp_path / "o.zarr"))
    with pytest.raises(FacetError, match="divisible by n_facets: 120 % 7 = 1"):
        dissect(
            small_cfg(clip_store, tmp_path / "o.zarr", reduce={"dim": 120}, facets={"mode": "chunks", "n_facets": 7}),
        )
    with pytest.raises(FacetError, match="n_facets=200 is larger than the feature dim 128"):
        dissect(small_cfg(clip_store, tmp_path / "o.zarr", facets={"n_facets": 200}))
    with pytest.raises(CodebookError, match="n_codes=50 is larger than the 10 pairs"):
        dissect(small_cfg(clip_store, tmp_path / "o.zarr", codebook={"random_pairs": 10}))
    with pytest.raises(StoreError, match="reduce.dim=1024"):
        dissect(small_cfg(clip_store, tmp_path / "o.zarr", reduce={"dim": 1024}))
    assert not (tmp_path / "o.zarr").exists()  # all refused before writing anything
    with pytest.raises(StoreError, match="must not be the input"):
        dissect(small_cfg(clip_store, Path(clip_store)))


def test_cli_reports_errors_and_writes_the_store(clip_store, tmp_path, capsys):
    from jobs.cli import main

    cfg = tmp_path / "d.yaml"
    cfg.write_text(
        f"features: {clip_store}\noutput: {tmp_path / 'cli.zarr'}\ncodebook: {{random_pairs: 5000, n_init: 1}}\n"
    )
    assert main(["dissect", str(cfg), "facets.mode=chunks", "facets.n_facets=3"]) == 1
    assert "divisible" in capsys.readouterr().err
    assert main(["dissect", str(cfg), "codebook.n_codes=8"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["output"] == str(tmp_path / "cli.zarr") and summary["n_codes"] == 8
    assert FeatureStore.open(tmp_path / "cli.zarr").group["centroids"].shape == (8, 8)
    assert main(["dissect", str(cfg), "codebook.n_codes=8", "overwrite=false"]) == 1  # refused before any work
    assert "already exists; set overwrite=true" in capsys.readouterr().err
    assert FeatureStore.open(tmp_path / "cli.zarr").is_complete()
    with pytest.raises(ConfigError, match="unknown key 'facets.modes'"):
        load_config(DissectConfig, cfg, ["facets.modes=chunks"])


@pytest.mark.parametrize(
    "path", sorted(Path(__file__).resolve().parent.parent.glob("configs/dissect/*.yaml")), ids=lambda p: p.name
)
def test_shipped_configs_load(path):
    cfg = load_config(DissectConfig, path)
    assert cfg.features and cfg.dataset


@pytest.mark.parametrize(
    "dissect_cfg, producer",
    [
        ("beauty-minilm.yaml", "encode/beauty-minilm.yaml"),
        ("scientific-mm-image.yaml", "import/scientific-mm-clip-image.yaml"),
        ("scientific-mm-text.yaml", "import/scientific-mm-clip-text.yaml"),
    ],
)
def test_shipped_configs_read_what_encode_and_import_write(dissect_cfg, producer):
    import yaml

    root = Path(__file__).resolve().parent.parent / "configs"
    made = yaml.safe_load((root / producer).read_text())
    cfg = load_config(DissectConfig, root / "dissect" / dissect_cfg)
    assert cfg.features == made["output"]["path"] and cfg.dataset == made["dataset"]
    assert cfg.resolved_output() == made["output"]["path"] + ".dissect.zarr"
