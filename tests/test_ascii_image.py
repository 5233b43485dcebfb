"""jaxobs.ascii_image and looks_like_images, against NumPy block means and known images."""

import numpy as np
import pytest

import jaxobs
from jaxobs._src.analysis.ascii_image import RAMP, to_gray


def _reference(gray: np.ndarray, width: int, ramp: str = RAMP) -> list[str]:
    """Block means by explicit loops (the independent reference)."""
    h, w = gray.shape
    k = max(1, int(np.ceil(w / width)))
    rows, cols = max(1, h // (2 * k)), max(1, w // k)
    bh = h // rows
    lines = []
    for r in range(rows):
        line = ""
        for c in range(cols):
            mean = gray[r * bh : (r + 1) * bh, c * k : (c + 1) * k].mean()
            line += ramp[min(int(mean * len(ramp)), len(ramp) - 1)]
        lines.append(line)
    return lines


def test_a_horizontal_gradient_goes_from_dark_to_light():
    image = np.tile(np.linspace(0.0, 1.0, 40), (20, 1))
    lines = jaxobs.ascii_image(image, width=40).split("\n")
    assert len(lines) == 10 and all(len(line) == 40 for line in lines)
    assert lines[0][0] == RAMP[0] and lines[0][-1] == RAMP[-1]
    order = [RAMP.index(ch) for ch in lines[0]]
    assert order == sorted(order)


@pytest.mark.parametrize("width", [7, 16, 64])
def test_block_means_match_a_loop_reference(width):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(37, 53), dtype=np.uint8)
    got = jaxobs.ascii_image(image, width=width).split("\n")
    assert got == _reference(image / 255.0, width)
    assert max(len(line) for line in got) <= width


def test_layouts_and_dtypes_agree():
    rng = np.random.default_rng(1)
    hwc = rng.random((24, 32, 3))
    chw = np.moveaxis(hwc, -1, 0)
    assert jaxobs.ascii_image(hwc, width=16) == jaxobs.ascii_image(chw, width=16)
    luma = hwc @ np.array([0.299, 0.587, 0.114])
    want = (luma - luma.min()) / (luma.max() - luma.min())
    np.testing.assert_allclose(to_gray(hwc), want)
    as_uint8 = (hwc * 255).astype(np.uint8)
    np.testing.assert_allclose(to_gray(as_uint8[..., :1]), as_uint8[..., 0] / 255.0)


def test_a_jax_array_and_non_finite_pixels():
    import jax.numpy as jnp

    image = jnp.ones((16, 16)).at[0, 0].set(jnp.nan).at[8:, :].set(0.0)
    lines = jaxobs.ascii_image(image, width=16).split("\n")
    assert len(lines) == 8 and all(len(line) == 16 for line in lines)
    # The top-left block holds the NaN (drawn black, 0) and a 1: mean 0.5.
    assert lines[0] == RAMP[int(0.5 * len(RAMP))] + RAMP[-1] * 15
    assert all(line == RAMP[-1] * 16 for line in lines[1:4])
    assert all(line == RAMP[0] * 16 for line in lines[4:])


def test_invert_and_constant_images():
    image = np.zeros((8, 8), np.uint8)
    assert set(jaxobs.ascii_image(image, width=8)) <= {RAMP[0], "\n"}
    assert set(jaxobs.ascii_image(image, width=8, invert=True)) <= {RAMP[-1], "\n"}
    grey = jaxobs.ascii_image(np.full((8, 8), 3.0), width=8)  # constant float: mid-grey
    assert set(grey) <= {RAMP[len(RAMP) // 2], "\n"}


@pytest.mark.parametrize(
    ("bad", "kwargs", "match"),
    [
        (np.zeros(10), {}, r"shape \(10,\)"),
        (np.zeros((5, 5, 7)), {}, r"shape \(5, 5, 7\)"),
        (np.zeros((4, 4)), {"width": 0}, "width"),
        (np.zeros((4, 4)), {"ramp": "#"}, "ramp"),
        (np.zeros((0, 4)), {}, "empty"),
    ],
)
def test_bad_input_names_what_is_wrong(bad, kwargs, match):
    with pytest.raises(ValueError, match=match):
        jaxobs.ascii_image(bad, **kwargs)
    with pytest.raises(TypeError, match="dtype"):
        jaxobs.ascii_image(np.array([["a", "b"], ["c", "d"]]))


def test_looks_like_images():
    rng = np.random.default_rng(2)
    assert jaxobs.looks_like_images(rng.integers(0, 256, (4, 28, 28), dtype=np.uint8))
    assert jaxobs.looks_like_images(rng.random((4, 32, 32, 3)))
    assert jaxobs.looks_like_images(rng.uniform(-1, 1, (2, 3, 16, 16)))
    assert not jaxobs.looks_like_images(rng.normal(size=(4, 32, 32)) * 100)  # not pixel-like
    assert not jaxobs.looks_like_images(rng.random((4, 32)))  # features, not images
    assert not jaxobs.looks_like_images(rng.random((4, 4, 4)))  # too small
    assert not jaxobs.looks_like_images(np.full((2, 16, 16), np.nan))
