"""Images as text, for terminals: `ascii_image`, and `looks_like_images` for batches.

A terminal character cell is about twice as tall as it is wide, so `ascii_image` gives each
character one block of ``2k x k`` pixels (rows x columns) and draws the block's mean
luminance with a ramp of characters from dark to light. Nothing here imports JAX: a JAX
array is read with `numpy.asarray` (one transfer).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["RAMP", "ascii_image", "looks_like_images", "to_gray"]

RAMP = " .:-=+*#%@"  # dark to light

_CHANNELS = (1, 3, 4)
_LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R BT.601


def _layout(shape: tuple[int, ...]) -> str:
    """``"HW"``, ``"HWC"`` or ``"CHW"`` for one image's shape (channels last wins a tie)."""
    if len(shape) == 2:
        return "HW"
    if len(shape) == 3:
        if shape[-1] in _CHANNELS:
            return "HWC"
        if shape[0] in _CHANNELS:
            return "CHW"
    raise ValueError(
        f"ascii_image: expected one image of shape (H, W), (H, W, C) or (C, H, W) with C in "
        f"{_CHANNELS}, got shape {shape}"
    )


def to_gray(image: Any) -> np.ndarray:
    """One image (HW, HWC or CHW; uint8 or float; NumPy or JAX) as float luminance in [0, 1].

    Integer images are divided by 255; float images are scaled from their own finite minimum
    and maximum (a constant image is mid-grey); non-finite pixels are black.

    Raises:
      ValueError: a shape that is not one image, or an empty image.
      TypeError: values that are not real numbers.
    """
    x = np.asarray(image)
    layout = _layout(x.shape)
    if x.size == 0:
        raise ValueError(f"ascii_image: the image is empty (shape {x.shape})")
    if x.dtype == np.bool_:
        x = x.astype(np.float64)
    elif not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        raise TypeError(f"ascii_image: expected real pixel values, got dtype {x.dtype}")
    if layout == "CHW":
        x = np.moveaxis(x, 0, -1)
    if x.ndim == 3:
        channels = x.shape[-1]
        x = x[..., 0] if channels == 1 else x[..., :3].astype(np.float64) @ _LUMA
    x = x.astype(np.float64)
    if np.issubdtype(np.asarray(image).dtype, np.integer):
        return np.clip(x / 255.0, 0.0, 1.0)
    finite = np.isfinite(x)
    if not finite.any():
        return np.zeros_like(x)
    low, high = float(x[finite].min()), float(x[finite].max())
    gray = np.full_like(x, 0.5) if high == low else (x - low) / (high - low)
    return np.where(finite, gray, 0.0)


def ascii_image(image: Any, width: int = 64, ramp: str = RAMP, invert: bool = False) -> str:
    """One image drawn with characters, ``width`` columns wide at most.

    Args:
      image: HW, HWC or CHW (C of 1, 3 or 4); uint8 or float; a NumPy or JAX array.
      width: The most characters per line (an image narrower than this keeps its width).
      ramp: The characters from dark to light (at least two).
      invert: Light to dark instead (for a light terminal background).

    Returns:
      The lines joined with newlines (no trailing newline).

    Raises:
      ValueError: not one image, a ``width`` below 1, or a ramp of fewer than two characters.
    """
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise ValueError(f"ascii_image: width must be an integer >= 1, got {width!r}")
    if not isinstance(ramp, str) or len(ramp) < 2:
        raise ValueError(
            f"ascii_image: ramp must be a string of at least 2 characters, got {ramp!r}"
        )
    gray = to_gray(image)
    h, w = gray.shape
    k = max(1, -(-w // width))  # columns per character (ceil)
    rows, cols = max(1, h // (2 * k)), max(1, w // k)
    # Block means over (2k x k) blocks (a short image keeps one row of blocks).
    bh = h // rows
    cropped = gray[: rows * bh, : cols * k]
    blocks = cropped.reshape(rows, bh, cols, k).mean(axis=(1, 3))
    if invert:
        blocks = 1.0 - blocks
    index = np.minimum((blocks * len(ramp)).astype(int), len(ramp) - 1)
    return "\n".join("".join(ramp[i] for i in row) for row in index)


def looks_like_images(batch: Any) -> bool:
    """Whether ``batch`` looks like a batch of images: NHW, NHWC or NCHW with C in 1, 3, 4,
    both sides at least 8 pixels, and values like pixels (uint8, or finite floats within
    [0, 1], [-1, 1] or [0, 255])."""
    x = np.asarray(batch)
    if x.ndim not in (3, 4) or x.shape[0] < 1:
        return False
    try:
        layout = _layout(x.shape[1:])
    except ValueError:
        return False
    h, w = (x.shape[1], x.shape[2]) if layout != "CHW" else (x.shape[2], x.shape[3])
    if min(h, w) < 8:
        return False
    if x.dtype == np.uint8:
        return True
    if not np.issubdtype(x.dtype, np.floating) or not np.isfinite(x).all():
        return False
    low, high = float(x.min()), float(x.max())
    tol = 1e-3
    return any(low >= a - tol and high <= b + tol for a, b in ((0, 1), (-1, 1), (0, 255)))
