"""Decoding and fingerprinting of images (validation before anything is stored)."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from cloud.errors import InvalidInput

#: PIL format -> media type of the formats we accept as samples
MEDIA_TYPES = {
    "JPEG": "image/jpeg",
    "MPO": "image/jpeg",
    "PNG": "image/png",
    "WEBP": "image/webp",
    "BMP": "image/bmp",
    "GIF": "image/gif",
    "TIFF": "image/tiff",
}
#: media type -> file extension used by exports
EXTENSIONS = {
    "image/jpeg": ".jpg",
    "image/png": ".png",
    "image/webp": ".webp",
    "image/bmp": ".bmp",
    "image/gif": ".gif",
    "image/tiff": ".tif",
}
IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
)
VIDEO_SUFFIXES = frozenset(
    {".avi", ".mp4", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".ts"}
)
#: images above this many pixels are refused (decompression bombs)
MAX_PIXELS = 100_000_000


class CorruptImage(InvalidInput):
    """An image that cannot be decoded completely."""


@dataclass(frozen=True, slots=True)
class ImageInfo:
    media_type: str
    width: int
    height: int
    phash: str  # 64-bit dHash, 16 hex digits


def dhash_gray(gray: np.ndarray) -> str:
    """64-bit difference hash of a grayscale image (9x8 area resize)."""
    small = cv2.resize(gray, (9, 8), interpolation=cv2.INTER_AREA)
    bits = (small[:, 1:] > small[:, :-1]).flatten()
    value = 0
    for b in bits:
        value = (value << 1) | int(b)
    return f"{value:016x}"


def dhash_bgr(frame: np.ndarray) -> str:
    gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY) if frame.ndim == 3 else frame
    return dhash_gray(gray)


def hamming(a: str, b: str) -> int:
    return (int(a, 16) ^ int(b, 16)).bit_count()


def probe_image(data: bytes, name: str) -> ImageInfo:
    """Decode ``data`` completely (truncation is an error) and fingerprint it.

    Raises ``CorruptImage`` naming ``name`` when the bytes are not a complete
    image of a supported format.
    """
    if not data:
        raise CorruptImage(f"{name}: empty file", field="file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            fmt = img.format or ""
            if fmt not in MEDIA_TYPES:
                raise CorruptImage(f"{name}: unsupported image format {fmt or '?'}", field="file")
            width, height = img.size
            if width <= 0 or height <= 0 or width * height > MAX_PIXELS:
                raise CorruptImage(
                    f"{name}: unreasonable image size {width}x{height}", field="file"
                )
            if fmt == "JPEG":
                img.draft("L", (max(width // 8, 9), max(height // 8, 8)))
            img.load()  # decodes everything: raises on truncated data
            if fmt == "PNG" and b"IEND\xaeB`\x82" not in data[-64:]:
                raise CorruptImage(f"{name}: truncated PNG (no IEND chunk)", field="file")
            gray = np.asarray(img.convert("L"))
    except CorruptImage:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise CorruptImage(f"{name}: not a readable image", field="file") from None
    except Exception as e:  # noqa: BLE001 - decoders raise many kinds on hostile bytes
        raise CorruptImage(f"{name}: corrupt or truncated image ({e})", field="file") from None
    return ImageInfo(MEDIA_TYPES[fmt], width, height, dhash_gray(gray))
