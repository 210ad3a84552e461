"""Image items: load from a local path or URL with every failure captured, then embed with a vision model.

A missing, unreadable, corrupt or refused image never stops a job: `load_image` returns the reason, the row is
masked in the store and the reason recorded next to it (`FeatureStore.errors()`).

A catalog's URLs are untrusted input that makes this process send requests, so fetching is off unless
`encoder.allow_urls`, and then limited: http(s) only; a host is refused if any address it resolves to is
loopback, private, link-local (cloud metadata), multicast, reserved or unspecified, and the same check runs on
every redirect; the connection goes to the checked address; one deadline covers the whole download; bytes,
content type, Pillow format and pixel count are capped. Residual risks: DNS resolution itself is not under the
deadline (the system resolver's own timeouts apply), and HTTP(S)_PROXY variables are not used.
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import io
import ipaddress
import re
import socket
import ssl
import threading
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from feature_store.config import EncoderConfig
from feature_store.models import ModelError

MAX_REDIRECTS = 5
_REDIRECT_CODES = {301, 302, 303, 307, 308}
_CHUNK = 64 << 10
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):")  # 2+ characters: `C:\x.png` stays a path
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_DEFAULTS = EncoderConfig(model="(image loading defaults)", modality="image")


class FetchError(Exception):
    """An image URL refused or not downloaded; the message is the row's reason (without the URL)."""


def address_refusal(address: str, allow_private: bool = False) -> str:
    """Empty if a resolved address may be fetched, else its kind ("loopback", "private", "link-local", ...).
    An IPv4 address inside IPv6 (::ffff:a.b.c.d, 6to4, NAT64) is judged as that IPv4 address, which it reaches."""
    ip = ipaddress.ip_address(address.split("%")[0])  # no IPv6 scope id (fe80::1%eth0)
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped or ip.sixtofour:
            ip = ip.ipv4_mapped or ip.sixtofour
        elif ip in _NAT64:
            ip = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip.is_loopback:  # before `reserved`: ::1 is in the reserved ::/8
        kind = "loopback"
    elif ip.is_link_local:
        return "link-local"
    elif ip.is_multicast:
        return "multicast"
    elif ip.is_unspecified:
        return "unspecified"
    elif ip.is_reserved:
        return "reserved"
    elif ip.is_private or not ip.is_global:  # RFC 1918, IPv6 ULA, carrier-grade NAT...
        kind = "private"
    else:
        return ""
    return "" if allow_private else kind


def _checked_addresses(host: str, port: int, allow_private: bool) -> list[str]:
    """Every address `host` resolves to, or FetchError if any is refused: a name that points both outside and
    inside must not get through on the luck of which address is tried first."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as e:
        raise FetchError(f"cannot resolve host {host}: {e}") from None
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    for address in addresses:
        kind = address_refusal(address, allow_private)
        if kind:
            hint = " (encoder.allow_private_urls: false)" if not address_refusal(address, True) else ""
            raise FetchError(f"host {host} resolves to {kind} address {address}{hint}")
    return addresses


@functools.cache
def _tls() -> ssl.SSLContext:
    return ssl.create_default_context()


class _PinnedConnection(http.client.HTTPConnection):
    """HTTP(S) to the addresses that passed the check, not to whatever DNS answers at connect time (a name
    that turns into 127.0.0.1 after the check, DNS rebinding, gets nowhere). TLS still verifies the
    certificate against the host name."""

    def __init__(self, host: str, port: int, addresses: list[str], tls: bool, timeout: float):
        super().__init__(host, port, timeout=timeout)
        self.addresses, self.tls = addresses, tls
        self.default_port = 443 if tls else 80  # the Host header leaves out a default port
        self.raw: socket.socket | None = None
        self.aborted = False

    def connect(self) -> None:
        error: OSError = OSError(f"no address for {self.host}")
        for address in self.addresses:
            try:
                self.raw = socket.create_connection((address, self.port), self.timeout)
                break
            except OSError as e:
                error = e
        else:
            raise error
        if self.aborted:  # the deadline passed while connecting
            self.abort()
        self.sock = _tls().wrap_socket(self.raw, server_hostname=self.host) if self.tls else self.raw

    def abort(self) -> None:
        """The deadline, from the timer thread: shutdown (unlike close) safely wakes a read blocked in another
        thread, so a server that trickles its headers or TLS handshake cannot hold the job either."""
        self.aborted = True
        if self.raw is not None:
            with contextlib.suppress(OSError):
                self.raw.shutdown(socket.SHUT_RDWR)


def _get(url: str, deadline: float, cfg: EncoderConfig) -> tuple[str | None, bytes]:
    """One request: (redirect target, b"") or (None, body). Raises FetchError with the reason."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise FetchError(f"scheme {parts.scheme!r} refused (http and https only)")
    try:
        host, tls = parts.hostname, parts.scheme == "https"
        port = parts.port or (443 if tls else 80)
    except ValueError as e:  # a port that is not a number
        raise FetchError(f"bad URL: {e}") from None
    if not host:
        raise FetchError("URL without a host")
    addresses = _checked_addresses(host, port, cfg.allow_private_urls)
    conn = _PinnedConnection(host, port, addresses, tls, timeout=max(deadline - time.monotonic(), 0.001))
    timer = threading.Timer(max(deadline - time.monotonic(), 0.0), conn.abort)
    timer.daemon = True
    timer.start()
    late = f"not downloaded within {cfg.url_deadline_s:g} s (encoder.url_deadline_s)"
    try:
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        conn.request("GET", path, headers={"Accept": ", ".join(cfg.url_content_types), "User-Agent": "kdsr"})
        resp = conn.getresponse()
        if conn.aborted:  # cut off inside the headers: what arrived is not to be judged
            raise FetchError(late)
        if resp.status in _REDIRECT_CODES:
            location = resp.getheader("Location")
            if not location:
                raise FetchError(f"HTTP {resp.status} redirect without a Location")
            return urljoin(url, location.strip()), b""
        if resp.status != 200:
            raise FetchError(f"HTTP {resp.status} {resp.reason}")
        ctype = resp.headers.get_content_type()  # lower case, parameters dropped; text/plain when missing
        if ctype not in cfg.url_content_types:
            raise FetchError(f"content type {ctype} is not an allowed image type (encoder.url_content_types)")
        too_big = f"larger than {cfg.max_image_bytes:,} bytes (encoder.max_image_bytes)"
        if (resp.length or 0) > cfg.max_image_bytes:  # announced by Content-Length: refused unread
            raise FetchError(too_big)
        body = bytearray()
        while chunk := resp.read1(_CHUNK):  # at most one socket read each, so the deadline is checked often
            body += chunk
            if len(body) > cfg.max_image_bytes:
                raise FetchError(too_big)
            if time.monotonic() > deadline:
                raise FetchError(late)
        if conn.aborted or time.monotonic() > deadline:
            raise FetchError(late)
        if resp.length:  # Content-Length promised more than arrived
            raise FetchError(f"connection closed after {len(body):,} bytes, {resp.length:,} short")
        return None, bytes(body)
    except (OSError, http.client.HTTPException) as e:
        if conn.aborted or time.monotonic() > deadline:
            raise FetchError(late) from None
        raise FetchError(f"download failed: {type(e).__name__}: {e}") from None
    finally:
        timer.cancel()
        conn.close()


def fetch(url: str, cfg: EncoderConfig) -> bytes:
    """The body of an allowed image URL within cfg's limits, following at most MAX_REDIRECTS redirects, each
    target checked like the first URL (scheme, every resolved address); raises FetchError with the reason."""
    deadline = time.monotonic() + cfg.url_deadline_s
    for hop in range(MAX_REDIRECTS + 1):
        try:
            target, body = _get(url, deadline, cfg)
        except FetchError as e:
            raise FetchError(f"after a redirect to {url}: {e}" if hop else str(e)) from None
        if target is None:
            return body
        if url.startswith("https:") and not target.startswith("https:"):
            raise FetchError(f"redirect from https to {target} refused (no downgrade)")
        url = target
    raise FetchError(f"more than {MAX_REDIRECTS} redirects")


def _decode(src: io.BytesIO | Path, ref: str, cfg: EncoderConfig) -> tuple[Image.Image | None, str]:
    """Only the allowed formats' decoders see the bytes, and the pixel limit is read from the header, before
    anything is decoded."""
    with warnings.catch_warnings():
        # Our limit decides, and refuses; Pillow's global threshold only warns below 2x (and is left as it is).
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(src, formats=cfg.image_formats) as im:
            w, h = im.size  # from the header: Image.open is lazy
            if w * h > cfg.max_image_pixels:
                return None, (
                    f"image too large: {w}x{h} = {w * h:,} pixels, over encoder.max_image_pixels "
                    f"{cfg.max_image_pixels:,}: {ref}"
                )
            im.load()  # decode now: a truncated file fails here, not inside the processor
            return im.convert("RGB"), ""


def load_image(
    ref: str | None, base_dir: str | Path | None = None, cfg: EncoderConfig | None = None, **overrides
) -> tuple[Image.Image | None, str]:
    """(RGB image, "") or (None, reason). Relative paths are taken from `base_dir` (the dataset folder). The
    limits are cfg's image keys (EncoderConfig defaults when None: local files only); `overrides` set some of
    them by name (`allow_urls=True`) for callers without a config at hand. Anything that looks like a URL
    (`scheme:`) other than http(s) is refused, so `file:`, `data:` or `ftp:` never reach the file system."""
    cfg = cfg or _DEFAULTS
    if overrides:
        cfg = EncoderConfig(**{**cfg.model_dump(), **overrides})
    if ref is None or not str(ref).strip():
        return None, "no image"
    ref = str(ref).strip()
    scheme = _SCHEME.match(ref)
    try:
        if scheme and scheme.group(1).lower() not in ("http", "https"):
            return None, f"unsupported image URL scheme {scheme.group(1)!r} (http and https only): {ref}"
        if scheme and not cfg.allow_urls:
            return None, f"image URLs are disabled (encoder.allow_urls: false): {ref}"
        if scheme:
            src: io.BytesIO | Path = io.BytesIO(fetch(ref, cfg))
        else:
            src = Path(ref) if Path(ref).is_absolute() or base_dir is None else Path(base_dir) / ref
            if not src.is_file():
                return None, f"missing image file: {src}"
        return _decode(src, ref, cfg)
    except FetchError as e:
        return None, f"image URL refused: {e}: {ref}"
    except UnidentifiedImageError:
        allowed = ", ".join(cfg.image_formats)
        return None, f"unreadable image {ref}: not an image, or not one of encoder.image_formats ({allowed})"
    except Image.DecompressionBombError as e:
        return None, f"image too large: {e}: {ref}"
    except Exception as e:  # a malformed file can make a decoder raise almost anything; it is one bad row
        return None, f"unreadable image {ref}: {type(e).__name__}: {e}"


def pool_vision(out, pooling: str) -> torch.Tensor:
    """One vector per image from a vision model's output (ViT/CLIP/DINOv2: tokens; ResNet: feature maps)."""
    hidden = out.last_hidden_state
    if pooling == "pooler":
        pooled = getattr(out, "pooler_output", None)
        if pooled is None:
            raise ModelError("this vision model has no pooler output; use pooling cls or mean")
        return pooled.flatten(1).float()
    if hidden.dim() == 4:  # (B, C, H, W) feature maps: average over space
        if pooling != "mean":
            raise ModelError("convolutional models (ResNet) support pooling mean or pooler")
        return hidden.float().mean(dim=(2, 3))
    if pooling == "cls":
        return hidden[:, 0].float()
    if pooling == "mean":
        return hidden.float().mean(1)
    raise ModelError(f"pooling {pooling!r} is not defined for images (use pooler, cls or mean)")


class ImageEmbedder:
    """Load, preprocess, run and pool images; failed images give NaN-free zero rows plus a reason."""

    def __init__(self, model, processor, cfg: EncoderConfig, device: str = "cpu", base_dir: str | Path | None = None):
        self.model, self.processor, self.cfg, self.base_dir = model, processor, cfg, base_dir
        Image.init()
        unknown = sorted(set(cfg.image_formats) - set(Image.OPEN))
        if unknown:  # a typo would otherwise refuse every image, one row at a time
            raise ModelError(f"encoder.image_formats: Pillow has no decoder for {', '.join(unknown)}")
        self.device = device if device == "cpu" else str(next(model.parameters()).device)
        self.dtype = next(model.parameters()).dtype if cfg.quantization == "none" else None
        self.dim = int(self._forward([Image.new("RGB", (64, 64))]).shape[1])  # probe once: sizes all-failed shards

    def _autocast(self):
        on = self.cfg.precision != "fp32" and self.cfg.quantization == "none" and self.device == "cpu"
        return torch.autocast(
            "cpu", dtype=torch.bfloat16 if self.cfg.precision == "bf16" else torch.float16, enabled=on
        )

    @torch.inference_mode()
    def _forward(self, images: list[Image.Image]) -> torch.Tensor:
        pix = self.processor(images=images, return_tensors="pt")["pixel_values"]
        pix = pix.to(self.device, self.dtype if self.dtype is not None and self.device != "cpu" else torch.float32)
        with self._autocast():
            emb = pool_vision(self.model(pixel_values=pix), self.cfg.pooling)
        return torch.nn.functional.normalize(emb, dim=-1) if self.cfg.normalize else emb

    def embed(self, refs: Sequence[str | None]) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """(embeddings (N, D) float32, valid mask (N,), reasons) for image references in order. Loaded and
        embedded one batch at a time: a shard never holds more than batch_size decoded images."""
        out = np.zeros((len(refs), self.dim), np.float32)
        mask = np.zeros(len(refs), bool)
        reasons: list[str] = []
        for s in range(0, len(refs), self.cfg.batch_size):
            emb, ok, why = self._embed_batch(refs[s : s + self.cfg.batch_size])
            out[s : s + len(why)][ok] = emb
            mask[s : s + len(why)] = ok
            reasons += why
        return out, mask, reasons

    def _embed_batch(self, refs: Sequence[str | None]) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """(embeddings of the loaded images, loaded mask, reasons); the images are freed on return."""
        loaded = [load_image(r, self.base_dir, self.cfg) for r in refs]
        ok = np.array([im is not None for im, _ in loaded], bool)
        images = [im for im, _ in loaded if im is not None]
        emb = self._forward(images).cpu().numpy() if images else np.zeros((0, self.dim), np.float32)
        return emb, ok, [why for _, why in loaded]
