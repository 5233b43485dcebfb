"""`Run.log_image`, `Run.log_images`, `Run.log_table`: PNGs read back with PIL, JSON with
json, compared to NumPy references."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

import jaxobs
from jaxobs._src.formats.rundir import read_run


def _run(tmp_path):
    return jaxobs.init(project="p", dir=tmp_path)


def _events(run):
    lines = (run.dir / "events.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def _png(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im)


def _media(run):
    return [e for e in _events(run) if e["event"] == "media"]


RNG = np.random.default_rng(0)
U8 = RNG.integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
CASES = {
    "hw_u8": (U8[..., 0], U8[..., 0]),
    "hwc1": (U8[..., :1], U8[..., 0]),
    "hwc3": (U8, U8),
    "hwc4": (np.concatenate([U8, U8[..., :1]], -1), np.concatenate([U8, U8[..., :1]], -1)),
    "chw3": (np.moveaxis(U8, -1, 0), U8),
    "float": (U8 / 255.0, U8),
    "bool": (U8[..., 0] > 128, (U8[..., 0] > 128).astype(np.uint8) * 255),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_image_layouts_round_trip(tmp_path, case):
    image, expected = CASES[case]
    run = _run(tmp_path)
    run.log_image("imgs/" + case, image, step=3, caption="c")
    run.finish()
    (record,) = _media(run)
    assert record["step"] == 3
    item = record["items"][0]
    assert item["path"] == f"media/imgs/{case}/00000003-0.png"
    got = _png(run.dir / item["path"])
    assert np.array_equal(got, expected)
    assert (item["width"], item["height"], item["caption"]) == (7, 5, "c")
    assert item["channels"] == (1 if expected.ndim == 2 else expected.shape[-1])


def test_float_clipped_nan_black_and_jax(tmp_path):
    import jax.numpy as jnp

    x = np.array([[0.0, 0.5, 1.5], [-1.0, np.nan, 1.0]])
    run = _run(tmp_path)
    run.log_images("f", [x, jnp.asarray(x)], step=0, captions=["a", None])
    run.finish()
    (record,) = _media(run)
    expected = np.round(np.clip(np.nan_to_num(x), 0, 1) * 255).astype(np.uint8)
    for k, item in enumerate(record["items"]):
        assert item["path"] == f"media/f/00000000-{k}.png"
        assert np.array_equal(_png(run.dir / item["path"]), expected)
    assert [i["caption"] for i in record["items"]] == ["a", None]
    assert any(e["event"] == "media" for e in read_run(run.dir).events)


def test_table_round_trip(tmp_path):
    run = _run(tmp_path)
    rows = [["a", 1, 0.5, True], [None, 2, float("nan"), False], ["c", 3, float("inf"), True]]
    run.log_table("my table", ["s", "i", "f", "b"], rows, step=2)
    run.finish()
    (record,) = _media(run)
    path = "media/my_table/00000002.table.json"
    assert {k: record[k] for k in ("name", "kind", "path", "columns", "n_rows")} == {
        "name": "my table",
        "kind": "table",
        "path": path,
        "columns": ["s", "i", "f", "b"],
        "n_rows": 3,
    }
    table = json.loads((run.dir / path).read_text())
    assert table["rows"][1] == [None, 2, "NaN", False]
    assert table["rows"][2][2] == "Infinity"
    assert table["rows"][0] == ["a", 1, 0.5, True]


@pytest.mark.parametrize(
    "call",
    [
        lambda r: r.log_image("bad_shape", np.zeros((2, 3, 5, 6))),
        lambda r: r.log_image("bad_dtype", np.zeros((2, 3), dtype=complex)),
        lambda r: r.log_table("bad_cell", ["x"], [[object()]]),
    ],
)
def test_bad_input_names_the_media(tmp_path, call):
    run = _run(tmp_path)
    with pytest.raises((TypeError, ValueError), match="bad_"):
        call(run)
    run.finish()


@pytest.mark.parametrize("name", ["", "../x", "/abs", "a/../b"])
def test_bad_names(tmp_path, name):
    run = _run(tmp_path)
    with pytest.raises(ValueError):
        run.log_image(name, np.zeros((2, 2), np.uint8))
    run.finish()


def test_matplotlib_figure(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(2, 1.5), dpi=50)
    run = _run(tmp_path)
    run.log_image("fig", fig, step=1)
    run.finish()
    plt.close(fig)
    item = _media(run)[0]["items"][0]
    assert _png(run.dir / item["path"]).shape[:2] == (75, 100)
    assert (item["width"], item["height"]) == (100, 75)


def test_disabled_run_writes_nothing_but_checks(tmp_path, monkeypatch):
    from jaxobs._src.host import environment as _env

    monkeypatch.setattr(_env, "jax_state", lambda: {"process_index": 1, "process_count": 2})
    run = _run(tmp_path)
    assert not run.enabled
    run.log_image("img", np.zeros((2, 2), np.uint8), step=0)
    run.log_table("t", ["a"], [[1]], step=0)
    with pytest.raises(ValueError, match="bad_shape"):
        run.log_image("bad_shape", np.zeros((2, 3, 5, 6)))
    run.finish()
    assert not list(tmp_path.rglob("*.png")) and not list(tmp_path.rglob("*.table.json"))
