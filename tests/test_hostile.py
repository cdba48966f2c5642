"""Hostile input against the running server, over real HTTP (httpx and a raw socket).

One test id per case: broken and lying images, decompression bombs, a 200 MB upload (with and
without Content-Length), files that are not images, path tricks in file names and model ids,
oversized, malformed and deeply nested JSON, unicode junk in chat messages, wrong content
types. Every case states the status it must get (a 4xx, never a 5xx; 200 where the input is
harmless and must be tolerated), checks that ``detail`` tells the user what is allowed, and,
where the body reached the route, that the audit log gained a row for it carrying the SHA-256 of
what was sent and none of its bytes. The last test checks that the server survived: health, a
normal analysis, memory back near the baseline, no payload in the audit log or the server log,
nothing written outside the data dir. It prints a one-line summary (cases tried / passed).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import os
import random
import select
import socket
import struct
import tempfile
import time
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.conftest import REPO, image_bytes, run_app, token_headers

log = logging.getLogger(__name__)

ALLOWED = "PNG, JPEG, BMP, TIFF, WebP or DICOM"
MB = 2**20
UPLOAD_LIMIT = 32 * MB  # DOCTORAI_MAX_UPLOAD_MB default
REQUEST_LIMIT = 1024 * 1024  # DOCTORAI_MAX_REQUEST_KB default
CHAT_LIMIT = 2000  # DOCTORAI_CHAT_MAX_CHARS default
HUGE = 200 * MB
BOUNDARY = "hostile-boundary-5b2e7c"
# Planted in every payload that is not a valid image: it must never show up in the audit log,
# the server log or a response.
MARKER = b"hostile-marker-5e1d"
# What a response must never contain: stack traces and server-side paths.
SERVER_PATHS = (str(REPO), "/tmp/", "site-packages")
# How far the server's RSS may end above the baseline taken after warm-up (both models loaded).
# A 200 MB upload that was buffered would show up whole; the hostile cases themselves leave a
# few MB behind (measured: see the summary line). The rest is allocator slack that a TF process
# does not hand back: glibc keeps freed arenas of the request threads, oneDNN keeps scratch
# buffers, and the first multipart spool / decode of each kind grows the heap once. 300 MB is
# above that slack and still well below one 200 MB body plus its multipart copy.
RSS_SLACK = 300 * MB
# How much one 200 MB upload may move RSS while it is refused.
RSS_PER_HUGE_UPLOAD = 100 * MB

TRIED: list[str] = []
PASSED: dict[str, int] = {}  # case id -> the status it got
NOTES: list[str] = []  # measurements for the summary


# --------------------------------------------------------------------------- payload builders
def _photo(seed: int, height: int = 48, width: int = 40) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)


def _png(seed: int = 1) -> bytes:
    return image_bytes(_photo(seed), "PNG")


def _jpeg(seed: int = 1) -> bytes:
    return image_bytes(_photo(seed), "JPEG")


def _junk(n: int, seed: int = 3) -> bytes:
    return MARKER + random.Random(seed).randbytes(n)


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _xor(data: bytes, start: int, n: int = 1) -> bytes:
    out = bytearray(data)
    for i in range(start, start + n):
        out[i] ^= 0xA5
    return bytes(out)


def _half(data: bytes) -> bytes:
    return data[: len(data) // 2]


def _png_bad_idat_crc() -> bytes:
    data = _png()
    return _xor(data, data.index(b"IDAT") + 20)  # one pixel-data byte: the chunk CRC no longer matches


def _png_bad_ihdr_crc() -> bytes:
    data = _png()
    return _xor(data, data.index(b"IHDR") + 4 + 13)  # IHDR is 13 bytes; then its CRC


def _jpeg_12bit_sof() -> bytes:
    data = bytearray(_jpeg())
    data[data.index(b"\xff\xc0") + 4] = 12  # baseline frame header claiming 12-bit samples
    return bytes(data)


def _jpeg_damaged_scan() -> bytes:
    data = _jpeg()
    return _xor(data, data.index(b"\xff\xda") + 30, 160)


def _png_header_bomb() -> bytes:
    # IHDR claims 30000 x 30000 RGB (2.7 GB decoded); the whole file is ~60 bytes.
    ihdr = struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 1000)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def _png_real_bomb() -> bytes:
    # A genuine 8000 x 8000 image (64 MP, 190 MB as RGB) that compresses to ~8 KB.
    buf = io.BytesIO()
    Image.new("1", (8000, 8000), 0).save(buf, format="PNG")
    return buf.getvalue()


def _jpeg_header_bomb() -> bytes:
    data = bytearray(_jpeg())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", 65000, 65000)
    return bytes(data)


def _png_text_bomb() -> bytes:
    # A valid image with a zTXt chunk that inflates to 64 MB of zeros (~64 KB on the wire).
    ztxt = _png_chunk(b"zTXt", b"Comment\0\0" + zlib.compress(b"\0" * (64 * MB), 9))
    data = _png()
    return data[:33] + ztxt + data[33:]  # after the signature (8) and IHDR (25)


def _zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("scan.png", _png())
        z.writestr("readme.txt", MARKER)
    return buf.getvalue()


def _pdf() -> bytes:
    return b"%PDF-1.7\n%" + MARKER + b"\n1 0 obj\n<< /Type /Catalog >>\nendobj\ntrailer\n<< /Root 1 0 R >>\n%%EOF\n"


def _svg() -> bytes:
    return (
        b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10">'
        b"<script>fetch('/api/audit').then(r => r.text()).then(t => alert('" + MARKER + b"'))</script>"
        b"<rect width='10' height='10'/></svg>"
    )


def _text() -> bytes:
    return b"Patient notes, not an image. " + MARKER + b"\n"


def _dicom(**elements: Any) -> bytes:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.7")
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.PatientName = "Hostile^" + MARKER.decode()
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _dicom_without_pixels() -> bytes:
    return _dicom(Modality="SR")


def _dicom_pixel_bomb() -> bytes:
    # The header claims a 60000 x 60000 frame; 16 bytes of pixel data follow.
    return _dicom(
        Modality="CT",
        Rows=60000,
        Columns=60000,
        SamplesPerPixel=1,
        PhotometricInterpretation="MONOCHROME2",
        BitsAllocated=8,
        BitsStored=8,
        HighBit=7,
        PixelRepresentation=0,
        PixelData=b"\0" * 16,
    )


def _over_limit() -> bytes:
    # Over DOCTORAI_MAX_UPLOAD_MB but inside the multipart framing allowance of the body limit,
    # so it reaches the route (which refuses it) instead of the middleware.
    head = b"\x89PNG\r\n\x1a\n"
    return head + b"\0" * (UPLOAD_LIMIT + 256 * 1024 - len(head))


def multipart(
    data: bytes, filename: bytes = b"scan.png", content_type: str = "image/png", name: str = "file"
) -> tuple[bytes, dict[str, str]]:
    """One file part, built by hand so that the file name goes on the wire byte for byte."""
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"; filename="'.encode()
        + filename
        + f'"\r\nContent-Type: {content_type}\r\n\r\n'.encode()
    )
    return head + data + f"\r\n--{BOUNDARY}--\r\n".encode(), {
        "content-type": f"multipart/form-data; boundary={BOUNDARY}"
    }


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- the server
@dataclass
class Server:
    url: str
    data_dir: Path
    gradio_tmp: Path
    headers: dict[str, str]
    baseline_rss: int = 0
    rss_samples: list[int] = field(default_factory=list)
    passwd_stat: tuple[int, int] = (0, 0)

    def client(self, **kw: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=self.headers, timeout=60, **kw)

    def rss(self) -> int:
        with self.client() as c:
            r = c.get("/metrics")
        assert r.status_code == 200, r.text
        for line in r.text.splitlines():
            if line.startswith("doctorai_process_resident_memory_bytes"):
                value = int(float(line.split()[-1]))
                self.rss_samples.append(value)
                return value
        raise AssertionError("no doctorai_process_resident_memory_bytes in /metrics")

    def audit_rows(self, limit: int = 100) -> list[dict[str, Any]]:
        with self.client() as c:
            r = c.get("/api/audit", params={"limit": limit})
        assert r.status_code == 200, r.text
        rows: list[dict[str, Any]] = r.json()["rows"]
        return rows

    def audit_row(self, request_id: str) -> dict[str, Any] | None:
        return next((row for row in self.audit_rows() if row["request_id"] == request_id), None)


def _passwd_stat() -> tuple[int, int]:
    st = Path("/etc/passwd").stat()
    return st.st_mtime_ns, st.st_size


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, chat_registry_file: Path, kb_corpus: Path
) -> Iterator[Server]:
    """The app with the tiny models and the chat, no rate limit, its own Gradio upload dir;
    warmed up (image model and chat loaded) before the RSS baseline is taken."""
    data = tmp_path_factory.mktemp("hostile-data")
    gradio_tmp = data / "gradio-uploads"
    with run_app(
        data,
        DOCTORAI_MODEL_DIR=str(tiny_model_dir),
        DOCTORAI_REGISTRY_FILE=str(chat_registry_file),
        DOCTORAI_DEVICE="cpu",
        DOCTORAI_ANALYSES_PER_MINUTE="0",
        DOCTORAI_KB_SOURCE=str(kb_corpus),
        GRADIO_TEMP_DIR=str(gradio_tmp),
    ) as url:
        srv = Server(url, data, gradio_tmp, token_headers(url), passwd_stat=_passwd_stat())
        with srv.client() as c:
            r = c.post("/api/predict/tumor", files={"file": ("warm.png", _png(99), "image/png")})
            assert r.status_code == 200, r.text
            r = c.post("/api/chat", json={"message": "What are the symptoms of glaucoma?"})
            assert r.status_code == 200, r.text
        srv.baseline_rss = srv.rss()
        yield srv


# --------------------------------------------------------------------------- shared checks
def _tried(case: str) -> None:
    TRIED.append(case)


def _passed(case: str, status: int) -> None:
    PASSED[case] = status


def _detail_text(body: Any) -> str:
    detail = body.get("detail") if isinstance(body, dict) else None
    assert detail, f"no detail in {body!r}"
    return detail if isinstance(detail, str) else json.dumps(detail)


def check_response(r: httpx.Response, status: int, words: tuple[str, ...], *, echo_ok: tuple[str, ...] = ()) -> Any:
    """Status, JSON body, detail key words (case-insensitive), and nothing that leaks the server."""
    assert r.status_code == status, f"expected {status}, got {r.status_code}: {r.text[:500]}"
    assert r.status_code < 500
    body = r.json()
    text = r.text
    assert "Traceback" not in text
    for path in SERVER_PATHS:
        assert path not in text or path in echo_ok, f"response leaks {path!r}: {text[:300]}"
    if status >= 400:
        detail = _detail_text(body)
        for word in words:
            assert word.lower() in detail.lower(), f"{word!r} not in detail {detail!r}"
        if "error" in body:  # the app's own errors: {detail, error, request_id}; they never echo input
            assert body["request_id"] == r.headers["x-request-id"]
            assert MARKER.decode() not in text
    return body


def check_audit_row_has_no_payload(row: dict[str, Any], payload: bytes) -> None:
    text = json.dumps(row, ensure_ascii=False)
    assert MARKER.decode() not in text
    for value in row.values():
        assert not isinstance(value, str) or len(value) <= 2000
    if len(payload) >= 48:
        window = payload[16:48]
        assert window.decode("latin-1") not in text
        assert base64.b64encode(window).decode()[:24] not in text
        assert window.hex() not in text


def check_audit(
    srv: Server, r: httpx.Response, *, outcome: str, model: str, action: str, sha: str | None, payload: bytes
) -> dict[str, Any]:
    row = srv.audit_row(r.headers["x-request-id"])
    assert row is not None, "no audit row for this request"
    assert row["action"] == action
    assert row["outcome"] == outcome, row
    assert row["model_id"] == model[:64]
    assert row["input_sha256"] == sha
    assert row["username"] == "admin"
    check_audit_row_has_no_payload(row, payload)
    return row


def check_no_audit(srv: Server, r: httpx.Response) -> None:
    assert srv.audit_row(r.headers["x-request-id"]) is None


# --------------------------------------------------------------------------- image uploads
@dataclass(frozen=True)
class Upload:
    """``make()`` is POSTed as the multipart field ``file`` to ``/api/predict/{model}``."""

    make: Callable[[], bytes]
    status: int
    words: tuple[str, ...]
    filename: bytes = b"scan.png"
    content_type: str = "image/png"
    model: str = "tumor"
    audited: bool = True  # False: refused while the body is parsed, before the route (no audit row)


CORRUPT = ("could not be decoded", "truncated or damaged", ALLOWED)
UNSUPPORTED = ("Unsupported file type", ALLOWED)
TOO_MANY_PIXELS = ("too many pixels", "40,000,000 pixels", "Downscale", ALLOWED)
TRAVERSAL_NAMES: dict[str, bytes] = {
    "name_traversal_posix": b"../../etc/passwd.png",
    "name_traversal_windows": b"..\\..\\win.ini",
    "name_absolute": b"/etc/passwd",
    "name_nul": b"scan\x00/../../etc/passwd.png",
    "name_newline": b"scan\n../../etc/passwd.png",
    "name_unicode_rtl": "скан 🩻 \u202egnp.exe\u200b".encode(),
    "name_10k_chars": b"a" * 10_000 + b".png",
}

UPLOADS: dict[str, Upload] = {
    "truncated_png": Upload(lambda: _half(_png()), 422, ("PNG", *CORRUPT)),
    "truncated_jpeg": Upload(lambda: _half(_jpeg()), 422, ("JPEG", *CORRUPT), b"scan.jpg", "image/jpeg"),
    "png_bad_idat_crc": Upload(_png_bad_idat_crc, 422, ("PNG", *CORRUPT)),
    "png_bad_ihdr_crc": Upload(_png_bad_ihdr_crc, 422, ("PNG", *CORRUPT)),
    "png_garbage_after_signature": Upload(lambda: _png()[:8] + _junk(4096), 422, ("PNG", *CORRUPT)),
    "jpeg_garbage_after_soi": Upload(lambda: b"\xff\xd8\xff" + _junk(4096), 422, ("JPEG", *CORRUPT)),
    "jpeg_12bit_frame_header": Upload(_jpeg_12bit_sof, 422, ("JPEG", *CORRUPT)),
    "jpeg_damaged_scan": Upload(_jpeg_damaged_scan, 422, ("JPEG", *CORRUPT)),
    "png_header_bomb_30000x30000": Upload(_png_header_bomb, 413, TOO_MANY_PIXELS),
    "png_real_bomb_8000x8000": Upload(_png_real_bomb, 413, ("8000x8000", "64,000,000", "40,000,000 pixels", ALLOWED)),
    "jpeg_header_bomb_65000x65000": Upload(_jpeg_header_bomb, 413, TOO_MANY_PIXELS),
    # Pillow stops inflating text chunks at 1 MB and calls the file broken.
    "png_ztxt_bomb": Upload(_png_text_bomb, 422, ("PNG", *CORRUPT)),
    "dicom_pixel_bomb_60000x60000": Upload(
        _dicom_pixel_bomb, 413, ("DICOM frame", "60000x60000", "40,000,000 pixels"), b"bomb.dcm", "application/dicom"
    ),
    "dicom_without_pixel_data": Upload(
        _dicom_without_pixels, 422, ("no pixel data", ALLOWED), b"report.dcm", "application/dicom"
    ),
    "zip_renamed_png": Upload(_zip, 415, ("looks like a ZIP archive", *UNSUPPORTED)),
    "pdf_renamed_png": Upload(_pdf, 415, ("looks like a PDF document", *UNSUPPORTED)),
    "svg_script_named_png": Upload(_svg, 415, ("SVG", *UNSUPPORTED)),
    "svg_script_named_svg": Upload(_svg, 415, ("SVG", *UNSUPPORTED), b"scan.svg", "image/svg+xml"),
    "empty_file": Upload(lambda: b"", 400, ("empty", ALLOWED)),
    "text_file": Upload(_text, 415, UNSUPPORTED, b"notes.txt", "text/plain"),
    "text_named_dcm_with_traversal": Upload(_text, 415, UNSUPPORTED, b"../../etc/passwd.dcm", "application/dicom"),
    "over_upload_limit_32mb": Upload(_over_limit, 413, ("larger than the 32 MB limit",)),
    # Harmless content under a hostile name or type: analysed (200), the name used for nothing.
    **{
        case: Upload(_png, 200, (), filename=name) for case, name in TRAVERSAL_NAMES.items() if case != "name_10k_chars"
    },
    # ... except a name too long for the multipart parser (python-multipart), refused before the route.
    "name_10k_chars": Upload(_png, 400, ("multipart",), TRAVERSAL_NAMES["name_10k_chars"], audited=False),
    "png_sent_as_exe": Upload(_png, 200, (), b"setup.exe", "application/x-msdownload"),
}


@pytest.mark.parametrize("case", list(UPLOADS))
def test_hostile_upload(server: Server, case: str) -> None:
    _tried(case)
    spec = UPLOADS[case]
    data = spec.make()
    body, headers = multipart(data, spec.filename, spec.content_type)
    with server.client() as c:
        r = c.post(f"/api/predict/{spec.model}", content=body, headers=headers)
    echo = spec.filename.decode("latin-1")
    out = check_response(r, spec.status, spec.words)
    for fragment in ("passwd", "win.ini", "etc/", "gnp.exe", echo[:40]):
        assert fragment not in r.text, f"the response echoes the file name: {r.text[:300]}"
    if spec.status == 200:
        assert out["model_id"] == spec.model
        assert out["sha256"] == sha256(data)
        assert set(out["probabilities"]) == {"glioma", "meningioma", "notumor", "pituitary"}
    if not spec.audited:
        check_no_audit(server, r)
    else:
        outcome = "ok" if spec.status == 200 else "rejected"
        check_audit(server, r, outcome=outcome, model=spec.model, action="predict", sha=sha256(data), payload=data)
    _passed(case, r.status_code)


# --------------------------------------------------------------------------- other requests
@dataclass(frozen=True)
class Call:
    """A raw request. ``audit``: the outcome of the route's audit row, None when the request
    must be refused before the route (then there must be no row)."""

    path: str
    body: Callable[[], bytes]
    content_type: str | None
    status: int
    words: tuple[str, ...]
    audit: str | None = None
    model: str = "chat"
    hashed: Callable[[], bytes] | None = None  # whose sha256 the audit row holds; None = no hash
    chunked: bool = False  # send without Content-Length (Transfer-Encoding: chunked)


def _json(payload: Any) -> Callable[[], bytes]:
    return lambda: json.dumps(payload, ensure_ascii=True).encode()  # lone surrogates travel as \udXXX


def _chat(message: str, status: int, words: tuple[str, ...], audit: str = "rejected") -> Call:
    def hashed() -> bytes:
        return message.encode("utf-8", "replace")

    return Call("/api/chat", _json({"message": message}), "application/json", status, words, audit, "chat", hashed)


def _predict(path: str, status: int, words: tuple[str, ...], model: str, audit: str | None = "rejected") -> Call:
    body, headers = multipart(_png())
    return Call(path, lambda: body, headers["content-type"], status, words, audit, model, _png)


RTL_ZW = "\u202e\u200b\u200d\u2066\ufeff\u200f\u2069"
KNOWN = ("unknown model", "known:", "tumor", "xray")
NOT_A_FILE = ("multipart form field named 'file'",)
CALLS: dict[str, Call] = {
    "model_id_traversal_encoded_slash": _predict("/api/predict/..%2F..%2Fetc", 404, KNOWN, "../../etc"),
    "model_id_traversal_encoded_dots": _predict(
        "/api/predict/%2e%2e%2f%2e%2e%2fetc%2fshadow", 404, KNOWN, "../../etc/shadow"
    ),
    "model_id_unknown": _predict("/api/predict/nope", 404, KNOWN, "nope"),
    "model_id_not_an_image_model": _predict("/api/predict/chat", 400, ("not an image model", "tumor"), "chat"),
    "predict_json_body": Call(
        "/api/predict/tumor", _json({"file": MARKER.decode()}), "application/json", 400, NOT_A_FILE, "rejected", "tumor"
    ),
    "predict_raw_png_body": Call("/api/predict/tumor", _png, "image/png", 400, NOT_A_FILE, "rejected", "tumor"),
    "predict_wrong_field_name": Call(
        "/api/predict/tumor",
        lambda: multipart(_png(), name="image")[0],
        f"multipart/form-data; boundary={BOUNDARY}",
        400,
        NOT_A_FILE,
        "rejected",
        "tumor",
    ),
    "predict_form_urlencoded": Call(
        "/api/predict/tumor", lambda: b"file=" + MARKER, "application/x-www-form-urlencoded", 422, ("UploadFile",)
    ),
    "predict_multipart_without_boundary": Call(
        "/api/predict/tumor", lambda: MARKER, "multipart/form-data", 400, ("boundary",)
    ),
    "chat_oversized_json_1mb": Call(
        "/api/chat",
        _json({"message": "x" * (REQUEST_LIMIT + 1000)}),
        "application/json",
        413,
        ("request body", "larger than the 1.0 MB limit"),
    ),
    "chat_oversized_json_1mb_chunked": Call(
        "/api/chat",
        _json({"message": "x" * (REQUEST_LIMIT + 1000)}),
        "application/json",
        413,
        ("request body", "larger than the 1.0 MB limit"),
        chunked=True,
    ),
    "chat_malformed_json": Call("/api/chat", lambda: b'{"message": "hi", ', "application/json", 422, ("JSON",)),
    "chat_binary_body": Call("/api/chat", lambda: b"\xff\xfe\x00" + MARKER, "application/json", 422, ("JSON",)),
    "chat_deeply_nested_json_200k": Call(
        "/api/chat",
        lambda: b'{"message": "hi", "history": ' + b"[" * 200_000 + b"]" * 200_000 + b"}",
        "application/json",
        400,
        ("error parsing the body",),
    ),
    "chat_nested_history_500": Call(
        "/api/chat",
        lambda: b'{"message": "hi", "history": [{"role": "user", "content": ' + b"[" * 500 + b"]" * 500 + b"}]}",
        "application/json",
        422,
        ("history", "content"),
    ),
    "chat_form_urlencoded": Call(
        "/api/chat", lambda: b"message=" + MARKER, "application/x-www-form-urlencoded", 422, ("valid dictionary",)
    ),
    "chat_json_as_text_plain": Call(
        "/api/chat", _json({"message": "glaucoma?"}), "text/plain", 422, ("valid dictionary",)
    ),
    "chat_xml": Call("/api/chat", lambda: b"<message>" + MARKER + b"</message>", "application/xml", 422, ("valid",)),
    "chat_rtl_and_zero_width_only": _chat(RTL_ZW * 40, 400, ("no words", "health question")),
    "chat_lone_surrogates": _chat("\ud800x" * 12 + " glaucoma", 400, ("binary data", "plain text")),
    "chat_emoji_only": _chat("🩺💊🤒🫀🧠" * 30, 400, ("no words", "health question")),
    "chat_10k_chars": _chat(("glaucoma " * 1200)[:10_000], 413, ("10,000 characters", f"limit is {CHAT_LIMIT:,}")),
    # A real question wrapped in junk: answered. One unpaired surrogate (a client that cut an
    # emoji in half) is within the message rules' tolerance for stray junk characters.
    "chat_question_with_unicode_junk": _chat(
        f"What are the {RTL_ZW}symptoms of glaucoma?\u200b 🩺 \ud83d", 200, (), audit="ok"
    ),
}


@pytest.mark.parametrize("case", list(CALLS))
def test_hostile_request(server: Server, case: str) -> None:
    _tried(case)
    spec = CALLS[case]
    data = spec.body()
    headers = {"content-type": spec.content_type} if spec.content_type else {}
    with server.client() as c:
        r = c.post(spec.path, content=iter([data[:MB], data[MB:]]) if spec.chunked else data, headers=headers)
    assert ("content-length" in r.request.headers) != spec.chunked
    out = check_response(r, spec.status, spec.words)
    if spec.status == 200:
        assert out["matched"] is True
        assert out["sources"][0]["title"] == "Glaucoma"
    if spec.audit is None:
        check_no_audit(server, r)
    else:
        sha = sha256(spec.hashed()) if spec.hashed else None
        action = "chat" if spec.path == "/api/chat" else "predict"
        check_audit(server, r, outcome=spec.audit, model=spec.model, action=action, sha=sha, payload=data)
    _passed(case, r.status_code)


# --------------------------------------------------------------------------- 200 MB uploads
def _huge_parts(total: int) -> Iterator[bytes]:
    """A multipart body with a ``total``-byte file, 1 MB at a time (never held whole)."""
    head, _ = multipart(b"", b"huge.png")
    head = head[: -len(f"\r\n--{BOUNDARY}--\r\n")]
    yield head + b"\x89PNG\r\n\x1a\n"
    chunk = b"\0" * MB
    for _ in range(total // MB):
        yield chunk
    yield f"\r\n--{BOUNDARY}--\r\n".encode()


def _huge_length(total: int) -> int:
    return sum(len(p) for p in _huge_parts(0)) + total


HUGE_TARGETS = {"predict": "/api/predict/tumor", "gradio_upload": "/gradio_api/upload"}


@pytest.mark.parametrize("target", list(HUGE_TARGETS))
@pytest.mark.parametrize("framing", ["content_length", "chunked"])
def test_huge_upload_is_refused_without_being_held(server: Server, framing: str, target: str) -> None:
    """200 MB streamed by httpx from a generator; with a Content-Length the server refuses it from
    the headers, without one (chunked) once the limit is passed. Either way: 413, fast, and the
    server's memory does not grow by anything like 200 MB."""
    case = f"huge_upload_200mb[{target}-{framing}]"
    _tried(case)
    consumed = 0

    def body() -> Iterator[bytes]:
        nonlocal consumed
        for part in _huge_parts(HUGE):
            consumed += len(part)
            yield part

    headers = {"content-type": f"multipart/form-data; boundary={BOUNDARY}"}
    if framing == "content_length":
        headers["content-length"] = str(_huge_length(HUGE))
    before = server.rss()
    start = time.monotonic()
    with server.client() as c:
        r = c.post(HUGE_TARGETS[target], content=body(), headers=headers)
    elapsed = time.monotonic() - start
    after = server.rss()
    grew = (after - before) / MB
    NOTES.append(f"{case}: {r.status_code} in {elapsed:.2f}s, {consumed // MB} MB streamed, RSS {grew:+.1f} MB")
    assert ("content-length" in r.request.headers) == (framing == "content_length")
    if (target, framing) == ("gradio_upload", "chunked"):
        # Gradio counts the streamed file against its own max_file_size (the 32 MB upload limit),
        # which trips before the body limit (33 MB with the multipart allowance): its plain-text 413.
        assert r.status_code == 413, r.text[:300]
        assert "File size exceeded maximum allowed size of 33554432 bytes" in r.text
    else:
        check_response(r, 413, ("upload", "larger than the 33.0 MB limit"))
        assert r.json()["error"] == "RequestTooLarge"
    assert elapsed < 20, f"took {elapsed:.1f}s"
    assert after - before < RSS_PER_HUGE_UPLOAD, f"RSS grew {(after - before) / MB:.0f} MB"
    check_no_audit(server, r)
    _passed(case, r.status_code)


def _send_until_answered(url: str, headers: dict[str, str], chunked: bool) -> tuple[int, bytes, int]:
    """Stream a 200 MB upload over a raw socket and stop as soon as the server answers.
    Returns the status, the response body and how many body bytes had been sent by then."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {_huge_length(HUGE)}"
    head = (
        f"POST /api/predict/tumor HTTP/1.1\r\nHost: {host}:{port}\r\n{framing}\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
        f"Authorization: {headers['Authorization']}\r\n\r\n"
    ).encode()

    def frames() -> Iterator[bytes]:
        for part in _huge_parts(HUGE):
            yield b"%x\r\n%s\r\n" % (len(part), part) if chunked else part
        if chunked:
            yield b"0\r\n\r\n"

    sent = 0
    with socket.create_connection((host, port), timeout=30) as sock:
        sock.sendall(head)
        sock.setblocking(False)
        pending, source = b"", frames()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            readable, writable, _ = select.select([sock], [sock], [], 1.0)
            if readable:
                break  # the answer (or the close) is there before the body was all sent
            if writable:
                if not pending:
                    pending = next(source, b"")
                    if not pending:
                        select.select([sock], [], [], 20)  # all sent: wait for the answer
                        break
                try:
                    n = sock.send(pending)
                except BlockingIOError:
                    continue
                except (BrokenPipeError, ConnectionResetError):
                    break
                sent += n
                pending = pending[n:]
        sock.setblocking(True)
        raw = b""
        while b"\r\n\r\n" not in raw:
            got = sock.recv(65536)
            assert got, f"connection closed without an answer after {sent / MB:.1f} MB"
            raw += got
        head_bytes, _, rest = raw.partition(b"\r\n\r\n")
        status = int(head_bytes.split(b" ", 2)[1])
        length = next(
            int(line.split(b":", 1)[1])
            for line in head_bytes.split(b"\r\n")
            if line.lower().startswith(b"content-length")
        )
        while len(rest) < length:
            got = sock.recv(65536)
            if not got:
                break
            rest += got
    return status, rest[:length], sent


@pytest.mark.parametrize("framing", ["content_length", "chunked"])
def test_huge_upload_is_answered_before_it_is_all_sent(server: Server, framing: str) -> None:
    """The same 200 MB over a raw socket that watches for the answer while it sends: the 413
    must arrive while most of the body has not been sent yet (the server did not read it all)."""
    case = f"huge_upload_answered_early[{framing}]"
    _tried(case)
    before = server.rss()
    status, body, sent = _send_until_answered(server.url, server.headers, chunked=framing == "chunked")
    after = server.rss()
    grew = (after - before) / MB
    NOTES.append(f"{case}: {status} after {sent / MB:.1f} of {HUGE // MB} MB sent, RSS {grew:+.1f} MB")
    assert status == 413, body[:300]
    assert "larger than the 33.0 MB limit" in json.loads(body)["detail"]
    # Socket buffers on loopback hold up to ~36 MB (tcp_wmem + tcp_rmem maxima); the server stops
    # at the 33 MB limit (chunked) or at the headers (Content-Length).
    assert sent < HUGE // 2, f"{sent / MB:.0f} MB were sent before the answer"
    assert after - before < RSS_PER_HUGE_UPLOAD
    _passed(case, status)


# --------------------------------------------------------------------------- Gradio's upload route
GRADIO_NAMES = ["name_traversal_posix", "name_traversal_windows", "name_absolute"]


@pytest.mark.parametrize("case", GRADIO_NAMES)
def test_gradio_upload_keeps_hostile_names_inside_its_dir(server: Server, case: str) -> None:
    """Gradio's own upload route does turn client file names into paths: they must stay inside
    GRADIO_TEMP_DIR as bare base names. (Gradio answers with the server path by design: its
    client sends it back to reference the file.)"""
    _tried(f"gradio_{case}")
    name = TRAVERSAL_NAMES[case].decode()
    data = _png(7)
    with server.client() as c:
        r = c.post("/gradio_api/upload", files=[("files", (name, data, "image/png"))])
    check_response(r, 200, (), echo_ok=("/tmp/",))
    (stored,) = r.json()
    path = Path(stored).resolve()
    assert path.is_relative_to(server.gradio_tmp.resolve()), stored
    assert path.read_bytes() == data
    assert path.parent.parent == server.gradio_tmp.resolve()  # <temp dir>/<content hash>/<base name>
    assert "/" not in path.name
    assert "\\" not in path.name
    _passed(f"gradio_{case}", r.status_code)


# --------------------------------------------------------------------------- after all of it
TOTAL_CASES = len(UPLOADS) + len(CALLS) + 2 * len(HUGE_TARGETS) + 2 + len(GRADIO_NAMES)


def _names_under(root: Path, skip: Path | None = None) -> list[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        if skip is not None and Path(dirpath).resolve().is_relative_to(skip.resolve()):
            dirnames[:] = []
            continue
        out += dirnames + filenames
    return out


def test_server_survived_the_hostile_suite(
    server: Server, request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str]
) -> None:
    """Health, a normal analysis, memory near the baseline, no payload in the audit log or the
    server log, nothing written outside the data dir; then the summary line."""
    with server.client() as c:
        health = c.get("/api/health")
        r = c.post("/api/predict/xray", files={"file": ("fine.png", _png(2024), "image/png")})
    final = server.rss()
    peak = max(server.rss_samples)
    mine = [i.name for i in request.session.items if i.path == request.node.path and i.name != request.node.name]
    passed = len(PASSED)
    summary = (
        f"hostile suite: {len(TRIED)} cases tried, {passed} passed "
        f"(of {len(mine)} selected); server RSS baseline {server.baseline_rss / MB:.0f} MB, "
        f"peak {peak / MB:.0f} MB, final {final / MB:.0f} MB ({(final - server.baseline_rss) / MB:+.0f} MB)"
    )
    log.warning(summary)
    with capsys.disabled():
        print("\n" + summary)
        print("statuses: " + ", ".join(f"{k}={v}" for k, v in PASSED.items()))
        print("\n".join(NOTES))

    assert health.status_code == 200
    assert r.status_code == 200, r.text
    assert r.json()["cached"] is False
    assert final - server.baseline_rss < RSS_SLACK

    rows = server.audit_rows(limit=10_000)
    for row in rows:
        check_audit_row_has_no_payload(row, b"")
    text = json.dumps(rows, ensure_ascii=False)
    for needle in ("\x89PNG", "IHDR", "IDAT", "%PDF", "<script", "PK\x03\x04", "passwd", "win.ini", "gnp.exe"):
        assert needle not in text, f"{needle!r} in the audit log"

    server_log = (server.data_dir / "server.log").read_text(errors="replace")
    assert MARKER.decode() not in server_log
    assert "unhandled error" not in server_log
    assert "unexpected error decoding" not in server_log

    # Nothing named after a hostile file name anywhere but Gradio's upload dir, where only the
    # three small uploads lie (no partial 200 MB upload left behind); /etc/passwd untouched (the
    # suite may well run as root).
    names = _names_under(server.data_dir, skip=server.gradio_tmp)
    assert not [n for n in names if "passwd" in n or "win.ini" in n]
    for spot in (REPO, REPO.parent, server.data_dir.parent, Path("/tmp"), Path(tempfile.gettempdir())):
        assert not (spot / "passwd").exists()
        assert not (spot / "passwd.png").exists()
        assert not (spot / "win.ini").exists()
    assert _passwd_stat() == server.passwd_stat
    stored = [p for p in server.gradio_tmp.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in stored) < MB, [(p.name, p.stat().st_size) for p in stored]

    assert passed == len(TRIED), f"failed: {sorted(set(TRIED) - set(PASSED))}"
    if len(mine) == len(TRIED):  # the whole module ran
        assert len(TRIED) == TOTAL_CASES
