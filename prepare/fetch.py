"""Downloading a public data file safely: into `<name>.part`, resumed with an HTTP Range request after a broken
transfer, checked against its SHA-256, renamed into place only when whole and correct.

    fetch("https://host/reviews_Beauty_5.json.gz", Path("~/.cache/kdsr/amazon/2014/reviews_Beauty_5.json.gz"),
          sha256="9f2c...")   # or sha256=None: pinned on first download (<name>.sha256) and checked ever after

A file without a published checksum is pinned on its first download: the digest is written next to it and every
later use compares against it, so a file changed on disk (or a different file under the same name) is refused.
Progress: a tqdm bar on a terminal, a log line every 30 s otherwise (kdsr.progress).
"""

from __future__ import annotations

import concurrent.futures
import http.client
import logging
import socket
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from kdsr.errors import KdsrError
from kdsr.files import sha256_hex, write_text_atomic
from kdsr.progress import Progress

log = logging.getLogger(__name__)

CHUNK = 1 << 20


class DownloadError(KdsrError):
    """A file cannot be fetched or is not the expected one (offline, server error, checksum mismatch)."""


def check_reachable(url: str, timeout: float, hint: str = "") -> None:
    """Resolve and connect within `timeout` s (DNS included), so an offline machine fails at once."""
    parts = urllib.parse.urlparse(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)

    def connect() -> None:
        socket.create_connection((parts.hostname, port), timeout=timeout).close()

    pool = concurrent.futures.ThreadPoolExecutor(1)
    try:
        pool.submit(connect).result(timeout=timeout)
    except Exception as e:
        raise DownloadError(
            f"cannot reach {parts.hostname}:{port} within {timeout:.0f} s ({type(e).__name__}: {e}); no internet "
            f"here? Download {url} by hand{hint}"
        ) from None
    finally:
        pool.shutdown(wait=False)


def pin_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".sha256")


def verify(dest: Path, sha256: str | None) -> str:
    """The file's digest, checked against `sha256` or, without one, against the digest pinned at download."""
    got = sha256_hex(dest)
    pinned = pin_path(dest).read_text().split()[0] if pin_path(dest).exists() else None
    for want, what in ((sha256, "the published checksum"), (pinned, f"the checksum pinned in {pin_path(dest)}")):
        if want and want != got:
            raise DownloadError(
                f"{dest}: SHA-256 {got} is not {what} ({want}); the file is damaged or another file: "
                "delete it to download it again"
            )
    return got


def resume_hint(part: Path) -> str:
    got = part.stat().st_size if part.exists() else 0
    return f"{part} keeps the {got:,} bytes received: run again to resume"


def fetch(url: str, dest: Path, sha256: str | None = None, timeout: float = 60.0, progress: bool = True) -> Path:
    """`url` -> `dest`, unless a verified `dest` is already there. A `.part` file left by a broken transfer
    is resumed (Range request; a server that ignores Range restarts it from zero)."""
    if dest.exists():
        verify(dest, sha256)
        log.info("%s (already there, checksum ok)", dest)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    total = 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            resumed = have > 0 and resp.status == 206
            start = have if resumed else 0
            total = start + int(resp.headers.get("Content-Length") or 0)
            size = f"{total / 1e6:,.1f} MB" if total > start else "size unknown"
            log.info("downloading %s (%s)%s -> %s", url, size, f", resuming at {start / 1e6:,.1f} MB" * resumed, dest)
            bar = Progress(max(total, 1), f"download {dest.name}", "B", initial=start, bar=progress)
            with open(part, "ab" if resumed else "wb") as f:
                while block := resp.read(CHUNK):
                    f.write(block)
                    bar.update(len(block))
            bar.close()
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # the .part already holds every byte: check it below
            pass
        else:
            raise DownloadError(f"cannot download {url}: HTTP {e.code} {e.reason}") from None
    except (OSError, ValueError, http.client.HTTPException) as e:  # a broken transfer keeps its .part
        raise DownloadError(f"cannot download {url}: {type(e).__name__}: {e}; {resume_hint(part)}") from None
    if total and part.stat().st_size < total:  # the server closed early without an error
        raise DownloadError(f"cannot download {url}: the transfer ended early; {resume_hint(part)}")
    got = sha256_hex(part)
    if sha256 and got != sha256:
        part.unlink()  # ours, and wrong: the next attempt starts from zero
        raise DownloadError(f"{url}: SHA-256 {got} is not the expected {sha256}; the download was removed")
    if not sha256:
        write_text_atomic(pin_path(dest), f"{got}  {dest.name}\n")
        log.warning("%s: no published checksum; pinned the downloaded file's SHA-256 %s", dest.name, got)
    part.replace(dest)
    return dest
