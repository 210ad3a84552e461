"""Image fetching is safe by default: URLs off, then http(s) to public addresses only (checked on every
redirect), one deadline, byte / content-type / format / pixel limits, each a refused row with its reason.

A loopback HTTP server in a thread and tiny generated images; no model, no Ray, no outside network.
"""

from __future__ import annotations

import io
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from feature_store import vision
from feature_store.config import EncoderConfig
from feature_store.models import ModelError
from feature_store.vision import ImageEmbedder, address_refusal, load_image


def _png(size=(8, 6)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buf, "PNG")
    return buf.getvalue()


PNG = _png()


def _send(h, body: bytes, ctype: str = "image/png", length: bool = True, status: int = 200, **headers):
    h.send_response(status)
    h.send_header("Content-Type", ctype)
    if length:
        h.send_header("Content-Length", str(len(body)))
    for k, v in headers.items():
        h.send_header(k, v)
    h.end_headers()
    h.wfile.write(body)


def _trickle(h, first: bytes, seconds: float = 3.0):
    """A server that never stops sending, one byte at a time: only a deadline on the whole download ends it."""
    h.wfile.write(first)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        h.wfile.write(b"a")
        h.wfile.flush()
        time.sleep(0.02)


def _slow_body(h):
    h.send_response(200)
    h.send_header("Content-Type", "image/png")
    h.send_header("Content-Length", "100000")
    h.end_headers()
    _trickle(h, b"")


class Server:
    """Routes path -> handler(request); `seen` lists (path, Host header) of every request that arrived."""

    def __init__(self):
        self.seen: list[tuple[str, str]] = []
        self.port = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                server.seen.append((self.path, self.headers.get("Host", "")))
                route = server.routes().get(self.path)
                try:
                    route(self) if route else self.send_error(404)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up on us, as it should

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def routes(self) -> dict:
        p = self.port
        return {
            "/ok.png": lambda h: _send(h, PNG),
            "/ok-charset.png": lambda h: _send(h, PNG, ctype="Image/PNG; charset=binary"),
            "/page": lambda h: _send(h, b"<html>hi</html>", ctype="text/html"),
            "/big": lambda h: _send(h, b"\0" * 5000),
            "/big-unannounced": lambda h: _send(h, b"\0" * 5000, length=False),
            "/slow-body": _slow_body,
            "/slow-headers": lambda h: _trickle(h, b"HTTP/1.0 200 OK\r\nX-Slow: "),
            "/to-ok": lambda h: _send(h, b"", status=302, Location="/ok.png"),
            "/to-private": lambda h: _send(h, b"", status=302, Location=f"http://127.0.0.2:{p}/ok.png"),
            "/to-ftp": lambda h: _send(h, b"", status=301, Location="ftp://127.0.0.1/ok.png"),
            "/to-file": lambda h: _send(h, b"", status=307, Location="file:///etc/passwd"),
            "/loop": lambda h: _send(h, b"", status=302, Location="/loop"),
        }


@pytest.fixture(scope="module")
def server():
    s = Server()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


def _private(**kw):
    """Fetching allowed from loopback: our test server."""
    return {"allow_urls": True, "allow_private_urls": True, **kw}


@pytest.fixture
def public_127001(monkeypatch):
    """127.0.0.1 counts as a public address (the 'allowed' host); every other address is judged as usual."""
    real = vision.address_refusal
    monkeypatch.setattr(vision, "address_refusal", lambda a, allow_private=False: "" if a == "127.0.0.1" else real(a))


# ---- the address check ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "address, kind",
    [
        ("169.254.169.254", "link-local"),  # cloud metadata
        ("10.0.0.1", "private"),
        ("172.16.5.4", "private"),
        ("192.168.1.1", "private"),
        ("100.64.0.1", "private"),  # carrier-grade NAT: not global
        ("::1", "loopback"),
        ("127.0.0.1", "loopback"),
        ("127.0.0.2", "loopback"),
        ("fc00::1", "private"),  # IPv6 ULA
        ("fe80::1%eth0", "link-local"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("240.0.0.1", "reserved"),
        ("::ffff:127.0.0.1", "loopback"),  # IPv4 inside IPv6 is judged as the IPv4 address
        ("::ffff:169.254.169.254", "link-local"),
        ("2002:a9fe:a9fe::1", "link-local"),  # 6to4 of 169.254.169.254
        ("64:ff9b::a00:1", "private"),  # NAT64 of 10.0.0.1
        ("8.8.8.8", ""),
        ("2606:4700::1111", ""),
        ("64:ff9b::808:808", ""),  # NAT64 of 8.8.8.8
    ],
)
def test_address_check(address, kind):
    assert address_refusal(address) == kind


def test_allow_private_opens_private_and_loopback_but_never_metadata():
    for address in ["10.0.0.1", "192.168.1.1", "fc00::1", "127.0.0.1", "::1"]:
        assert address_refusal(address, allow_private=True) == ""
    for address in ["169.254.169.254", "fe80::1", "0.0.0.0", "224.0.0.1", "240.0.0.1"]:
        assert address_refusal(address, allow_private=True) != ""


# ---- defaults, schemes ---------------------------------------------------------------------------
def test_config_defaults_are_safe():
    cfg = EncoderConfig(model="x", modality="image")
    assert not cfg.allow_urls and not cfg.allow_private_urls
    assert cfg.url_deadline_s == 30 and cfg.max_image_bytes == 20_000_000 and cfg.max_image_pixels == 40_000_000
    assert cfg.image_formats == ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"]
    assert "text/html" not in cfg.url_content_types and "image/png" in cfg.url_content_types
    cfg = EncoderConfig(model="x", image_formats=["png", " jpeg"], url_content_types=["Image/PNG"])
    assert cfg.image_formats == ["PNG", "JPEG"] and cfg.url_content_types == ["image/png"]


def test_urls_refused_by_default_without_a_connection(server):
    n = len(server.seen)
    im, why = load_image(f"{server.url}/ok.png")
    assert im is None and why == f"image URLs are disabled (encoder.allow_urls: false): {server.url}/ok.png"
    assert len(server.seen) == n


@pytest.mark.parametrize(
    "ref, scheme",
    [
        ("file:///etc/passwd", "file"),
        ("file:/etc/passwd", "file"),
        ("ftp://127.0.0.1/x.png", "ftp"),
        ("data:image/png;base64,iVBORw0KGgo=", "data"),
        ("gopher://127.0.0.1:70/", "gopher"),
    ],
)
def test_other_schemes_refused(ref, scheme):
    im, why = load_image(ref, **_private())
    assert im is None and why.startswith(f"unsupported image URL scheme '{scheme}' (http and https only)")


# ---- addresses -----------------------------------------------------------------------------------
def test_loopback_url_refused_naming_the_address(server):
    n = len(server.seen)
    im, why = load_image(f"{server.url}/ok.png", allow_urls=True)
    assert im is None
    assert "host 127.0.0.1 resolves to loopback address 127.0.0.1 (encoder.allow_private_urls: false)" in why
    im, why = load_image(f"http://localhost:{server.port}/ok.png", allow_urls=True)
    assert im is None and "host localhost resolves to loopback address" in why
    assert len(server.seen) == n  # refused before connecting


def test_allow_private_loads(server):
    im, why = load_image(f"{server.url}/ok.png", **_private())
    assert why == "" and im.size == (8, 6) and im.mode == "RGB"
    im, why = load_image(f"{server.url}/ok-charset.png", **_private())  # type parameters and case ignored
    assert why == ""


def test_connects_to_the_checked_address(server, monkeypatch):
    """DNS rebinding: the name resolves to the checked address once; a second lookup would point elsewhere,
    but the connection goes to the address that was checked, with the name in the Host header."""
    real, lookups = socket.getaddrinfo, []

    def fake(host, port, *args, **kw):
        if host == "images.example":
            lookups.append(host)
            return real("127.0.0.1" if len(lookups) == 1 else "10.9.9.9", port, *args, **kw)
        return real(host, port, *args, **kw)

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    im, why = load_image(f"http://images.example:{server.port}/ok.png", **_private())
    assert why == "" and im is not None
    assert lookups == ["images.example"] and server.seen[-1] == ("/ok.png", f"images.example:{server.port}")


# ---- redirects -----------------------------------------------------------------------------------
def test_redirect_followed_and_checked(server, public_127001):
    im, why = load_image(f"{server.url}/ok.png", allow_urls=True)  # the patched check: 127.0.0.1 is "public"
    assert why == "" and im is not None
    im, why = load_image(f"{server.url}/to-ok", allow_urls=True)  # a relative Location
    assert why == "" and im is not None


def test_redirect_to_private_address_refused(server, public_127001):
    n = len(server.seen)
    im, why = load_image(f"{server.url}/to-private", allow_urls=True)
    assert im is None
    assert f"after a redirect to http://127.0.0.2:{server.port}/ok.png: host 127.0.0.2 resolves to loopback" in why
    assert [p for p, _ in server.seen[n:]] == ["/to-private"]  # the target was never asked


@pytest.mark.parametrize("path, scheme", [("/to-ftp", "ftp"), ("/to-file", "file")])
def test_redirect_to_other_scheme_refused(server, path, scheme):
    im, why = load_image(f"{server.url}{path}", **_private())
    assert im is None and f"scheme '{scheme}' refused (http and https only)" in why


def test_redirects_are_bounded(server):
    n = len(server.seen)
    im, why = load_image(f"{server.url}/loop", **_private())
    assert im is None and f"more than {vision.MAX_REDIRECTS} redirects" in why
    assert len(server.seen) - n == vision.MAX_REDIRECTS + 1


# ---- what comes back -----------------------------------------------------------------------------
def test_non_image_content_type_refused(server):
    im, why = load_image(f"{server.url}/page", **_private())
    assert im is None and "content type text/html is not an allowed image type (encoder.url_content_types)" in why


@pytest.mark.parametrize("path", ["/big", "/big-unannounced"])
def test_oversized_body_refused(server, path):
    im, why = load_image(f"{server.url}{path}", **_private(max_image_bytes=1000))
    assert im is None and "larger than 1,000 bytes (encoder.max_image_bytes)" in why


def test_http_error_is_a_reason(server):
    im, why = load_image(f"{server.url}/nothing.png", **_private())
    assert im is None and "HTTP 404" in why


def test_https_to_a_plain_server_fails_cleanly(server):
    im, why = load_image(f"https://127.0.0.1:{server.port}/ok.png", **_private(url_deadline_s=2))
    assert im is None and why.startswith("image URL refused: download failed: SSL")


@pytest.mark.parametrize("path", ["/slow-body", "/slow-headers"])
def test_trickling_server_cut_off_by_the_deadline(server, path):
    t0 = time.monotonic()
    im, why = load_image(f"{server.url}{path}", **_private(url_deadline_s=0.5))
    assert im is None and "not downloaded within 0.5 s (encoder.url_deadline_s)" in why
    assert time.monotonic() - t0 < 2.0


# ---- decoding: local files and URLs alike --------------------------------------------------------
def test_local_files_still_load(tmp_path):
    for name, fmt in [("a.png", "PNG"), ("b.jpg", "JPEG"), ("c.gif", "GIF"), ("d.webp", "WEBP")]:
        Image.new("RGB", (10, 7), (1, 2, 3)).save(tmp_path / name, fmt)
        im, why = load_image(name, base_dir=tmp_path)
        assert why == "" and im.size == (10, 7) and im.mode == "RGB", name


def test_too_many_pixels_refused_from_the_header(tmp_path, monkeypatch):
    Image.new("L", (5000, 5000)).save(tmp_path / "huge.png")

    def no_decoding(self):
        raise AssertionError("decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    before = Image.MAX_IMAGE_PIXELS
    im, why = load_image(str(tmp_path / "huge.png"), max_image_pixels=1_000_000)
    assert im is None
    assert why.startswith("image too large: 5000x5000 = 25,000,000 pixels, over encoder.max_image_pixels 1,000,000")
    assert Image.MAX_IMAGE_PIXELS == before  # Pillow's global limit untouched


def test_pixel_limit_applies_to_urls(server):
    im, why = load_image(f"{server.url}/ok.png", **_private(max_image_pixels=47))  # 8x6 = 48
    assert im is None and "8x6 = 48 pixels" in why


@pytest.mark.parametrize("name, fmt", [("x.ico", "ICO"), ("x.ppm", "PPM")])
def test_disallowed_format_refused(tmp_path, name, fmt):
    Image.new("RGB", (16, 16)).save(tmp_path / name, fmt)
    im, why = load_image(str(tmp_path / name))
    assert im is None and "not one of encoder.image_formats (JPEG, PNG, WEBP, GIF, BMP, TIFF)" in why
    im, why = load_image(str(tmp_path / name), image_formats=[fmt])  # allowed when the config says so
    assert why == "" and im.size == (16, 16)


def test_unknown_format_name_is_a_config_error():
    with pytest.raises(ModelError, match="no decoder for NOPE"):
        ImageEmbedder(None, None, EncoderConfig(model="x", modality="image", image_formats=["PNG", "nope"]))


# ---- batches -------------------------------------------------------------------------------------
def test_embed_loads_one_batch_at_a_time(tmp_path, monkeypatch):
    """At most batch_size decoded images are alive: each batch is loaded, embedded and freed before the next."""
    for i in range(4):
        Image.new("RGB", (4, 4), (i, 0, 0)).save(tmp_path / f"{i}.png")
    refs = ["0.png", "1.png", "missing.png", "2.png", None, "3.png"]
    events: list[str] = []
    real_load = vision.load_image
    monkeypatch.setattr(vision, "load_image", lambda *a, **kw: events.append("load") or real_load(*a, **kw))
    emb = ImageEmbedder.__new__(ImageEmbedder)
    emb.cfg, emb.base_dir, emb.dim = EncoderConfig(model="x", modality="image", batch_size=2), tmp_path, 2

    def forward(images):
        events.append(f"forward {len(images)}")
        return torch.tensor([[im.getpixel((0, 0))[0], 1.0] for im in images])

    emb._forward = forward
    out, mask, reasons = emb.embed(refs)
    assert events == ["load", "load", "forward 2", "load", "load", "forward 1", "load", "load", "forward 1"]
    assert mask.tolist() == [True, True, False, True, False, True]
    np.testing.assert_array_equal(out[:, 0], [0, 1, 0, 2, 0, 3])
    assert reasons[2].startswith("missing image file") and reasons[4] == "no image" and reasons[5] == ""
