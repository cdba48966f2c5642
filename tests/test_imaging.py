"""Behaviour tests for inference.imaging.decode_image / to_png_bytes.

All inputs are generated in memory or come from the test files bundled inside the pydicom
package (``get_testdata_file(..., download=False)``), so nothing touches the network.
"""

from __future__ import annotations

import hashlib
import io
import random
import struct
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image, ImageFile, ImageOps
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels.decoders.base import Decoder
from pydicom.sequence import Sequence
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, generate_uid

from inference.errors import (
    CorruptImage,
    DoctorAIError,
    ImageTooLarge,
    InvalidInput,
    UnsupportedDicom,
    UnsupportedImage,
)
from inference.imaging import DecodedImage, decode_image, sha256_bytes, to_png_bytes

ALLOWED = "PNG, JPEG, BMP, TIFF, WebP or DICOM (.dcm)"

# pydicom emits UserWarnings for quirks of its own test files (odd VRs etc.); they are
# not what these tests are about.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


# --------------------------------------------------------------------------- helpers


def _pattern(height: int = 24, width: int = 32) -> np.ndarray:
    """A deterministic RGB image with distinct values per channel and position."""
    yy, xx = np.mgrid[0:height, 0:width]
    return np.stack([(xx * 7) % 256, (yy * 11) % 256, (xx * 3 + yy * 5) % 256], axis=-1).astype(np.uint8)


def _save(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def _png(array: np.ndarray) -> bytes:
    return _save(Image.fromarray(array), "PNG")


def _dicom_path(name: str) -> Path:
    """Path of a DICOM file bundled with pydicom; skip if this install lacks it."""
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"{name} is not bundled with this pydicom install")
    return Path(str(path))


def _dicom_bytes(name: str) -> bytes:
    return _dicom_path(name).read_bytes()


def _dataset_bytes(ds: Dataset, **write_args: object) -> bytes:
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, **write_args)  # type: ignore[arg-type]
    return buffer.getvalue()


def _is_gray(pixels: np.ndarray) -> bool:
    return bool((pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all())


def _assert_rgb(decoded: DecodedImage, height: int, width: int) -> None:
    assert decoded.pixels.shape == (height, width, 3)
    assert decoded.pixels.dtype == np.uint8
    assert decoded.pixels.flags["C_CONTIGUOUS"]


def _assert_error(data: bytes, error: type[DoctorAIError], *fragments: str, **kwargs: object) -> DoctorAIError:
    """decode_image must raise exactly ``error`` and the message must contain ``fragments``."""
    with pytest.raises(DoctorAIError) as info:
        decode_image(data, **kwargs)  # type: ignore[arg-type]
    assert type(info.value) is error, f"{type(info.value).__name__}: {info.value.message}"
    for fragment in fragments:
        assert fragment in info.value.message, info.value.message
    return info.value


def _count_calls(monkeypatch: pytest.MonkeyPatch, owner: object, name: str) -> list[object]:
    """Wrap ``owner.name`` so each call is recorded in the returned list."""
    calls: list[object] = []
    original = getattr(owner, name)

    def wrapper(*args: object, **kwargs: object) -> object:
        calls.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, wrapper)
    return calls


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


# --------------------------------------------------------------------------- raster formats


@pytest.mark.parametrize(
    ("fmt", "params"),
    [("PNG", {}), ("BMP", {}), ("TIFF", {}), ("TIFF", {"compression": "tiff_lzw"}), ("WEBP", {"lossless": True})],
)
def test_lossless_round_trip_preserves_values(fmt: str, params: dict[str, object]) -> None:
    source = _pattern()
    data = _save(Image.fromarray(source), fmt, **params)

    decoded = decode_image(data)

    _assert_rgb(decoded, *source.shape[:2])
    assert decoded.format == fmt
    np.testing.assert_array_equal(decoded.pixels, source)
    assert decoded.sha256 == hashlib.sha256(data).hexdigest()
    assert decoded.meta["mode"] == "RGB"
    assert decoded.meta["size"] == (32, 24)


def test_jpeg_round_trip_is_close() -> None:
    source = _pattern()
    decoded = decode_image(_save(Image.fromarray(source), "JPEG", quality=95))

    _assert_rgb(decoded, *source.shape[:2])
    assert decoded.format == "JPEG"
    assert np.abs(decoded.pixels.astype(int) - source.astype(int)).mean() < 6


def test_format_comes_from_content_not_file_name() -> None:
    data = _png(_pattern())
    assert decode_image(data, filename="scan.jpg").format == "PNG"
    assert decode_image(data, filename="scan.dcm").format == "PNG"


def test_grayscale_l_is_replicated_to_three_channels() -> None:
    gray = _pattern()[:, :, 0]
    decoded = decode_image(_save(Image.fromarray(gray), "PNG"))

    _assert_rgb(decoded, *gray.shape)
    for channel in range(3):
        np.testing.assert_array_equal(decoded.pixels[:, :, channel], gray)
    assert decoded.meta["mode"] == "L"


def test_rgba_is_composited_over_black() -> None:
    rgba = np.zeros((2, 3, 4), dtype=np.uint8)
    rgba[..., :3] = (200, 100, 50)
    rgba[0, :, 3] = (255, 0, 128)
    rgba[1, :, 3] = 255
    decoded = decode_image(_save(Image.fromarray(rgba), "PNG"))

    _assert_rgb(decoded, 2, 3)
    np.testing.assert_array_equal(decoded.pixels[0, 0], (200, 100, 50))  # opaque: unchanged
    np.testing.assert_array_equal(decoded.pixels[0, 1], (0, 0, 0))  # transparent: black
    np.testing.assert_allclose(decoded.pixels[0, 2], (100, 50, 25), atol=1)  # half: halved
    assert decoded.meta["mode"] == "RGBA"


def test_la_is_converted() -> None:
    la = Image.merge("LA", (Image.new("L", (4, 4), 90), Image.new("L", (4, 4), 255)))
    decoded = decode_image(_save(la, "PNG"))
    _assert_rgb(decoded, 4, 4)
    assert (decoded.pixels == 90).all()


def test_palette_image_is_expanded_to_rgb() -> None:
    source = _pattern()
    palette_image = Image.fromarray(source).quantize(colors=16)
    expected = np.asarray(palette_image.convert("RGB"))

    decoded = decode_image(_save(palette_image, "PNG"))

    assert decoded.meta["mode"] == "P"
    np.testing.assert_array_equal(decoded.pixels, expected)


def test_palette_with_transparency_uses_alpha() -> None:
    palette_image = Image.new("P", (4, 4), 1)
    palette_image.putpalette([0, 0, 0, 250, 10, 10] + [0, 0, 0] * 254)
    palette_image.putpixel((0, 0), 0)
    palette_image.info["transparency"] = 1  # colour index 1 fully transparent

    decoded = decode_image(_save(palette_image, "PNG", transparency=1))

    assert (decoded.pixels == 0).all()


def test_bilevel_mode_1_is_converted() -> None:
    bits = np.zeros((8, 8), dtype=bool)
    bits[:, 4:] = True
    decoded = decode_image(_save(Image.fromarray(bits), "PNG"))
    assert decoded.meta["mode"] == "1"
    assert (decoded.pixels[:, :4] == 0).all()
    assert (decoded.pixels[:, 4:] == 255).all()


def test_16_bit_grayscale_is_min_max_scaled() -> None:
    # Typical 12-bit medical data in a 16-bit PNG: a naive clip to 8 bits would be white.
    values = np.linspace(1000, 4000, 64, dtype=np.uint16).reshape(8, 8)
    image = Image.fromarray(values)
    assert image.mode.startswith("I;16")

    decoded = decode_image(_save(image, "PNG"))

    _assert_rgb(decoded, 8, 8)
    assert _is_gray(decoded.pixels)
    assert decoded.pixels[0, 0, 0] == 0
    assert decoded.pixels[-1, -1, 0] == 255
    expected = np.rint((values.astype(float) - 1000) * 255 / 3000)
    np.testing.assert_allclose(decoded.pixels[:, :, 0], expected, atol=1)  # float rounding


def test_float_tiff_is_scaled_and_nan_safe() -> None:
    values = np.linspace(-1.0, 1.0, 16, dtype=np.float32).reshape(4, 4)
    values[0, 1] = np.nan
    decoded = decode_image(_save(Image.fromarray(values), "TIFF"))
    assert decoded.meta["mode"] == "F"
    assert decoded.pixels[0, 0, 0] == 0
    assert decoded.pixels[-1, -1, 0] == 255


def test_cmyk_is_converted_to_rgb() -> None:
    cmyk = Image.new("CMYK", (6, 5), (0, 255, 255, 0))  # pure red ink-wise
    expected = np.asarray(cmyk.convert("RGB"))

    for fmt in ("TIFF", "JPEG"):
        decoded = decode_image(_save(cmyk, fmt))
        assert decoded.meta["mode"] == "CMYK"
        _assert_rgb(decoded, 5, 6)
        assert np.abs(decoded.pixels.astype(int) - expected.astype(int)).max() <= 8, fmt
        assert decoded.pixels[..., 0].min() > 200
        assert decoded.pixels[..., 1:].max() < 40


def test_exif_orientation_is_applied_for_jpeg() -> None:
    stored = np.zeros((20, 40, 3), dtype=np.uint8)  # wide as stored
    stored[:10, :10] = (255, 0, 0)  # red block top-left
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": the displayed image is tall
    data = _save(Image.fromarray(stored), "JPEG", exif=exif.tobytes(), quality=95)

    decoded = decode_image(data)

    _assert_rgb(decoded, 40, 20)
    assert decoded.meta["exif_orientation"] == 6
    with Image.open(io.BytesIO(data)) as reference:
        expected = np.asarray(ImageOps.exif_transpose(reference).convert("RGB"))
    np.testing.assert_array_equal(decoded.pixels, expected)
    # The red block moved from the top-left to the top-right corner.
    assert decoded.pixels[2, -3, 0] > 200
    assert decoded.pixels[2, 2, 0] < 50


def test_multipage_tiff_uses_first_page() -> None:
    first, second = Image.new("RGB", (8, 8), (10, 20, 30)), Image.new("RGB", (8, 8), (200, 0, 0))
    data = _save(first, "TIFF", save_all=True, append_images=[second])

    decoded = decode_image(data)

    assert decoded.meta["animated"] is True
    assert (decoded.pixels == (10, 20, 30)).all()


def test_animated_webp_uses_first_frame() -> None:
    frames = [Image.new("RGB", (8, 8), (0, 0, 255)), Image.new("RGB", (8, 8), (0, 255, 0))]
    data = _save(frames[0], "WEBP", save_all=True, append_images=frames[1:], lossless=True, duration=100)

    decoded = decode_image(data)

    assert decoded.format == "WEBP"
    assert decoded.meta["animated"] is True
    assert (decoded.pixels == (0, 0, 255)).all()


# --------------------------------------------------------------------------- DICOM


def test_ct_without_window_is_min_max_normalised() -> None:
    ds = pydicom.dcmread(_dicom_path("CT_small.dcm"))
    assert ds.PhotometricInterpretation == "MONOCHROME2"
    assert "WindowCenter" not in ds

    decoded = decode_image(_dicom_bytes("CT_small.dcm"), filename="CT_small.dcm")

    _assert_rgb(decoded, ds.Rows, ds.Columns)
    assert decoded.format == "DICOM"
    assert _is_gray(decoded.pixels)
    assert decoded.pixels.min() == 0
    assert decoded.pixels.max() == 255
    assert len(np.unique(decoded.pixels)) > 150
    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    expected = np.rint((hu - hu.min()) * 255 / (hu.max() - hu.min()))
    np.testing.assert_allclose(decoded.pixels[:, :, 0], expected, atol=1)  # float rounding
    assert decoded.meta["modality"] == "CT"
    assert decoded.meta["photometric"] == "MONOCHROME2"
    assert decoded.meta["window"]["type"] == "minmax"
    assert decoded.meta["frames"] == 1
    assert decoded.meta["frame_used"] == 0


def test_mr_window_center_width_is_applied() -> None:
    ds = pydicom.dcmread(_dicom_path("MR_small.dcm"))
    center, width = float(ds.WindowCenter), float(ds.WindowWidth)

    decoded = decode_image(_dicom_bytes("MR_small.dcm"))

    _assert_rgb(decoded, ds.Rows, ds.Columns)
    assert decoded.meta["window"] == {"type": "window", "center": center, "width": width}
    # DICOM PS3.3 C.11.2.1.2.1 linear window, mapped straight to 0..255.
    raw = ds.pixel_array.astype(float)
    expected = np.clip(((raw - (center - 0.5)) / (width - 1) + 0.5) * 255, 0, 255)
    assert np.abs(decoded.pixels[:, :, 0].astype(float) - expected).max() <= 1.0
    assert decoded.pixels.max() == 255
    assert len(np.unique(decoded.pixels)) > 100


def test_voi_lut_sequence_is_applied() -> None:
    ds = pydicom.dcmread(_dicom_path("CT_small.dcm"))
    hu_min = int((ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)).min())
    item = Dataset()
    # Ambiguous VRs (US/SS/OW) must be explicit for pydicom to write them.
    item.add_new(0x00283002, "SS", [1024, hu_min, 16])  # LUTDescriptor: entries, first, bits
    item.add_new(0x00283006, "US", [round(i * 65535 / 1023) for i in range(1024)])  # ramp
    ds.VOILUTSequence = Sequence([item])

    decoded = decode_image(_dataset_bytes(ds))

    assert decoded.meta["window"] == {"type": "voi_lut"}
    assert decoded.pixels.min() == 0
    assert decoded.pixels.max() == 255


def _as_monochrome1(name: str) -> bytes:
    ds = pydicom.dcmread(_dicom_path(name))
    ds.PhotometricInterpretation = "MONOCHROME1"
    return _dataset_bytes(ds)


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm"])  # min-max and windowed
def test_monochrome1_is_inverted(name: str) -> None:
    # No MONOCHROME1 file is bundled with pydicom 3.0, so derive one from a MONOCHROME2 file.
    mono2 = decode_image(_dicom_bytes(name))
    mono1 = decode_image(_as_monochrome1(name))

    assert mono1.meta["photometric"] == "MONOCHROME1"
    np.testing.assert_array_equal(mono1.pixels, 255 - mono2.pixels)


def test_multiframe_uses_middle_frame() -> None:
    ds = pydicom.dcmread(_dicom_path("rtdose.dcm"))
    frames = int(ds.NumberOfFrames)
    assert frames == 15

    decoded = decode_image(_dicom_bytes("rtdose.dcm"))

    assert decoded.meta["frames"] == frames
    assert decoded.meta["frame_used"] == frames // 2
    _assert_rgb(decoded, ds.Rows, ds.Columns)
    volume = ds.pixel_array.astype(float)
    middle = volume[frames // 2]
    expected = np.rint((middle - middle.min()) * 255 / (middle.max() - middle.min()))
    np.testing.assert_allclose(decoded.pixels[:, :, 0], expected, atol=1)  # float rounding
    first = volume[0]
    assert not np.array_equal(np.rint((first - first.min()) * 255 / max(first.max() - first.min(), 1)), expected)


def test_compressed_grayscale_jpeg2000_decodes() -> None:
    ds = pydicom.dcmread(_dicom_path("JPEG2000.dcm"))
    assert ds.file_meta.TransferSyntaxUID.is_compressed

    decoded = decode_image(_dicom_bytes("JPEG2000.dcm"))

    _assert_rgb(decoded, ds.Rows, ds.Columns)
    assert "JPEG 2000" in decoded.meta["transfer_syntax"]
    assert decoded.pixels.min() == 0
    assert decoded.pixels.max() == 255


@pytest.mark.parametrize("name", ["MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm"])
def test_lossless_compressed_dicom_matches_uncompressed(name: str) -> None:
    assert pydicom.dcmread(_dicom_path(name)).file_meta.TransferSyntaxUID.is_compressed
    reference = decode_image(_dicom_bytes("MR_small.dcm"))
    decoded = decode_image(_dicom_bytes(name))
    np.testing.assert_array_equal(decoded.pixels, reference.pixels)


@pytest.mark.parametrize("name", ["SC_rgb_jpeg_dcmtk.dcm", "SC_ybr_full_422_uncompressed.dcm", "SC_rgb_rle_16bit.dcm"])
def test_colour_dicom_is_rgb(name: str) -> None:
    # These are all the same 100x100 test card: top rows pure red, bottom-right white.
    ds = pydicom.dcmread(_dicom_path(name))
    decoded = decode_image(_dicom_bytes(name))

    _assert_rgb(decoded, 100, 100)
    assert decoded.meta["photometric"] == ds.PhotometricInterpretation
    assert decoded.meta["window"] is None
    np.testing.assert_allclose(decoded.pixels[2, 2], (255, 0, 0), atol=3)
    np.testing.assert_allclose(decoded.pixels[-2, -2], (255, 255, 255), atol=3)


def test_ybr_jpeg_is_converted_not_passed_through() -> None:
    ds = pydicom.dcmread(_dicom_path("SC_rgb_jpeg_dcmtk.dcm"))
    assert ds.PhotometricInterpretation == "YBR_FULL"
    decoded = decode_image(_dicom_bytes("SC_rgb_jpeg_dcmtk.dcm"))
    # In YCbCr, red would be roughly (76, 85, 255); in RGB it is (255, 0, 0).
    assert decoded.pixels[2, 2, 0] > 240
    assert decoded.pixels[2, 2, 2] < 15


def test_uncompressed_rgb_dicom_is_exact() -> None:
    ds = pydicom.dcmread(_dicom_path("SC_rgb_small_odd.dcm"))
    decoded = decode_image(_dicom_bytes("SC_rgb_small_odd.dcm"))
    np.testing.assert_array_equal(decoded.pixels, ds.pixel_array.reshape(3, 3, 3))


def test_palette_colour_dicom_is_expanded() -> None:
    from pydicom.pixels import apply_color_lut

    ds = pydicom.dcmread(_dicom_path("examples_palette.dcm"))
    assert ds.PhotometricInterpretation == "PALETTE COLOR"
    expected = apply_color_lut(ds.pixel_array, ds)
    if expected.dtype != np.uint8:
        expected = (expected >> 8).astype(np.uint8)

    decoded = decode_image(_dicom_bytes("examples_palette.dcm"))

    np.testing.assert_array_equal(decoded.pixels, expected)


def test_dicom_without_pixel_data_is_unsupported_dicom() -> None:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.88.22")  # Enhanced SR
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "SR"
    data = _dataset_bytes(ds, enforce_file_format=True)
    assert data[128:132] == b"DICM"

    _assert_error(data, UnsupportedDicom, "no pixel data", "upload an image series file")


def test_preambleless_rtstruct_named_dcm_is_unsupported_dicom() -> None:
    data = _dicom_bytes("rtstruct.dcm")
    assert data[128:132] != b"DICM"
    _assert_error(data, UnsupportedDicom, "no pixel data", filename="rtstruct.dcm")
    # Without the .dcm hint the content is not recognisable at all.
    _assert_error(data, UnsupportedImage, ALLOWED)


def test_preambleless_dicom_needs_dcm_name() -> None:
    ds = pydicom.dcmread(_dicom_path("CT_small.dcm"))
    del ds.file_meta
    ds.preamble = None
    data = _dataset_bytes(ds, implicit_vr=True, little_endian=True, enforce_file_format=False)
    assert data[128:132] != b"DICM"

    decoded = decode_image(data, filename="SCAN.DCM")
    reference = decode_image(_dicom_bytes("CT_small.dcm"))
    assert decoded.format == "DICOM"
    np.testing.assert_array_equal(decoded.pixels, reference.pixels)

    _assert_error(data, UnsupportedImage, ALLOWED, filename="scan.png")


def test_dicom_with_undecodable_transfer_syntax_names_it() -> None:
    ds = pydicom.dcmread(_dicom_path("CT_small.dcm"))
    ds.PixelData = encapsulate([ds.PixelData])  # pydicom only writes compressed TS encapsulated
    ds.file_meta.TransferSyntaxUID = UID("1.2.840.10008.1.2.4.100")  # MPEG2 video
    data = _dataset_bytes(ds)

    _assert_error(data, UnsupportedDicom, "MPEG2", "1.2.840.10008.1.2.4.100")


def test_dicom_pixel_bomb_is_rejected_before_decoding() -> None:
    ds = pydicom.dcmread(_dicom_path("CT_small.dcm"))
    ds.Rows = ds.Columns = 20000
    _assert_error(_dataset_bytes(ds), ImageTooLarge, "40,000,000 pixels")


def test_truncated_dicom_is_corrupt() -> None:
    data = _dicom_bytes("CT_small.dcm")
    _assert_error(data[: len(data) // 2], CorruptImage, "DICOM", ALLOWED)


def test_deflated_dicom_decodes() -> None:
    ds = pydicom.dcmread(_dicom_path("image_dfl.dcm"))
    assert ds.file_meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian
    decoded = decode_image(_dicom_bytes("image_dfl.dcm"))
    np.testing.assert_array_equal(decoded.pixels[:, :, 0], ds.pixel_array)


def test_deflated_dicom_bomb_is_not_inflated(monkeypatch: pytest.MonkeyPatch) -> None:
    # pydicom inflates a deflated dataset in one unbounded zlib call; 4 MB of zeros here
    # deflates to a few KB. With max_bytes=256 KB the inflate budget is 2 MB.
    ds = pydicom.dcmread(_dicom_path("CT_small.dcm"))
    ds.Rows, ds.Columns = 2048, 1024
    ds.PixelData = bytes(2048 * 1024 * 2)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    data = _dataset_bytes(ds)
    assert len(data) < 64 * 1024
    reads = _count_calls(monkeypatch, pydicom, "dcmread")

    _assert_error(data, ImageTooLarge, "expands to more than 2 MB", ALLOWED, max_bytes=256 * 1024)
    assert reads == [], "pydicom inflated the bomb"


def test_compressed_frame_claiming_huge_size_is_not_decoded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Rows/Columns say 1024x256, but the JPEG 2000 SIZ marker inside the pixel data says
    # 1024 x 7,667,968: openjpeg spent ~30 s on such a file before this guard existed.
    data = bytearray(_dicom_bytes("JPEG2000.dcm"))
    siz = data.index(b"\xff\x4f\xff\x51")
    struct.pack_into(">I", data, siz + 8, 7_667_968)  # Xsiz
    decodes = _count_calls(monkeypatch, Decoder, "as_array")

    _assert_error(bytes(data), CorruptImage, "DICOM", ALLOWED)
    assert decodes == [], "the codestream was handed to a decoder"


def test_unfixable_jpeg_dicom_is_corrupt_not_crash() -> None:
    # JPEG-lossy.dcm is a known-broken 12-bit JPEG that neither libjpeg nor Pillow decode.
    _assert_error(_dicom_bytes("JPEG-lossy.dcm"), CorruptImage, "DICOM", ALLOWED)


# --------------------------------------------------------------------------- bad input


def test_empty_input_is_invalid() -> None:
    _assert_error(b"", InvalidInput, "empty file", ALLOWED)


def test_random_bytes_are_unsupported() -> None:
    noise = random.Random(1234).randbytes(4096)
    _assert_error(noise, UnsupportedImage, ALLOWED, filename="scan.png")


def test_zip_renamed_png_is_unsupported() -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("scan.png", _png(_pattern()))
    _assert_error(buffer.getvalue(), UnsupportedImage, "ZIP", ALLOWED, filename="scan.png")


def test_pdf_is_unsupported() -> None:
    pdf = b"%PDF-1.7\n1 0 obj\n<< /Type /Catalog >>\nendobj\ntrailer\n<< /Root 1 0 R >>\n%%EOF\n"
    _assert_error(pdf, UnsupportedImage, "PDF", ALLOWED, filename="scan.pdf")


def test_svg_with_script_is_unsupported() -> None:
    svg = (
        b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10">'
        b"<script>alert(document.cookie)</script><rect width='10' height='10'/></svg>"
    )
    _assert_error(svg, UnsupportedImage, "SVG", ALLOWED, filename="scan.png")


def test_gif_is_unsupported() -> None:
    _assert_error(_save(Image.new("P", (4, 4)), "GIF"), UnsupportedImage, "GIF", ALLOWED)


@pytest.mark.parametrize(
    ("fmt", "make"),
    [
        ("PNG", lambda: _png(_pattern(64, 64))),
        ("JPEG", lambda: _save(Image.fromarray(_pattern(64, 64)), "JPEG")),
    ],
)
def test_truncated_file_is_corrupt(fmt: str, make: Callable[[], bytes]) -> None:
    data = make()
    _assert_error(data[: len(data) // 2], CorruptImage, fmt, ALLOWED)


def test_png_with_damaged_idat_is_corrupt() -> None:
    data = bytearray(_png(_pattern(64, 64)))
    idat = data.index(b"IDAT")
    length = struct.unpack(">I", data[idat - 4 : idat])[0]
    start = idat + 4 + length // 3
    for offset in range(start, start + 32):
        data[offset] ^= 0xA5
    _assert_error(bytes(data), CorruptImage, "PNG", ALLOWED)


def test_real_decompression_bomb_is_rejected_without_decoding(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # 8000x8000 bilevel zeros compress to a few KB but would decode to ~190 MB of RGB.
    bomb = _save(Image.new("1", (8000, 8000), 0), "PNG")
    assert len(bomb) < 100_000
    loads = _count_calls(monkeypatch, ImageFile.ImageFile, "load")

    _assert_error(bomb, ImageTooLarge, "64,000,000 pixels", "40,000,000 pixels", ALLOWED)
    assert loads == [], "pixel data was decoded"


def test_crafted_huge_png_header_is_rejected_before_decoding() -> None:
    # IHDR claims 30000x30000 RGB; the tiny IDAT would fail to decode (CorruptImage), so
    # ImageTooLarge proves the header was checked first. This size also trips Pillow's own
    # DecompressionBombError, which must map to the same typed error.
    ihdr = struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0)
    crafted = (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 1000))
        + _png_chunk(b"IEND", b"")
    )
    _assert_error(crafted, ImageTooLarge, "40,000,000 pixels")
    # Same header below Pillow's own threshold: only our per-call limit stops it.
    small_ihdr = struct.pack(">IIBBBBB", 5000, 5000, 8, 2, 0, 0, 0)
    crafted = crafted.replace(_png_chunk(b"IHDR", ihdr), _png_chunk(b"IHDR", small_ihdr))
    _assert_error(crafted, ImageTooLarge, "25,000,000", "1,000,000 pixels", max_pixels=1_000_000)


def test_too_many_bytes_is_rejected() -> None:
    data = _png(_pattern())
    padded = data + b"\x00" * (32 * 1024 * 1024 + 1 - len(data))
    _assert_error(padded, ImageTooLarge, "32.00 MB", "maximum upload size is 32 MB", ALLOWED)


def test_max_bytes_limit_is_configurable() -> None:
    data = _png(_pattern())
    padded = data + b"\x00" * (600 * 1024 - len(data))  # bytes after IEND are ignored by PNG
    _assert_error(padded, ImageTooLarge, "0.59 MB", "maximum upload size is 0.5 MB", max_bytes=512 * 1024)
    assert decode_image(padded, max_bytes=len(padded)).format == "PNG"


def test_non_bytes_input_is_invalid() -> None:
    _assert_error("not bytes", InvalidInput, ALLOWED)  # type: ignore[arg-type]


def test_mutated_files_only_raise_typed_errors() -> None:
    """Fuzz a little: damaged files must decode or raise a DoctorAIError, nothing else."""
    rng = random.Random(42)
    seeds = [
        _png(_pattern(32, 32)),
        _save(Image.fromarray(_pattern(32, 32)), "JPEG"),
        _save(Image.fromarray(_pattern(32, 32)), "TIFF"),
        _save(Image.fromarray(_pattern(32, 32)), "BMP"),
        _save(Image.fromarray(_pattern(32, 32)), "WEBP"),
        _dicom_bytes("MR_small.dcm"),
    ]
    for seed in seeds:
        for _ in range(25):
            data = bytearray(seed)
            for _ in range(rng.randint(1, 8)):
                position = rng.randrange(min(len(data), 400))  # headers are where parsers branch
                data[position] = rng.randrange(256)
            try:
                decoded = decode_image(bytes(data), filename="x.dcm")
            except DoctorAIError:
                continue
            assert decoded.pixels.dtype == np.uint8
            assert decoded.pixels.shape[2] == 3


# --------------------------------------------------------------------------- helpers API


def test_sha256_bytes() -> None:
    assert sha256_bytes(b"abc") == hashlib.sha256(b"abc").hexdigest()


@pytest.mark.parametrize("channels", [None, 3, 4])
def test_to_png_bytes_round_trip(channels: int | None) -> None:
    source = _pattern()
    if channels is None:
        source = source[:, :, 0]
    elif channels == 4:
        source = np.dstack([source, np.full(source.shape[:2], 255, np.uint8)])

    data = to_png_bytes(source)

    assert data.startswith(b"\x89PNG")
    with Image.open(io.BytesIO(data)) as image:
        np.testing.assert_array_equal(np.asarray(image), source)


def test_to_png_bytes_accepts_non_contiguous_views() -> None:
    source = _pattern()
    view = source[:, ::2]
    with Image.open(io.BytesIO(to_png_bytes(view, compress_level=9))) as image:
        np.testing.assert_array_equal(np.asarray(image), view)


def test_to_png_bytes_still_compresses_smooth_images() -> None:
    # The fast settings (Huffman-only deflate) must still shrink a smooth image a lot: the
    # Paeth filter turns gradients into runs of small residuals.
    y, x = np.mgrid[0:224, 0:224]
    smooth = np.dstack([x, y, (x + y) // 2]).astype(np.uint8)
    data = to_png_bytes(smooth)
    assert len(data) < smooth.nbytes / 4
    with Image.open(io.BytesIO(data)) as image:
        np.testing.assert_array_equal(np.asarray(image), smooth)


def test_to_png_bytes_round_trips_through_decode_image() -> None:
    source = _pattern()
    np.testing.assert_array_equal(decode_image(to_png_bytes(source)).pixels, source)


@pytest.mark.parametrize(
    "bad",
    [np.zeros((4, 4), dtype=np.float32), np.zeros((4, 4, 2), dtype=np.uint8), np.zeros((0, 4), dtype=np.uint8)],
)
def test_to_png_bytes_rejects_bad_arrays(bad: np.ndarray) -> None:
    with pytest.raises(ValueError, match="to_png_bytes needs"):
        to_png_bytes(bad)


def test_decoded_image_is_frozen() -> None:
    decoded = decode_image(_png(_pattern()))
    with pytest.raises(AttributeError):
        decoded.format = "JPEG"  # type: ignore[misc]
