"""Using a trained run: the Python API (original IDs, exclusion, unknown / empty histories), the chunked top-K,
`kdsr recommend` (part files, kill and resume, bad inputs) and `kdsr export`; on ml-100k, the top-K written
for the test histories reproduces the run's own test metrics."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import polars as pl
import pytest
import torch
import yaml

from feature_store.store import FeatureStore
from jobs import export as export_job
from jobs import recommend as recommend_job
from kdsr.paths import REPO_ROOT
from trainer.ranking import chunked_top_k
from trainer.recommend import Recommender, RecommendError, RunError

torch.set_num_threads(1)


def recommend(*argv, capsys=None):
    code = recommend_job.main([str(a) for a in argv])
    return code, (json.loads(capsys.readouterr().out) if capsys and code == 0 else None)


# ---- the chunked top-K ----------------------------------------------------------------------------------
def test_chunked_top_k_equals_a_full_sort_with_ties_to_the_lower_id():
    g = torch.Generator().manual_seed(0)
    # small integers: every score is exact, and many tie (within and across chunks)
    h = torch.randint(-2, 3, (6, 4), generator=g).float()
    candidates = torch.randint(-2, 3, (41, 4), generator=g).float()
    seen = torch.tensor([[25, 3, 0], [0, 0, 0], [1, 2, 4], [7, 0, 0], [33, 19, 0], [5, 6, 8]])
    full = (h @ candidates.T).numpy()
    for k, exclude in ((5, None), (12, seen), (40, seen)):
        want_ids, want_scores = [], []
        for b in range(6):
            drop = {0} | (set(seen[b].tolist()) if exclude is not None else set())
            cand = [j for j in range(41) if j not in drop]
            order = sorted(cand, key=lambda j: (-full[b, j], j))[:k]
            want_ids.append(order + [0] * (k - len(order)))
            want_scores.append([full[b, j] for j in order] + [-math.inf] * (k - len(order)))
        for chunk in (1, 3, 7, 64):
            ids, scores = chunked_top_k(h, candidates, k, exclude, chunk)
            assert ids.tolist() == want_ids, (k, chunk)
            np.testing.assert_allclose(scores.numpy(), np.asarray(want_scores, np.float32), rtol=1e-6)


# ---- the Python API ------------------------------------------------------------------------------------
def test_api_recommends_in_original_ids(toy_run):
    rec = Recommender.load(toy_run)
    assert rec.n_items == 30 and rec.item_ids[1] == "i0001"
    history = ["i0003", "i0004", "i0005"]
    r = rec.recommend_one(history, k=10)
    assert len(r.items) == 10 and not set(r.items) & set(history) and r.unknown == 0 and not r.popular
    assert r.scores == sorted(r.scores, reverse=True) and all(i.startswith("i") for i in r.items)
    # the same scores as the internal top-K, which is what evaluation ranks by
    ids, scores = rec.top_k([rec.encode(history)[0]], 10)
    assert list(rec.item_ids[ids[0]]) == r.items and np.allclose(scores[0], r.scores)
    # exclusion is a choice: without it the history may come back
    everything = rec.recommend_one(history, k=30, exclude_history=False)
    assert set(history) <= set(everything.items) and len(everything.items) == 30
    # with exclusion, fewer than k candidates remain: the answer is shorter, never padding
    assert len(rec.recommend_one(history, k=30).items) == 27
    # batches give the answers single calls give
    many = rec.recommend([history, ["i0010"], ["i0020", "i0021"]], k=5, batch_size=2)
    assert many[0].items == rec.recommend_one(history, k=5).items


def test_api_unknown_and_empty_histories(toy_run):
    rec = Recommender.load(toy_run)
    r = rec.recommend_one(["i0003", "nope", 17, "i0004"], k=5)
    assert r.unknown == 2 and r.items == rec.recommend_one(["i0003", "i0004"], k=5).items
    with pytest.raises(RecommendError, match=r"histories\[0\]\[1\]: item 'nope' is not in the run's catalog"):
        rec.recommend_one(["i0003", "nope"], unknown="error")
    with pytest.raises(RecommendError, match=r"histories\[1\]: empty history") as e:
        rec.recommend([["i0003"], []])
    assert e.value.field == "history"
    with pytest.raises(RecommendError, match=r"all 2 items unknown"):
        rec.recommend_one(["x", "y"])
    pop = rec.recommend_one(["x"], k=4, empty="popular")
    assert pop.popular and pop.unknown == 1 and all(math.isnan(s) for s in pop.scores)
    train = rec.dataset.interactions.filter(pl.col("split") == "train")
    counts = train.group_by("item").len().sort(["len", "item"], descending=[True, False])
    assert pop.items == list(rec.item_ids[counts["item"][:4].to_numpy()])
    for k in (0, 31):
        with pytest.raises(RecommendError, match="k: must be between 1 and the catalog size 30") as e:
            rec.recommend_one(["i0003"], k=k)
        assert e.value.field == "k"


def test_a_run_whose_inputs_changed_is_refused(rebuilt_run, capsys):
    run = rebuilt_run
    with pytest.raises(RunError, match="dataset.stats_sha256"):
        Recommender.load(run)
    assert Recommender.load(run, check_inputs=False).n_items == 30
    assert recommend(run, "progress=false") == (1, None)
    assert "inputs differ from those the run was trained on" in capsys.readouterr().err
    (run / "best" / "model.safetensors").unlink()
    with pytest.raises(RunError, match="best/model.safetensors: missing; .* not a finished `kdsr train` run"):
        Recommender.load(run)


# ---- kdsr recommend ------------------------------------------------------------------------------------
def test_recommend_from_a_histories_file(toy_run, tmp_path, capsys):
    rows = [("u1", "i0003"), ("u2", "nope"), ("u1", "i0004"), ("u3", "i0010"), ("u1", "unknown")]
    pl.DataFrame(rows, schema=["user_id", "item_id"], orient="row").write_csv(tmp_path / "h.csv")
    out = tmp_path / "out"
    args = [toy_run, f"histories={tmp_path / 'h.csv'}", f"output={out}", "k=5", "progress=false"]
    code, summary = recommend(*args, "empty_history=popular", capsys=capsys)
    assert code == 0 and summary["users"] == 3 and summary["unknown_items_dropped"] == 2
    assert summary["popular_fallbacks"] == 1 and summary["parts_written"] == 1
    df = pl.read_parquet(out / "part-00000.parquet")
    assert df.columns == ["user_id", "rank", "item_id", "score"] and df["user_id"].unique(
        maintain_order=True
    ).to_list() == [
        "u1",
        "u2",
        "u3",
    ]
    rec = Recommender.load(toy_run)
    u1 = df.filter(pl.col("user_id") == "u1")
    assert u1["item_id"].to_list() == rec.recommend_one(["i0003", "i0004"], k=5).items and u1["rank"].to_list() == [
        1,
        2,
        3,
        4,
        5,
    ]
    assert df.filter(pl.col("user_id") == "u2")["score"].is_nan().all()
    # the strict policies name the file, the user and the item
    assert recommend(*args, f"output={tmp_path / 'o2'}") == (1, None)
    assert "user 'u2' has an empty history (1 unknown items dropped)" in capsys.readouterr().err
    # ... also when a Ray worker meets it: the same one-line error, no traceback
    ray_args = ["users_per_part=1", "workers=2", "ray.num_cpus=2", f"output={tmp_path / 'o4'}"]
    assert recommend(*args, *ray_args) == (1, None)
    err = capsys.readouterr().err
    assert "user 'u2' has an empty history (1 unknown items dropped)" in err and "Traceback" not in err
    assert recommend(*args, f"output={tmp_path / 'o3'}", "unknown_items=error") == (1, None)
    assert "h.csv: user 'u1', item[2]: item 'unknown' is not in the run's catalog" in capsys.readouterr().err


def test_recommend_bad_usage_exits_2_naming_the_key(toy_run, tmp_path, capsys):
    pl.DataFrame({"user": ["a"], "item_id": ["i0001"]}).write_parquet(tmp_path / "h.parquet")
    for extra, message in (
        ("k=0", "k: Input should be greater than 0"),
        ("k=31", "k: must be between 1 and the catalog size 30"),
        (f"histories={tmp_path / 'h.parquet'}", "has no column user_id"),
        (f"histories={tmp_path / 'missing.csv'}", "histories: cannot read"),
        ("history=everything", "history: Input should be"),
        ("kk=3", "unknown key 'kk'"),
    ):
        assert recommend(toy_run, f"output={tmp_path / 'o'}", extra) == (2, None), extra
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (extra, err)
    assert recommend(tmp_path, "progress=false") == (1, None)
    assert "is not a finished `kdsr train` run directory" in capsys.readouterr().err


def test_recommendations_reproduce_the_test_metrics(ml100k_run, capsys):
    """The top-10 written for the evaluation's test histories, with its exclusion setting, scores exactly the
    NDCG@10 and Recall@10 that training recorded."""
    cfg = yaml.safe_load((ml100k_run / "config.yaml").read_text())
    out = ml100k_run / "test-recs"
    exclude = f"exclude_history={str(cfg['eval']['exclude_history']).lower()}"
    args = [ml100k_run, "history=before_test", exclude, f"output={out}", "progress=false"]
    code, summary = recommend(*args, capsys=capsys)
    assert code == 0 and summary["users"] == 943 and summary["users_skipped"] == 0
    recs = pl.read_parquet(out / "*.parquet")
    data = cfg["dataset"]
    items = pl.read_parquet(f"{data}/items.parquet").select("item", item_id="original_id")
    users = pl.read_parquet(f"{data}/users.parquet").select("user", user_id=pl.col("original_id").cast(pl.Utf8))
    test = pl.read_parquet(f"{data}/interactions.parquet").filter(pl.col("split") == "test")
    test = test.join(items, on="item").join(users, on="user").select("user_id", "item_id")
    ranks = test.join(recs.filter(pl.col("rank") <= 10), on=["user_id", "item_id"], how="left")["rank"].to_numpy()
    hit = ~np.isnan(ranks.astype(float))
    ndcg = np.where(hit, 1 / np.log2(np.where(hit, ranks, 1) + 1), 0).mean()
    metrics = json.loads((ml100k_run / "metrics.json").read_text())["test"]
    assert metrics["ndcg@10"] > 0.003  # the check means something only when the model ranks some targets
    assert round(ndcg, 4) == round(metrics["ndcg@10"], 4)
    assert round(hit.mean(), 4) == round(metrics["hr@10"], 4)  # one target per user: Recall@10 = HR@10


def test_recommend_resumes_after_a_kill(ml100k_run, tmp_path, capsys):
    out = tmp_path / "recs"
    args = [str(ml100k_run), f"output={out}", "users_per_part=200", "k=20", "progress=false"]
    env = os.environ | {"KDSR_TEST_KILL_AFTER_PART": "1", "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.run([sys.executable, "-m", "jobs.recommend", *args], env=env, capture_output=True, timeout=300)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    assert sorted(p.name for p in out.glob("part-*")) == ["part-00000.parquet", "part-00001.parquet"]
    (out / ".part-00002.parquet.tmp-99999").write_bytes(b"half a part")  # as a kill mid-write leaves it
    first = (out / "part-00000.parquet").stat().st_mtime_ns
    code, summary = recommend(*args, capsys=capsys)
    assert code == 0 and (summary["parts"], summary["parts_skipped"], summary["parts_written"]) == (5, 2, 3)
    assert (out / "part-00000.parquet").stat().st_mtime_ns == first and not list(out.glob(".part-*"))
    # from scratch, the parts split over two Ray workers: the same rows
    fresh = tmp_path / "fresh"
    on_ray = ["workers=2", "worker_cpus=1", "ray.num_cpus=2"]
    code, summary = recommend(*args[:1], f"output={fresh}", *args[2:], *on_ray, capsys=capsys)
    assert code == 0 and summary["parts_written"] == 5
    resumed, again = (pl.read_parquet(d / "*.parquet") for d in (out, fresh))
    assert resumed.height == 943 * 20 and resumed.equals(again)
    # a resume that asks for something else is refused, naming what differs
    assert recommend(*args[:-2], "k=10", "progress=false") == (2, None)
    assert "differs in: k" in capsys.readouterr().err


# ---- kdsr export ---------------------------------------------------------------------------------------
def test_export_writes_feature_stores_with_provenance(toy_run, tmp_path, capsys):
    out = tmp_path / "export"
    assert export_job.main([str(toy_run), f"output={out}", "shard_size=16", "hf_dataset=true"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(summary["tables"]) == {"scoring", "id", "text"}
    rec = Recommender.load(toy_run)
    expect = {
        "scoring": rec.candidates()[1:],
        "id": rec.model.id_emb.weight[1:],
        "text": rec.model.modality_tables["text"][1:],
    }
    for name, x in expect.items():
        store = FeatureStore.open(out / f"{name}.zarr")
        store.check_items(rec.item_ids[1:])  # complete, in the dataset's item order
        np.testing.assert_allclose(store.read_all(), x.detach().numpy(), rtol=1e-6)
        assert store.attrs["table"] == name and store.attrs["kdsr_export_run"] == str(toy_run.resolve())
        assert store.attrs["weights_sha256"].startswith("sha256:") and store.attrs["config_sha256"]
    import datasets

    hf = datasets.load_from_disk(str(out / "hf"))
    assert hf.column_names == ["item", "item_id", "scoring", "id", "text"] and hf[0]["item_id"] == "i0001"
    np.testing.assert_allclose(hf[4]["text"], expect["text"][4].detach().numpy(), rtol=1e-6)
    # re-running continues the same export; another setting is refused unless overwrite
    assert export_job.main([str(toy_run), f"output={out}", "shard_size=16", "tables=[id]"]) == 0
    assert export_job.main([str(toy_run), f"output={out}", "shard_size=16", "tables=[id]", "dtype=float16"]) == 1
    assert "differs in dtype" in capsys.readouterr().err
    assert export_job.main([str(toy_run), f"output={out}", "tables=[id]", "dtype=float16", "overwrite=true"]) == 0
    assert FeatureStore.open(out / "id.zarr").embeddings.dtype == np.float16
    assert export_job.main([str(toy_run), f"output={out}", "tables=[nope]"]) == 2
    assert "no table 'nope'" in capsys.readouterr().err
