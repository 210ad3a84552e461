"""`kdsr prepare` on the real shared data: every input format, the three split protocols, k-core, stats."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import polars as pl
import pytest

from kdsr.config import load_config, validate_config
from kdsr.dataset import PreparedDataset
from kdsr.paths import REPO_ROOT
from prepare.config import PrepareConfig
from prepare.readers import InputError
from prepare.run import run_prepare

CONFIGS = REPO_ROOT / "configs" / "prepare"


def run_config(name: str, out: Path, *overrides: str) -> PreparedDataset:
    cfg = load_config(PrepareConfig, CONFIGS / f"{name}.yaml", [f"output_dir={out}", *overrides])
    return PreparedDataset.open(run_prepare(cfg)["output"])


@pytest.fixture(scope="module")
def beauty(data_dir, tmp_path_factory) -> PreparedDataset:
    return run_config("beauty", tmp_path_factory.mktemp("beauty") / "beauty")


@pytest.fixture(scope="module")
def scientific(data_dir, tmp_path_factory) -> PreparedDataset:
    return run_config("scientific", tmp_path_factory.mktemp("sci") / "scientific")


def check_contract(ds: PreparedDataset) -> None:
    """The dataset.py contract: dtypes, contiguous IDs from 1, sorted rows, positions 0..n-1, accounting."""
    assert ds.items.schema["item"] == pl.Int32 and ds.items.schema["original_id"] == pl.Utf8
    assert ds.items["item"].to_list() == list(range(1, ds.n_items + 1))
    assert ds.users["user"].to_list() == list(range(1, ds.n_users + 1))
    assert ds.items["original_id"].n_unique() == ds.n_items and ds.users["original_id"].n_unique() == ds.n_users
    inter = ds.interactions
    assert dict(inter.schema) == {
        "user": pl.Int32,
        "item": pl.Int32,
        "timestamp": pl.Int64,
        "position": pl.Int32,
        "split": pl.Utf8,
    }
    assert inter.equals(inter.sort(["user", "position"]))
    assert set(inter["split"].unique()) <= {"train", "valid", "test"}
    assert inter["item"].min() >= 1 and inter["item"].max() == ds.n_items and inter["user"].n_unique() == ds.n_users
    assert inter.select((pl.col("position") == pl.int_range(pl.len()).over("user")).all()).item()
    assert inter.select((pl.col("timestamp").diff().over("user").fill_null(0) >= 0).all()).item()
    s = ds.stats
    for key in (
        "name",
        "protocol",
        "n_users",
        "n_items",
        "n_interactions",
        "seq_len",
        "split",
        "dropped",
        "source",
        "text_fields",
    ):
        assert key in s
    assert s["n_interactions"] == inter.height and sum(s["split"].values()) == inter.height
    for kind, kept in (("interactions", s["n_interactions"]), ("items", s["n_items"])):
        lost = sum(v for k, v in s["dropped"].items() if k.startswith(kind + "."))
        assert s["read"][kind] - lost == kept, kind
    lengths = inter.group_by("user").len()["len"]
    assert s["seq_len"]["min"] == lengths.min() and s["seq_len"]["max"] == lengths.max()
    assert s["seq_len"]["mean"] == pytest.approx(lengths.mean())
    assert (ds.path / "config.yaml").is_file()


# ---- input format 1: generic Parquet tables -------------------------------------------------------


def test_beauty_defaults_match_the_published_counts(beauty):
    check_contract(beauty)
    assert (beauty.n_users, beauty.n_items, beauty.stats["n_interactions"]) == (22332, 12086, 198215)
    assert all(v == 0 for v in beauty.stats["dropped"].values())
    assert beauty.stats["protocol"] == "leave_one_out" and beauty.text_fields() == ["title"]
    assert beauty.items["title"].null_count() == 0


def test_beauty_keeps_the_record_order_of_equal_timestamps(beauty, data_dir):
    """The source rows are each user's chronological order with many ties: the prepared order must equal it."""
    src = pl.read_parquet(data_dir / "amazon-beauty" / "interactions.parquet")
    expected = src.group_by("user_id", maintain_order=True).agg(pl.col("item_id").cast(pl.Utf8))
    got = (
        beauty.interactions.join(beauty.items.select("item", "original_id"), on="item")
        .join(beauty.users.rename({"original_id": "u"}), on="user")
        .sort("user", "position")
        .group_by("u", maintain_order=True)
        .agg("original_id")
    )
    got = dict(zip(got["u"].cast(pl.Int64).to_list(), got["original_id"].to_list()))
    assert dict(zip(expected["user_id"].to_list(), expected["item_id"].to_list())) == got
    assert src.group_by("user_id", "timestamp").len()["len"].max() > 1  # ties really occur


def test_beauty_text_and_id_maps_round_trip(beauty, data_dir):
    src = pl.read_parquet(data_dir / "amazon-beauty" / "items.parquet").with_columns(pl.col("item_id").cast(pl.Utf8))
    joined = beauty.items.join(src, left_on="original_id", right_on="item_id")
    assert joined.height == beauty.n_items and (joined["title"] == joined["title_right"]).all()
    assert beauty.item_original_ids() == sorted(beauty.item_original_ids(), key=int)


def test_ml1m_parquet(data_dir, tmp_path):
    ds = run_config("ml-1m", tmp_path / "ml-1m")
    check_contract(ds)
    assert (ds.n_users, ds.n_items, ds.stats["n_interactions"]) == (6040, 3416, 999611)


# ---- input format 2: RecBole atomic files (and k-core on data that is not pre-filtered) -----------


def reference_kcore(pairs: list[tuple[str, str]], k: int) -> list[tuple[str, str]]:
    """An independent plain-Python iterative k-core, to check the polars one."""
    while True:
        users, items = Counter(u for u, _ in pairs), Counter(i for _, i in pairs)
        kept = [(u, i) for u, i in pairs if users[u] >= k and items[i] >= k]
        if len(kept) == len(pairs):
            return kept
        pairs = kept


@pytest.mark.parametrize("k", [5, 20])
def test_ml100k_kcore_matches_reference(data_dir, tmp_path, k):
    ds = run_config("ml-100k", tmp_path / "ml-100k", f"filter.kcore={k}")
    check_contract(ds)
    raw = pl.read_csv(data_dir / "ml-100k" / "ml-100k.inter", separator="\t", infer_schema=False)
    expected = reference_kcore(list(zip(raw["user_id:token"], raw["item_id:token"])), k)
    assert raw.height == 100_000 and len(expected) < raw.height  # the filter really removes rows
    got = ds.interactions.join(ds.users.rename({"original_id": "u"}), on="user").join(
        ds.items.rename({"original_id": "i"}), on="item"
    )
    assert sorted(zip(got["u"], got["i"])) == sorted(expected)
    assert ds.interactions.group_by("user").len()["len"].min() >= k
    assert ds.interactions.group_by("item").len()["len"].min() >= k
    assert ds.stats["dropped"]["interactions.kcore"] == raw.height - len(expected)
    assert ds.stats["kcore_rounds"] > 1


def test_ml100k_rating_threshold_and_text(data_dir, tmp_path):
    ds = run_config("ml-100k", tmp_path / "ml-100k", "filter.rating_threshold=4", "filter.kcore=0")
    raw = pl.read_csv(
        data_dir / "ml-100k" / "ml-100k.inter", separator="\t", schema_overrides={"rating:float": pl.Float64}
    )
    below = raw.filter(pl.col("rating:float") < 4).height
    assert ds.stats["dropped"]["interactions.rating_below_threshold"] == below
    check_contract(ds)
    assert ds.text_fields() == ["movie_title"] and ds.items["movie_title"].null_count() == 0
    toy = ds.items.filter(pl.col("original_id") == "1")
    assert toy["movie_title"].to_list() == ["Toy Story"]


# ---- input format 2b: UniSRec / RecBole split files ------------------------------------------------


def read_split_file(path: Path) -> pl.DataFrame:
    df = pl.read_csv(path, separator="\t", infer_schema=False, quote_char=None)
    return df.rename({c: c.split(":")[0] for c in df.columns})


@pytest.mark.parametrize("name, users, items", [("scientific", 8442, 4385), ("scientific-mm", 2928, 1585)])
def test_recbole_split_keeps_the_files_split(data_dir, tmp_path, name, users, items):
    ds = run_config(name, tmp_path / name)
    check_contract(ds)
    assert (ds.n_users, ds.n_items) == (users, items) and ds.stats["protocol"] == "given"
    folder = data_dir / name
    item_asin = pl.read_csv(
        folder / "Scientific.item2index",
        separator="\t",
        has_header=False,
        new_columns=["asin", "i"],
        infer_schema=False,
    )
    user_name = pl.read_csv(
        folder / "Scientific.user2index",
        separator="\t",
        has_header=False,
        new_columns=["name", "u"],
        infer_schema=False,
    )
    asin = dict(zip(item_asin["i"], item_asin["asin"]))
    uname = dict(zip(user_name["u"], user_name["name"]))
    # item r + 1 is row r of the index (and of Scientific.feat*CLS)
    assert ds.item_original_ids() == item_asin.sort(pl.col("i").cast(pl.Int64))["asin"].to_list()

    seqs = (
        ds.interactions.join(ds.items.select("item", "original_id"), on="item")
        .join(ds.users.rename({"original_id": "u"}), on="user")
        .sort("user", "position")
        .group_by("u", maintain_order=True)
        .agg("original_id", "split")
    )
    seqs = {u: (items_, splits) for u, items_, splits in seqs.iter_rows()}
    for split_name, offset in (("valid", 2), ("test", 1)):
        rows = read_split_file(folder / f"Scientific.{split_name}.inter")
        assert rows.height == users
        for u, hist, target in rows.iter_rows():
            items_, splits = seqs[uname[u]]
            assert items_[-offset] == asin[target] and splits[-offset] == split_name
            assert items_[:-offset][-50:] == [asin[i] for i in hist.split(" ")]
    n_train = read_split_file(folder / "Scientific.train.inter").height
    # the train file holds every prefix of each training part except the empty one
    assert ds.stats["split"]["train"] == n_train + users


def test_scientific_items_text(scientific, data_dir):
    assert scientific.text_fields() == ["text"] and scientific.items["text"].null_count() == 0
    assert scientific.stats["timestamp_unit"] == "position"
    assert any("position" in note for note in scientific.stats["notes"])


def test_recbole_split_refuses_filters_that_change_the_split(data_dir, tmp_path):
    with pytest.raises(InputError, match="given split"):
        run_config("scientific", tmp_path / "s", "filter.kcore=6")


# ---- split protocols ---------------------------------------------------------------------------


def test_leave_one_out(beauty):
    inter = beauty.interactions.with_columns(pl.len().over("user").alias("n"))
    assert (
        inter.filter(pl.col("split") == "test")["position"] == inter.filter(pl.col("split") == "test")["n"] - 1
    ).all()
    assert (
        inter.filter(pl.col("split") == "valid")["position"] == inter.filter(pl.col("split") == "valid")["n"] - 2
    ).all()
    assert beauty.stats["split"] == {"train": 198215 - 2 * 22332, "valid": 22332, "test": 22332}


def test_leave_one_out_drops_and_counts_short_users(data_dir, tmp_path):
    ds = run_config("ml-100k", tmp_path / "m", "filter.kcore=0", "filter.rating_threshold=5")
    rated5 = pl.read_csv(
        data_dir / "ml-100k" / "ml-100k.inter", separator="\t", schema_overrides={"rating:float": pl.Float64}
    )
    per_user = rated5.filter(pl.col("rating:float") >= 5).group_by("user_id:token").len()
    short = per_user.filter(pl.col("len") < 3)
    assert short.height > 0
    assert ds.stats["dropped"]["users.too_short_for_split"] == short.height
    assert ds.stats["dropped"]["interactions.too_short_for_split"] == short["len"].sum()
    check_contract(ds)


def test_ratio_split(beauty, tmp_path):
    ds = run_config("beauty-ratio", tmp_path / "r")
    check_contract(ds)
    assert ds.stats["protocol"] == "ratio"
    got = ds.interactions.group_by("user", maintain_order=True).agg("split", pl.len().alias("n"))
    for splits, n in zip(got["split"].to_list()[:3000], got["n"].to_list()[:3000]):
        n_test, n_valid = max(1, int(n * 0.2)), max(1, int(n * 0.1))
        assert splits == ["train"] * (n - n_test - n_valid) + ["valid"] * n_valid + ["test"] * n_test
    # same interactions as leave-one-out, only labelled differently
    assert ds.interactions.drop("split").equals(beauty.interactions.drop("split"))


def test_temporal_split(beauty, tmp_path):
    ds = run_config(
        "beauty", tmp_path / "t", "split.protocol=temporal", "split.test_ratio=0.2", "split.valid_ratio=0.1"
    )
    check_contract(ds)
    inter, details = ds.interactions, ds.stats["split_details"]
    by = {s: inter.filter(pl.col("split") == s)["timestamp"] for s in ("train", "valid", "test")}
    assert by["train"].max() < by["valid"].min() <= by["valid"].max() < by["test"].min()
    assert by["test"].min() == details["test_start"] and by["valid"].min() == details["valid_start"]
    assert 0.2 <= by["test"].len() / inter.height < 0.25  # ties keep a day together, so slightly above
    assert sum(ds.stats["dropped"].values()) == 0

    cut = int(by["test"].min())
    fixed = run_config(
        "beauty", tmp_path / "t2", "split.protocol=temporal", f"split.test_start={cut}", f"split.valid_start={cut}"
    )
    assert fixed.stats["split"]["valid"] == 0 and fixed.stats["split"]["test"] == by["test"].len()


# ---- the command line ------------------------------------------------------------------------------


def test_cli_prints_summary_and_writes_outputs(data_dir, tmp_path, capsys):
    from jobs.cli import main

    assert main(["prepare", str(CONFIGS / "scientific-mm.yaml"), f"output_dir={tmp_path / 'out'}"]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out.strip().splitlines()[-1])
    assert summary["output"] == str(tmp_path / "out")
    assert (summary["n_users"], summary["n_items"], summary["n_interactions"]) == (2928, 1585, 19712)
    assert "2,928 users, 1,585 items, 19,712 interactions" in captured.err and "dropped: nothing" in captured.err
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["split"]["test"] == 2928
    saved = load_config(PrepareConfig, tmp_path / "out" / "config.yaml")
    assert saved.output_dir == str(tmp_path / "out")


def test_cli_reports_errors_without_traceback(tmp_path, capsys):
    from jobs.prepare import main

    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"name: x\noutput_dir: {tmp_path / 'o'}\ntable:\n  interactions: {tmp_path / 'nope.parquet'}\n")
    assert main([str(cfg)]) == 1
    err = capsys.readouterr().err
    assert "nope.parquet: file not found" in err and "Traceback" not in err
    assert main([str(cfg), "filter.kcoer=1"]) == 2  # a bad config
    assert "unknown key 'filter.kcoer'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_sequences_helper(scientific):
    train = scientific.sequences(("train",))
    full = scientific.sequences()
    assert train.height == full.height == scientific.n_users
    assert (full["item"].list.len() - train["item"].list.len() == 2).all()
    assert (
        validate_config(PrepareConfig, {"name": "x", "output_dir": "o", "recbole_split": {"path": "p"}}).split.protocol
        == "leave_one_out"
    )
