"""`kdsr prepare` inputs that the shared data does not hold as files: Amazon 2014/2018/2023 dumps (fixtures
written here in the documented schemas), Hugging Face datasets (a local save_to_disk folder built from the
real Beauty data), CSV tables, `--download` offline, and every kind of bad input."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import polars as pl
import pytest

from kdsr.config import validate_config
from kdsr.dataset import PreparedDataset
from prepare.amazon import DownloadError, download, official_urls
from prepare.config import AmazonSource, PrepareConfig
from prepare.readers import InputError
from prepare.run import run_prepare


def config(tmp_path: Path, **sections) -> PrepareConfig:
    raw = {"name": "t", "output_dir": str(tmp_path / "out"), "filter": {"kcore": 0}, **sections}
    return validate_config(PrepareConfig, raw)


def run(tmp_path: Path, **sections) -> PreparedDataset:
    return PreparedDataset.open(run_prepare(config(tmp_path, **sections))["output"])


def write_lines(path: Path, lines: list[str], gz: bool = False) -> Path:
    data = ("\n".join(lines) + "\n").encode()
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


# Three users x three items; u1 has two reviews on the same day (record order must decide).
REVIEWS = [
    ("u1", "A", 5.0, 100),
    ("u1", "B", 4.0, 100),
    ("u1", "C", 2.0, 300),
    ("u2", "B", 5.0, 50),
    ("u2", "A", 3.0, 60),
    ("u2", "C", 5.0, 70),
    ("u3", "C", 4.0, 10),
    ("u3", "A", 4.0, 20),
    ("u3", "B", 1.0, 30),
]
META = {
    "A": ("Lipstick red", ["Beauty", "Makeup"], "Brand A"),
    "B": ("Shampoo", ["Beauty", "Hair"], "Brand B"),
    "C": ("Soap", ["Beauty", "Bath"], None),
    "D": ("Never reviewed", ["Beauty"], "D"),
}
# 2023 `images`: hi_res when there is one, else large; the first image counts; none -> null
IMAGES = {
    "A": [
        {"thumb": "http://i/A-t.jpg", "large": "http://i/A-l.jpg", "variant": "MAIN", "hi_res": "http://i/A-h.jpg"},
        {"thumb": "http://i/A2-t.jpg", "large": "http://i/A2-l.jpg", "variant": "PT01", "hi_res": None},
    ],
    "B": [{"thumb": "http://i/B-t.jpg", "large": "http://i/B-l.jpg", "variant": "MAIN", "hi_res": None}],
    "C": [],
    "D": [],
}


def amazon_files(tmp_path: Path, version: str, gz: bool = True) -> tuple[Path, Path]:
    if version == "2023":
        reviews = [
            json.dumps(
                {
                    "rating": r,
                    "title": "t",
                    "text": "x",
                    "images": [],
                    "asin": i + "-v",
                    "parent_asin": i,
                    "user_id": u,
                    "timestamp": t * 1000,
                    "helpful_vote": 0,
                    "verified_purchase": True,
                }
            )
            for u, i, r, t in REVIEWS
        ]
        meta = [
            json.dumps(
                {
                    "main_category": "All Beauty",
                    "title": title,
                    "features": cats,
                    "description": [],
                    "store": brand,
                    "categories": cats,
                    "images": IMAGES[i],
                    "details": {"k": "v"},
                    "parent_asin": i,
                }
            )
            for i, (title, cats, brand) in META.items()
        ]
        names = ("All_Beauty.jsonl", "meta_All_Beauty.jsonl")
    else:
        reviews = [
            json.dumps(
                {
                    "reviewerID": u,
                    "asin": i,
                    "reviewerName": "N",
                    "helpful": [0, 0],
                    "reviewText": "x",
                    "overall": r,
                    "summary": "s",
                    "unixReviewTime": t,
                    "reviewTime": "01 1, 2014",
                    **({"verified": True, "style": {"Size:": " 1"}} if version == "2018" else {}),
                }
            )
            for u, i, r, t in REVIEWS
        ]
        if version == "2014":  # Python literals, single quotes: what `repr(dict)` wrote, not JSON
            meta = [
                repr(
                    {
                        "asin": i,
                        "title": title,
                        "categories": [cats],
                        "brand": brand,
                        "price": 9.5,
                        "related": {"also_bought": ["B"]},
                    }
                )
                for i, (title, cats, brand) in META.items()
            ]
            names = ("reviews_Beauty.json", "meta_Beauty.json")
        else:
            meta = [
                json.dumps(
                    {
                        "asin": i,
                        "title": title,
                        "category": cats,
                        "feature": ["f1", "f2"],
                        "description": ["d"],
                        "brand": brand,
                    }
                )
                for i, (title, cats, brand) in META.items()
            ]
            names = ("Beauty.json", "meta_Beauty.json")
    suffix = ".gz" if gz else ""
    return (
        write_lines(tmp_path / (names[0] + suffix), reviews, gz),
        write_lines(tmp_path / (names[1] + suffix), meta, gz),
    )


@pytest.mark.parametrize("version, gz", [("2014", True), ("2018", True), ("2018", False), ("2023", True)])
def test_amazon_dumps(tmp_path, version, gz):
    reviews, meta = amazon_files(tmp_path, version, gz)
    cats = {"2014": "categories", "2018": "category", "2023": "categories"}[version]
    ds = run(
        tmp_path,
        amazon={"version": version, "reviews": str(reviews), "meta": str(meta), "text_fields": ["title", cats]},
    )
    assert (ds.n_users, ds.n_items, ds.stats["n_interactions"]) == (3, 3, 9)
    assert ds.item_original_ids() == ["A", "B", "C"] and ds.stats["dropped"]["items.never_interacted"] == 1
    assert ds.items["title"].to_list() == ["Lipstick red", "Shampoo", "Soap"]
    assert ds.items[cats].to_list()[0] == "Beauty Makeup"
    u1 = ds.interactions.filter(pl.col("user") == 1)
    assert u1["item"].to_list() == [1, 2, 3] and u1["split"].to_list() == ["train", "valid", "test"]
    assert u1["timestamp"].to_list() == ([100_000, 100_000, 300_000] if version == "2023" else [100, 100, 300])
    assert ds.stats["timestamp_unit"] == ("ms" if version == "2023" else "s")


def test_amazon_2023_image_urls(tmp_path):
    reviews, meta = amazon_files(tmp_path, "2023", gz=False)
    ds = run(tmp_path, amazon={"version": "2023", "reviews": str(reviews), "meta": str(meta), "image_field": "images"})
    assert ds.items["image"].to_list() == ["http://i/A-h.jpg", "http://i/B-l.jpg", None]
    assert ds.text_fields() == ["title"] and ds.stats["image_column"] == "image"
    assert (
        "image"
        not in run(tmp_path, amazon={"version": "2023", "reviews": str(reviews), "meta": str(meta)}).items.columns
    )


def test_shipped_image_configs_line_up():
    from feature_store.config import EncodeConfig
    from kdsr.config import load_config

    root = Path(__file__).resolve().parent.parent
    prep = load_config(PrepareConfig, root / "configs/prepare/amazon-2023-all-beauty.yaml")
    enc = load_config(EncodeConfig, root / "configs/encode/vision-clip.yaml")
    assert (
        prep.amazon.image_field == "images" and enc.dataset == prep.output_dir and enc.encoder.image_column == "image"
    )


def test_amazon_rating_threshold(tmp_path):
    reviews, meta = amazon_files(tmp_path, "2018")
    # u1, u2 and u3 keep 2 ratings >= 4 each: too short to split, so nothing is left, and that is an error
    # naming what each filter dropped, not an empty dataset
    with pytest.raises(InputError, match=r"rating_below_threshold 3, .*users.too_short_for_split 3, .*nothing to"):
        run(
            tmp_path,
            amazon={"version": "2018", "reviews": str(reviews), "meta": str(meta)},
            filter={"kcore": 0, "rating_threshold": 4},
        )


def test_amazon_malformed_lines_error_or_count(tmp_path):
    reviews, meta = amazon_files(tmp_path, "2018", gz=False)
    lines = reviews.read_text().splitlines()
    write_lines(reviews, lines[:4] + ['{"reviewerID": "u9", "asin": '] + lines[4:])
    src = {"version": "2018", "reviews": str(reviews), "meta": str(meta)}
    with pytest.raises(InputError, match=r"Beauty\.json line 5: malformed JSON"):
        run_prepare(config(tmp_path, amazon=src))
    ds = run(tmp_path, amazon=src, policy={"bad_rows": "skip"})
    assert ds.stats["dropped"]["interactions.malformed_line"] == 1 and ds.stats["n_interactions"] == 9

    write_lines(reviews, lines)
    write_lines(meta, meta.read_text().splitlines() + ["{'asin': 'E', 'title': 'Python literal in 2018'}"])
    with pytest.raises(InputError, match=r"meta_Beauty\.json line 5: malformed metadata, not JSON"):
        run_prepare(config(tmp_path, amazon=src))
    ds = run(tmp_path, amazon=src, policy={"bad_rows": "skip"})
    assert ds.stats["dropped"]["items.malformed_line"] == 1


def test_amazon_2014_meta_is_parsed_safely(tmp_path):
    reviews, meta = amazon_files(tmp_path, "2014", gz=False)
    write_lines(meta, meta.read_text().splitlines() + ["__import__('os').system('echo pwned')"])
    with pytest.raises(InputError, match="line 5: malformed metadata, not a Python dict literal"):
        run_prepare(config(tmp_path, amazon={"version": "2014", "reviews": str(reviews), "meta": str(meta)}))


def test_amazon_duplicate_reviews_and_meta(tmp_path):
    reviews, meta = amazon_files(tmp_path, "2023", gz=False)
    write_lines(reviews, reviews.read_text().splitlines() * 2)
    write_lines(meta, meta.read_text().splitlines() + meta.read_text().splitlines()[:1])
    src = {"version": "2023", "reviews": str(reviews), "meta": str(meta)}
    with pytest.raises(InputError, match=r"meta_All_Beauty\.jsonl line 5: duplicate item ID 'A'"):
        run_prepare(config(tmp_path, amazon=src))
    ds = run(tmp_path, amazon=src, policy={"duplicates": "drop"})
    assert ds.stats["dropped"]["interactions.duplicate"] == 9 and ds.stats["dropped"]["items.duplicate"] == 1
    assert ds.stats["n_interactions"] == 9


def test_amazon_missing_files_point_to_download(tmp_path):
    cfg = config(
        tmp_path, amazon={"version": "2018", "category": "Luxury_Beauty", "download_dir": str(tmp_path / "dl")}
    )
    with pytest.raises(
        InputError, match=r"dl/2018/Luxury_Beauty\.json\.gz: reviews file not found; run .*--download Luxury_Beauty"
    ):
        run_prepare(cfg)


def test_official_urls():
    assert official_urls("2014", "Beauty") == {
        "reviews": "https://snap.stanford.edu/data/amazon/productGraph/categoryFiles/reviews_Beauty.json.gz",
        "meta": "https://snap.stanford.edu/data/amazon/productGraph/categoryFiles/meta_Beauty.json.gz",
    }
    assert (
        official_urls("2018", "Luxury_Beauty")["meta"]
        == "https://datarepo.eng.ucsd.edu/mcauley_group/data/amazon_v2/metaFiles2/meta_Luxury_Beauty.json.gz"
    )
    assert official_urls("2023", "All_Beauty")["reviews"].endswith(
        "/amazon_2023/raw/review_categories/All_Beauty.jsonl.gz"
    )


def test_download_fails_at_once_offline(tmp_path):
    src = AmazonSource(version="2023", category="All_Beauty", download_dir=str(tmp_path))
    with pytest.raises(DownloadError, match=r"cannot reach 127\.0\.0\.1:9 .*Download .* by hand"):
        download(src, timeout=3, base_url="http://127.0.0.1:9/")  # the discard port: nothing listens
    assert not any(tmp_path.rglob("*"))


def test_cli_download_offline_and_on_a_non_amazon_config(tmp_path, monkeypatch, capsys):
    import prepare.amazon as amazon
    from jobs.prepare import main

    monkeypatch.setitem(amazon.URLS, "2023", ("http://127.0.0.1:9/", "{}.jsonl.gz", "meta_{}.jsonl.gz"))
    cfg = tmp_path / "a.yaml"
    cfg.write_text(
        f"name: a\noutput_dir: {tmp_path / 'o'}\namazon:\n  version: '2023'\n  reviews: x.jsonl\n"
        f"  download_dir: {tmp_path / 'dl'}\n"
    )
    assert main([str(cfg), "--download", "All_Beauty"]) == 1
    assert "cannot reach 127.0.0.1:9" in capsys.readouterr().err
    other = tmp_path / "b.yaml"
    other.write_text("name: b\noutput_dir: o\ntable:\n  interactions: x.csv\n")
    assert main([str(other), "--download", "All_Beauty"]) == 2  # bad usage
    assert "--download needs an `amazon:` source" in capsys.readouterr().err


# ---- Hugging Face datasets (a local save_to_disk folder made from the real Beauty tables) -------------


def test_huggingface_local_folder(tmp_path, data_dir):
    import datasets

    inter = pl.read_parquet(data_dir / "amazon-beauty" / "interactions.parquet").head(20_000)
    items = pl.read_parquet(data_dir / "amazon-beauty" / "items.parquet")
    datasets.DatasetDict({"full": datasets.Dataset.from_polars(inter)}).save_to_disk(str(tmp_path / "hf_inter"))
    datasets.Dataset.from_polars(items).save_to_disk(str(tmp_path / "hf_items"))
    hf = {
        "interactions": {"path": str(tmp_path / "hf_inter"), "split": "full"},
        "items": {"path": str(tmp_path / "hf_items")},
    }
    ds = run(tmp_path, huggingface=hf, filter={"kcore": 5})
    table = run(
        tmp_path / "t",
        table={
            "interactions": str(write_parquet(inter, tmp_path / "i.parquet")),
            "items": str(data_dir / "amazon-beauty" / "items.parquet"),
        },
        filter={"kcore": 5},
    )
    assert ds.stats["source"]["format"] == "huggingface"
    assert ds.interactions.equals(table.interactions) and ds.items.equals(table.items)
    assert ds.stats["dropped"]["interactions.kcore"] > 0 and ds.stats["dropped"]["items.never_interacted"] > 0
    with pytest.raises(InputError, match="no split 'train'"):
        run_prepare(
            config(tmp_path, huggingface={**hf, "interactions": {"path": hf["interactions"]["path"], "split": "train"}})
        )


def test_huggingface_missing_dataset_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(InputError, match="no-such-user/no-such-dataset: cannot load Hugging Face dataset"):
        run_prepare(
            config(
                tmp_path,
                huggingface={"interactions": {"path": "no-such-user/no-such-dataset"}},
                filter={"require_text": False},
            )
        )


def write_parquet(df: pl.DataFrame, path: Path) -> Path:
    df.write_parquet(path)
    return path


# ---- generic CSV tables and bad input ------------------------------------------------------------


def csv(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


INTER = "uid,iid,ts,stars\n007,10,5,4\n007,11,5,5\n007,12,9,3\n8,10,1,5\n8,12,2,1\n8,11,3,4\n"
ITEMS = "iid,name,desc\n10,Ten,\n11,Eleven,eleven things\n12,,\n13,Thirteen,\n"
COLUMNS = {"user": "uid", "item": "iid", "timestamp": "ts", "rating": "stars"}


def table(tmp_path, inter=INTER, items=ITEMS, **extra):
    return {
        "interactions": csv(tmp_path, "inter.csv", inter),
        "items": csv(tmp_path, "items.csv", items),
        "columns": COLUMNS,
        "text_fields": ["name", "desc"],
        **extra,
    }


def test_csv_tables_with_custom_columns_and_several_text_fields(tmp_path):
    ds = run(tmp_path, table=table(tmp_path), filter={"kcore": 0, "require_text": False})
    assert ds.users["original_id"].to_list() == ["007", "8"]  # IDs stay text: leading zeros survive
    assert ds.text_fields() == ["name", "desc"] and ds.items["desc"].to_list() == [None, "eleven things", None]
    assert ds.interactions.filter(pl.col("user") == 1)["item"].to_list() == [1, 2, 3]

    # Item 12 has no text: it goes with its 2 interactions; 13 was never interacted with. Each user keeps 2,
    # enough for a ratio split without validation (1 train, 1 test).
    ds = run(
        tmp_path,
        table=table(tmp_path),
        filter={"kcore": 0, "require_text": True},
        split={"protocol": "ratio", "valid_ratio": 0},
    )
    d = ds.stats["dropped"]
    assert (d["items.without_text"], d["interactions.item_without_text"], d["items.never_interacted"]) == (1, 2, 1)
    assert ds.item_original_ids() == ["10", "11"] and ds.stats["split"] == {"train": 2, "valid": 0, "test": 2}
    assert ds.interactions.filter(pl.col("user") == 1)["item"].to_list() == [
        1,
        2,
    ]  # 007: 10 and 11 at ts 5, record order


def test_table_image_column_is_kept_and_not_text(tmp_path):
    items = "iid,name,desc,photo\n10,Ten,,img/10.jpg\n11,Eleven,x,\n12,,,img/12.jpg\n13,Thirteen,,\n"
    ds = run(
        tmp_path,
        table=table(tmp_path, items=items, image_field="photo"),
        filter={"kcore": 0, "require_text": True},
        split={"protocol": "ratio", "valid_ratio": 0},
    )
    # item 12 has an image but no text: require_text still drops it; item 11 has text and no image: kept
    assert ds.item_original_ids() == ["10", "11"] and ds.items["image"].to_list() == ["img/10.jpg", None]
    assert ds.text_fields() == ["name", "desc"] and ds.stats["dropped"]["items.without_text"] == 1
    with pytest.raises(InputError, match=r"items\.csv: missing items column 'pic'"):
        run_prepare(config(tmp_path, table=table(tmp_path, items=items, image_field="pic")))
    with pytest.raises(ValueError, match="text_fields has 'image'"):
        config(tmp_path, table=table(tmp_path, image_field="photo", text_fields=["image"]))


def test_missing_column(tmp_path):
    with pytest.raises(InputError, match=r"inter\.csv: missing interactions column 'ts'"):
        run_prepare(config(tmp_path, table=table(tmp_path, inter=INTER.replace("ts", "time"))))
    with pytest.raises(InputError, match=r"items\.csv: missing items column 'desc'"):
        run_prepare(config(tmp_path, table=table(tmp_path, items="iid,name\n10,a\n")))


def test_non_integer_ids_and_numbers(tmp_path):
    bad = INTER.replace("8,12,2,1", "8,x12,2,1")
    with pytest.raises(InputError, match=r"inter\.csv line 6: column 'iid' value 'x12' is not an integer"):
        run_prepare(config(tmp_path, table=table(tmp_path, inter=bad, columns={**COLUMNS, "integer_ids": True})))
    with pytest.raises(InputError, match=r"inter\.csv line 3: column 'ts' value 'noon' is not a number"):
        run_prepare(config(tmp_path, table=table(tmp_path, inter=INTER.replace("007,11,5,5", "007,11,noon,5"))))


def test_unreadable_files(tmp_path):
    garbage = tmp_path / "inter.parquet"
    garbage.write_bytes(b"this is not parquet")
    with pytest.raises(InputError, match=r"inter\.parquet: cannot read as parquet"):
        run_prepare(config(tmp_path, table={"interactions": str(garbage)}, filter={"require_text": False}))
    with pytest.raises(InputError, match=r"nope\.csv: file not found"):
        run_prepare(
            config(tmp_path, table={"interactions": str(tmp_path / "nope.csv")}, filter={"require_text": False})
        )
    with pytest.raises(InputError, match="cannot tell the format"):
        run_prepare(
            config(tmp_path, table={"interactions": str(garbage.with_suffix(".xls"))}, filter={"require_text": False})
        )
    atomic = tmp_path / "x.inter"
    atomic.write_text("user_id\titem_id:token\n1\t2\n")
    with pytest.raises(InputError, match=r"x\.inter: header field 'user_id' is not of the form name:"):
        run_prepare(config(tmp_path, table={"interactions": str(atomic)}, filter={"require_text": False}))


def test_unknown_items(tmp_path):
    inter = INTER + "8,99,4,5\n"
    with pytest.raises(InputError, match=r"inter\.csv line 8: item '99' is not in the items table .*items\.csv"):
        run_prepare(config(tmp_path, table=table(tmp_path, inter=inter)))
    ds = run(
        tmp_path,
        table=table(tmp_path, inter=inter),
        policy={"unknown_items": "drop"},
        filter={"kcore": 0, "require_text": False},
    )
    assert ds.stats["dropped"]["interactions.unknown_item"] == 1 and ds.stats["n_interactions"] == 6


def test_duplicate_rows(tmp_path):
    inter = INTER + "8,11,3,4\n"
    with pytest.raises(InputError, match=r"inter\.csv line 8: duplicate interaction user='8' item='11' timestamp=3"):
        run_prepare(config(tmp_path, table=table(tmp_path, inter=inter)))
    ds = run(
        tmp_path,
        table=table(tmp_path, inter=inter),
        policy={"duplicates": "drop"},
        filter={"kcore": 0, "require_text": False},
    )
    assert ds.stats["dropped"]["interactions.duplicate"] == 1 and ds.stats["n_interactions"] == 6
    with pytest.raises(InputError, match=r"items\.csv line 6: duplicate item ID '10'"):
        run_prepare(config(tmp_path, table=table(tmp_path, items=ITEMS + "10,again,\n")))


def test_missing_values(tmp_path):
    inter = INTER + "8,,7,5\n"
    with pytest.raises(InputError, match=r"inter\.csv line 8: missing item"):
        run_prepare(config(tmp_path, table=table(tmp_path, inter=inter)))
    ds = run(
        tmp_path,
        table=table(tmp_path, inter=inter),
        policy={"bad_rows": "skip"},
        filter={"kcore": 0, "require_text": False},
    )
    assert ds.stats["dropped"]["interactions.missing_value"] == 1


def test_require_text_needs_items(tmp_path):
    with pytest.raises(InputError, match="require_text is true but the source has no items table"):
        run_prepare(config(tmp_path, table={"interactions": csv(tmp_path, "i.csv", INTER), "columns": COLUMNS}))


def test_stable_order_of_equal_timestamps(tmp_path):
    inter = "user_id,item_id,timestamp\nu,c,5\nu,a,5\nu,b,1\nu,d,5\n"
    ds = run(
        tmp_path, table={"interactions": csv(tmp_path, "i.csv", inter)}, filter={"kcore": 0, "require_text": False}
    )
    assert ds.interactions.join(ds.items, on="item", maintain_order="left")["original_id"].to_list() == [
        "b",
        "c",
        "a",
        "d",
    ]


# ---- bad UniSRec split files (tiny copies written here) ------------------------------------------


def split_files(tmp_path: Path, test_target: str = "3") -> Path:
    d = tmp_path / "split"
    d.mkdir(exist_ok=True)
    (d / "X.item2index").write_text("A\t0\nB\t1\nC\t2\nD\t3\n")
    (d / "X.user2index").write_text("u\t0\nv\t1\n")
    (d / "X.text").write_text("item_id:token\ttext:token_seq\nA\ta\nB\tb\nC\tc\nD\td\n")
    head = "user_id:token\titem_id_list:token_seq\titem_id:token\n"
    (d / "X.train.inter").write_text(head + "0\t0 1\t2\n0\t0\t1\n1\t3\t0\n")
    (d / "X.valid.inter").write_text(head + "0\t0 1 2\t3\n1\t3 0\t1\n")
    (d / "X.test.inter").write_text(head + f"0\t0 1 2 3\t{test_target}\n1\t3 0 1\t2\n")
    return d


def test_tiny_split_files_round_trip(tmp_path):
    ds = run(tmp_path, recbole_split={"path": str(split_files(tmp_path))})
    assert ds.sequences()["item"].to_list() == [[1, 2, 3, 4, 4], [4, 1, 2, 3]]
    assert ds.interactions["split"].to_list() == ["train"] * 3 + ["valid", "test"] + ["train"] * 2 + ["valid", "test"]


def test_bad_split_files(tmp_path):
    d = split_files(tmp_path, test_target="x")
    with pytest.raises(InputError, match=r"X\.test\.inter line 2: item_id 'x' is not an integer index"):
        run_prepare(config(tmp_path, recbole_split={"path": str(d)}))
    d = split_files(tmp_path)
    (d / "X.valid.inter").write_text("user_id:token\titem_id_list:token_seq\titem_id:token\n0\t0 1 2\t3\n1\t3 2\t1\n")
    with pytest.raises(InputError, match=r"X\.valid\.inter line 3: history/target of user index 1 does not match"):
        run_prepare(config(tmp_path, recbole_split={"path": str(d)}))
    (d / "X.item2index").write_text("A\t0\nB\t1\nC\t2\nD\tfour\n")
    with pytest.raises(InputError, match=r"X\.item2index line 4: index 'four' is not an integer"):
        run_prepare(config(tmp_path, recbole_split={"path": str(d)}))
    (d / "X.text").unlink()
    with pytest.raises(InputError, match=r"X\.text: file not found"):
        run_prepare(config(tmp_path, recbole_split={"path": str(d)}))


def test_corrupt_gzip_dump(tmp_path):
    reviews, meta = amazon_files(tmp_path, "2018")
    reviews.write_bytes(b"\x1f\x8b" + b"not really gzip" * 10)
    with pytest.raises(InputError, match=r"Beauty\.json\.gz: cannot read"):
        run_prepare(config(tmp_path, amazon={"version": "2018", "reviews": str(reviews), "meta": str(meta)}))
