"""Image files to uint8 pixels: every format Pillow reads, decoded one faithful way.

- Formats: every file suffix Pillow registers a reader for (IMAGE_SUFFIXES), less the stub
  formats that need a handler Pillow lacks. A multi-frame file (GIF, TIFF, WebP) gives its
  first frame.
- Orientation: the EXIF Orientation tag is applied (ImageOps.exif_transpose), as viewers do.
- Bit depth: 16-bit samples (modes I;16*) keep their top 8 bits (>> 8). Pillow's 32-bit mode I
  carries 16-bit data for PGM/PPM and the like, so it is read as 0..65535 unless a value is
  larger, then as the non-negative int32 range (>> 23). Float samples (mode F) are taken as
  0..1. Negative values and NaN become 0.
- Transparency (LA, PA, RGBA, or a palette or colour-key transparency) is composited over
  BACKGROUND, white, the usual backdrop of product shots: an object drawn only in alpha stays
  visible.
- Colour: CMYK, YCbCr and Pillow's other colour modes go through its conversion to RGB;
  channels=1 is ITU-R 601 luma (Pillow's L), channels=3 repeats gray into R, G and B.
- Size: a file whose header promises more than PIL.Image.MAX_IMAGE_PIXELS pixels (Pillow's
  default, about 89 million) is refused before any pixel is decoded (decompression bombs).
  The rest are stored at image_size x image_size: the shorter side resized to image_size
  (bilinear, antialiased), then the centre cropped to a square (ImageOps.fit: the crop is taken
  first and resampled once). A JPEG larger than twice image_size is decoded at 1/2, 1/4 or 1/8
  scale first (libjpeg's DCT scaling, Image.draft), never below image_size: 3-10x faster.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps

from prefine.errors import PrefineError

BACKGROUND = 255  # white, per channel: what transparent pixels become
ORIENTATION = 0x0112  # the EXIF tag
TURNED = (5, 6, 7, 8)  # orientations that swap width and height


_EXTENSIONS = Image.registered_extensions()  # suffix -> format; loads every plugin first


def _readable_suffixes() -> frozenset[str]:
    """Suffixes whose format Pillow opens itself (stub formats need an outside handler)."""
    readers = {
        name for name, (factory, _) in Image.OPEN.items()
        if not (isinstance(factory, type) and issubclass(factory, ImageFile.StubImageFile))
    }  # fmt: skip
    return frozenset(ext for ext, name in _EXTENSIONS.items() if name in readers)


IMAGE_SUFFIXES = _readable_suffixes()
_BY_SUFFIX = {ext: (name, *(other for other in Image.ID if other != name))
              for ext, name in _EXTENSIONS.items()}


def decode_image(path: Path, image_size: int, channels: int) -> np.ndarray:
    """One file as uint8 [C, S, S] by the module's rules; any failure names the file."""
    return decode_sized(path, image_size, channels)[0]


def decode_sized(path: Path, image_size: int, channels: int) -> tuple[np.ndarray, tuple[int, int]]:
    """decode_image, and the image's (width, height) as shown (after EXIF orientation)."""
    try:
        with _open(path) as opened:
            shown = _shown_size(opened)
            opened.draft(None, (image_size, image_size))  # JPEG only: decode no larger than needed
            ImageOps.exif_transpose(opened, in_place=True)  # in place: a copy costs ~3% of a decode
            opened.load()
            flat = _flatten(_to_8bit(opened))
            mode = "L" if channels == 1 else "RGB"
            img = flat if flat.mode == mode else flat.convert(mode)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise PrefineError(f"{path}: refused before decoding: {exc}") from None
    except (OSError, ValueError, EOFError) as exc:
        raise PrefineError(f"{path}: not a readable image ({exc})") from None
    if img.size != (image_size, image_size):
        img = ImageOps.fit(img, (image_size, image_size), Image.Resampling.BILINEAR)
    pixels = np.asarray(img, np.uint8)
    return (pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)), shown


def _shown_size(img: Image.Image) -> tuple[int, int]:
    """(width, height) as a viewer shows it: swapped when EXIF says the image is turned 90 degrees."""
    width, height = img.size
    return (height, width) if img.getexif().get(ORIENTATION, 1) in TURNED else (width, height)


def _open(path: Path) -> Image.Image:
    """Image.open (header only), with Pillow's bomb warning made an error so no pixel is decoded.
    The format its suffix names is tried first: Pillow otherwise tries readers in registration
    order, and for a JPEG three others parse its header first (4% of a decode)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        return Image.open(path, formats=_BY_SUFFIX.get(Path(path).suffix.lower()))


def _to_8bit(img: Image.Image) -> Image.Image:
    """High-bit-depth gray (I;16*, I, F) scaled to L; every other mode has 8-bit samples already."""
    if img.mode == "F":
        values = np.nan_to_num(np.asarray(img), nan=0.0).clip(0.0, 1.0)
        return Image.fromarray(np.rint(values * 255).astype(np.uint8))
    if img.mode != "I" and not img.mode.startswith("I;16"):
        return img
    values = np.asarray(img).astype(np.int64).clip(0, None)
    bits = 16 if img.mode != "I" or values.max(initial=0) <= 0xFFFF else 31
    return Image.fromarray((values >> (bits - 8)).astype(np.uint8))


def _flatten(img: Image.Image) -> Image.Image:
    """Transparency composited over BACKGROUND (rounded to nearest); opaque images as they are."""
    if not img.has_transparency_data:
        return img
    rgba = np.asarray(img.convert("RGBA"), np.uint32)
    alpha = rgba[..., 3:]
    rgb = (rgba[..., :3] * alpha + BACKGROUND * (255 - alpha) + 127) // 255
    return Image.fromarray(rgb.astype(np.uint8))
