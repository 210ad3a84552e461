"""The demo's data when ../shared/data is not at hand: `kdsr prepare configs/prepare/beauty.yaml` downloads the
public Amazon 2014 dumps (here from a loopback server serving the real Beauty data in the dumps' own format),
resumes a broken transfer, refuses a bad checksum, and prepares the same dataset as the shared Parquet files."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import json
import threading
from pathlib import Path

import polars as pl
import pytest

from jobs import prepare as prepare_job
from kdsr.paths import REPO_ROOT
from prepare.fetch import DownloadError, fetch

CONFIG = str(REPO_ROOT / "configs/prepare/beauty.yaml")
NAMES = ("reviews_Beauty_5.json.gz", "meta_Beauty.json.gz")


class Files(http.server.ThreadingHTTPServer):
    """name -> bytes on 127.0.0.1, with Range requests; `cut[name] = n` ends the next response after n bytes
    (a broken transfer); `ranges` records the Range headers received."""

    def __init__(self, files: dict[str, bytes]):
        super().__init__(("127.0.0.1", 0), Handler)
        self.files, self.cut, self.ranges = files, {}, []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/mirror"


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        name = self.path.rsplit("/", 1)[-1]
        data = self.server.files.get(name)
        if data is None:
            self.send_error(404)
            return
        start = 0
        if rng := self.headers.get("Range"):
            self.server.ranges.append(rng)
            start = int(rng.removeprefix("bytes=").split("-")[0])
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        body = data[start:]
        if name in self.server.cut:
            body = body[: self.server.cut.pop(name)]
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def dumps_from_parquet(folder: Path) -> dict[str, bytes]:
    """The shared Beauty Parquet files written back in the Amazon 2014 format: reviews as JSON lines, metadata
    as Python-literal dicts, rows in the order of record."""
    inter = pl.read_parquet(folder / "interactions.parquet")
    items = pl.read_parquet(folder / "items.parquet")
    reviews = "".join(
        json.dumps({"reviewerID": f"U{u}", "asin": f"A{i}", "overall": 5.0, "unixReviewTime": t}) + "\n"
        for u, i, t in inter.select("user_id", "item_id", "timestamp").iter_rows()
    )
    meta = "".join(repr({"asin": f"A{i}", "title": title}) + "\n" for i, title in items.iter_rows())
    return {NAMES[0]: gzip.compress(reviews.encode(), 1), NAMES[1]: gzip.compress(meta.encode(), 1)}


@pytest.fixture(scope="module")
def server(data_dir):
    srv = Files(dumps_from_parquet(data_dir / "amazon-beauty"))
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv
    srv.shutdown()


def prepare(tmp_path: Path, *extra: str) -> int:
    missing = tmp_path / "no-shared-data" / "amazon-beauty"
    overrides = [
        f"output_dir={tmp_path / 'out'}",
        f"table.interactions={missing / 'interactions.parquet'}",
        f"table.items={missing / 'items.parquet'}",
        f"fallback.download_dir={tmp_path / 'cache'}",
    ]
    return prepare_job.main([CONFIG, *overrides, *extra])


def test_demo_data_downloaded_resumed_and_prepared_to_the_same_counts(server, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KDSR_DATA_MIRROR", server.url)
    server.cut[NAMES[0]] = 1_000_000  # the first transfer of the reviews breaks after 1 MB
    assert prepare(tmp_path) == 1
    err = capsys.readouterr().err
    part = tmp_path / "cache/2014" / (NAMES[0] + ".part")
    assert "transfer ended early" in err and "run again to resume" in err and "Traceback" not in err
    assert part.stat().st_size == 1_000_000
    assert prepare(tmp_path) == 0
    out = capsys.readouterr()
    assert server.ranges == ["bytes=1000000-"] and not part.exists()
    summary = json.loads(out.out.strip().splitlines()[-1])
    assert (summary["n_users"], summary["n_items"], summary["n_interactions"]) == (22_332, 12_086, 198_215)
    assert "beauty: 22,332 users, 12,086 items, 198,215 interactions" in out.err
    cached = tmp_path / "cache/2014" / NAMES[0]
    assert cached.read_bytes() == server.files[NAMES[0]]
    pinned = (tmp_path / "cache/2014" / (NAMES[0] + ".sha256")).read_text().split()[0]
    assert pinned == hashlib.sha256(server.files[NAMES[0]]).hexdigest()
    # a cached file that changed since it was pinned is refused, not used
    with open(cached, "ab") as f:
        f.write(b"x")
    assert prepare(tmp_path) == 1
    assert "is not the checksum pinned in" in capsys.readouterr().err


def test_a_bad_checksum_is_refused_and_nothing_kept(server, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KDSR_DATA_MIRROR", server.url)
    assert prepare(tmp_path, f"fallback.sha256={{reviews: {'ab' * 32}}}") == 1
    assert f"is not the expected {'ab' * 32}; the download was removed" in capsys.readouterr().err
    assert not list((tmp_path / "cache/2014").iterdir())


def test_offline_without_data_says_what_to_download_and_which_variable(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KDSR_DATA_MIRROR", "http://127.0.0.1:9/nothing-listens-here")
    assert prepare(tmp_path) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert "Traceback" not in "\n".join(err)
    assert "cannot reach 127.0.0.1:9" in err[-1] and "reviews_Beauty_5.json.gz by hand" in err[-1]
    assert "meta_Beauty.json.gz" in err[-1] and "set KDSR_DATA_DIR" in err[-1]


def test_fetch_restarts_when_the_server_ignores_range(tmp_path):
    srv = Files({"f.bin": b"abc" * 1000})
    srv.RequestHandlerClass = type("NoRange", (Handler,), {"do_GET": _full_body})
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        dest = tmp_path / "f.bin"
        (tmp_path / "f.bin.part").write_bytes(b"zzz")  # a stale partial file the server will not resume
        fetch(f"{srv.url}/f.bin", dest, hashlib.sha256(b"abc" * 1000).hexdigest(), progress=False)
        assert dest.read_bytes() == b"abc" * 1000
        with pytest.raises(DownloadError, match="HTTP 404"):
            fetch(f"{srv.url}/missing.bin", tmp_path / "m.bin", progress=False)
    finally:
        srv.shutdown()


def _full_body(self):
    """A server without Range support: always 200 and the whole file."""
    data = self.server.files.get(self.path.rsplit("/", 1)[-1])
    if data is None:
        self.send_error(404)
        return
    self.send_response(200)
    self.send_header("Content-Length", str(len(data)))
    self.end_headers()
    self.wfile.write(data)
