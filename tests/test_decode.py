"""Decoding on small files Pillow writes: each mode lands on known 8-bit pixel values."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from prefine.data.decode import IMAGE_SUFFIXES, decode_image
from prefine.errors import PrefineError

RAMP = np.arange(256, dtype=np.uint8).reshape(16, 16)  # every 8-bit value once


def _save(path: Path, img: Image.Image, **options: object) -> Path:
    img.save(path, **options)
    return path


@pytest.mark.parametrize("suffix", [".png", ".tif", ".pgm"])  # I;16, I;16, and I (PGM)
def test_16_bit_gray_keeps_its_top_byte(tmp_path, suffix):
    wide = RAMP.astype(np.uint16) << 8 | (255 - RAMP)  # top byte the ramp, low byte noise
    path = _save(tmp_path / f"g16{suffix}", Image.fromarray(wide))
    assert np.array_equal(decode_image(path, 16, 1)[0], RAMP)  # not clipped to {0..255, 255}
    assert np.array_equal(decode_image(path, 16, 3), np.stack([RAMP] * 3))


def test_32_bit_int_and_float_scale_to_8_bits(tmp_path):
    wide = Image.fromarray(RAMP.astype(np.int32) << 23)  # mode I beyond 16 bits: int31 range
    assert np.array_equal(decode_image(_save(tmp_path / "i32.tif", wide), 16, 1)[0], RAMP)
    floats = (RAMP / 255).astype(np.float32)
    floats[0, :2] = [np.nan, -1.0]  # NaN and negatives become 0, above 1 becomes 255
    floats[15, 15] = 7.0
    got = decode_image(_save(tmp_path / "f.tif", Image.fromarray(floats)), 16, 1)[0]
    assert np.array_equal(got, np.where(np.arange(256).reshape(16, 16) < 2, 0, RAMP))


def test_alpha_is_composited_on_white(tmp_path):
    shape_in_alpha = np.zeros((16, 16, 4), np.uint8)
    shape_in_alpha[..., 3] = RAMP  # black RGB everywhere: the picture is in alpha only
    path = _save(tmp_path / "a.png", Image.fromarray(shape_in_alpha))
    assert np.array_equal(decode_image(path, 16, 1)[0], 255 - RAMP)
    assert np.array_equal(decode_image(path, 16, 3), np.stack([255 - RAMP] * 3))
    gray_alpha = Image.fromarray(np.stack([np.zeros_like(RAMP), RAMP], axis=-1), "LA")
    assert np.array_equal(decode_image(_save(tmp_path / "la.png", gray_alpha), 16, 1)[0], 255 - RAMP)
    half_red = Image.new("RGBA", (8, 8), (255, 0, 0, 128))
    assert decode_image(_save(tmp_path / "r.png", half_red), 8, 3)[:, 0, 0].tolist() == [255, 127, 127]


@pytest.mark.parametrize("suffix", [".png", ".gif"])
def test_palette_with_a_transparent_entry(tmp_path, suffix):
    img = Image.fromarray(np.array([[0, 1], [2, 3]], np.uint8), "P")
    img.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0])  # red, green, blue, black
    path = _save(tmp_path / f"p{suffix}", img, transparency=3)  # black entry is transparent
    rgb = decode_image(path, 2, 3)
    assert rgb.transpose(1, 2, 0).reshape(4, 3).tolist() == [
        [255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255]]  # fmt: skip
    assert decode_image(path, 2, 1)[0].tolist() == [[76, 150], [29, 255]]  # ITU-R 601 luma


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    img = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # red
    img.paste((0, 0, 0, 128), (0, 8, 16, 16))  # half black: mid gray
    rgb = decode_image(_save(tmp_path / "c.jpg", img, quality=100), 16, 3)
    assert rgb[:, :8].reshape(3, -1).T.tolist() == [[255, 0, 0]] * 128
    assert rgb[:, 8:].reshape(3, -1).T.tolist() == [[127, 127, 127]] * 128


def test_exif_orientation_is_applied(tmp_path):
    pixels = np.zeros((16, 16), np.uint8)
    pixels[:8, :8] = 255  # top-left block as stored
    upright = _save(tmp_path / "plain.jpg", Image.fromarray(pixels), quality=95)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    turned = _save(tmp_path / "turned.jpg", Image.fromarray(pixels), quality=95, exif=exif)
    stored = decode_image(upright, 16, 1)[0]
    shown = decode_image(turned, 16, 1)[0]
    assert np.array_equal(shown, np.rot90(stored, k=-1))
    assert shown[:8, 8:].min() > 200 and shown[:8, :8].max() < 50  # the block moved top-right


def _png_claiming(width: int, height: int) -> bytes:
    """A valid PNG header promising width x height gray pixels, with a few bytes of body."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit gray
    body = chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + body


@pytest.mark.parametrize("side", [10_000, 40_000])  # over Pillow's warning, over its error limit
def test_decompression_bomb_refused_from_its_header(tmp_path, side):
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_claiming(side, side))
    expected = rf"bomb.png: refused before decoding: Image size \({side * side} pixels\) exceeds limit"
    with pytest.raises(PrefineError, match=expected):
        decode_image(path, 8, 1)


def test_suffixes_come_from_pillows_readers():
    assert {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".pgm"} <= IMAGE_SUFFIXES
    assert not {".pdf", ".h5", ".txt", ""} & IMAGE_SUFFIXES  # write-only, stub, not images


@pytest.mark.parametrize("suffix", [".jpg", ".PNG", ".unknown"])
def test_a_file_whose_suffix_names_another_format_still_decodes(tmp_path, suffix):
    """The suffix only orders the readers tried: a PNG saved as .jpg (or upper case, or no known
    suffix) decodes to the same pixels as the .png it is."""
    png = _save(tmp_path / "ramp.png", Image.fromarray(RAMP))
    misnamed = tmp_path / f"ramp{suffix}"
    misnamed.write_bytes(png.read_bytes())
    assert np.array_equal(decode_image(misnamed, 16, 1), decode_image(png, 16, 1))
