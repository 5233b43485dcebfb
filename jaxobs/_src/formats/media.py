"""Media files of a run: images as PNG (encoded here with zlib) and tables as JSON."""

from __future__ import annotations

import math
import re
import struct
import zlib
from typing import Any

import numpy as np

from jaxobs._src.formats.codec import encode_float

__all__ = ["check_media_name", "encode_png", "media_folder", "table_json", "to_pixels"]

_CHANNELS = (1, 3, 4)
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def check_media_name(name: Any) -> str:
    """``name`` once checked: a non-empty str, no ``..`` component, no leading ``/``."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"media name must be a non-empty string, got {name!r}")
    if name.startswith("/") or any(part == ".." for part in name.split("/")):
        raise ValueError(f"media name {name!r} may not start with '/' or contain '..'")
    return name


def media_folder(name: str) -> str:
    """``media/<name>`` with '/' kept as folders and other unsafe characters as '_'."""
    parts = [_UNSAFE.sub("_", p) for p in check_media_name(name).split("/") if p]
    if not parts or any(p in (".", "..") for p in parts):
        raise ValueError(f"media name {name!r} names no folder")
    return "media/" + "/".join(parts)


def _from_object(image: Any, name: str) -> np.ndarray | None:
    """Pixels of a matplotlib Figure or PIL Image, else None."""
    cls = type(image)
    mods = [c.__module__ for c in cls.__mro__]
    if any(m.startswith("matplotlib") for m in mods) and hasattr(image, "savefig"):
        import io

        buf = io.BytesIO()
        image.savefig(buf, format="png")
        from PIL import Image

        return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGBA"))
    if any(m.startswith("PIL") for m in mods):
        mode = "RGBA" if image.mode in ("RGBA", "LA", "P") else "RGB"
        if image.mode in ("L", "1"):
            mode = "L"
        return np.asarray(image.convert(mode))
    return None


def to_pixels(image: Any, name: str) -> np.ndarray:
    """One image as uint8 HWC (C of 1, 3 or 4).

    Raises:
      ValueError: a shape that is not one image (HW, HWC or CHW) or an empty image.
      TypeError: values that are not bool, integer or float.
    """
    obj = _from_object(image, name)
    x = obj if obj is not None else np.asarray(image)
    if x.ndim == 2:
        x = x[..., None]
    elif x.ndim == 3 and x.shape[-1] not in _CHANNELS and x.shape[0] in _CHANNELS:
        x = np.moveaxis(x, 0, -1)
    if x.ndim != 3 or x.shape[-1] not in _CHANNELS:
        raise ValueError(
            f"image {name!r}: expected shape (H, W), (H, W, C) or (C, H, W) with C in "
            f"{_CHANNELS}, got shape {np.shape(image)}"
        )
    if x.size == 0:
        raise ValueError(f"image {name!r} is empty (shape {x.shape})")
    if x.dtype == np.bool_:
        return x.astype(np.uint8) * 255
    if x.dtype == np.uint8:
        return np.ascontiguousarray(x)
    if np.issubdtype(x.dtype, np.integer):
        return np.clip(x, 0, 255).astype(np.uint8)
    if np.issubdtype(x.dtype, np.floating):
        f = np.nan_to_num(x.astype(np.float64), nan=0.0, posinf=1.0, neginf=0.0)
        return np.round(np.clip(f, 0.0, 1.0) * 255.0).astype(np.uint8)
    raise TypeError(f"image {name!r}: expected bool, integer or float pixels, got {x.dtype}")


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def encode_png(pixels: np.ndarray) -> bytes:
    """PNG bytes of uint8 HWC pixels (gray, RGB or RGBA)."""
    h, w, c = pixels.shape
    color = {1: 0, 3: 2, 4: 6}[c]
    rows = np.concatenate([np.zeros((h, 1), np.uint8), pixels.reshape(h, w * c)], axis=1)
    head = struct.pack(">IIBBBBB", w, h, 8, color, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", head)
        + _chunk(b"IDAT", zlib.compress(rows.tobytes(), 6))
        + _chunk(b"IEND", b"")
    )


def _cell(value: Any, name: str, row: int, column: str) -> Any:
    if value is None or isinstance(value, (str, bool)):
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        v = float(value)
        return v if math.isfinite(v) else encode_float(v)
    raise TypeError(
        f"table {name!r}: cell at row {row}, column {column!r}: expected str, int, float, "
        f"bool or None, got {type(value).__name__}"
    )


def table_json(name: str, columns: Any, rows: Any) -> dict[str, Any]:
    """``{"columns": [...], "rows": [[...], ...]}`` once the cells are checked."""
    if isinstance(columns, str) or not all(isinstance(c, str) for c in columns):
        raise TypeError(f"table {name!r}: columns must be a list of strings, got {columns!r}")
    cols = list(columns)
    out = []
    for i, row in enumerate(rows):
        row = list(row)
        if len(row) != len(cols):
            raise ValueError(f"table {name!r}: row {i} has {len(row)} cells, expected {len(cols)}")
        out.append([_cell(v, name, i, cols[j]) for j, v in enumerate(row)])
    return {"columns": cols, "rows": out}
