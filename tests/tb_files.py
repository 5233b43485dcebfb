"""Reads TensorBoard event files back with tensorboard's own loader (the independent reader)."""

from __future__ import annotations

import dataclasses
import pathlib

import numpy as np


@dataclasses.dataclass
class TensorBoardRun:
    """What one directory of event files holds, by tag."""

    scalars: dict[str, list[tuple[int, float, float]]]  # tag -> [(step, value, wall_time)]
    histograms: dict[str, list]  # tag -> [HistogramEvent(wall_time, step, histogram_value)]
    images: dict[str, list]  # tag -> [ImageEvent(..., encoded_image_string, width, height)]
    texts: dict[str, list[tuple[int, str]]]  # tag -> [(step, text)]
    files: list[pathlib.Path]


def read_tensorboard(logdir) -> TensorBoardRun:
    """Every scalar, histogram, image and text of the event files directly in ``logdir``,
    with no sampling (tensorboard's defaults keep 1 histogram and 4 images per tag)."""
    from tensorboard.backend.event_processing import event_accumulator as ea
    from tensorboard.util import tensor_util

    logdir = pathlib.Path(logdir)
    guidance = {ea.SCALARS: 0, ea.HISTOGRAMS: 0, ea.IMAGES: 0, ea.TENSORS: 0}
    acc = ea.EventAccumulator(str(logdir), size_guidance=guidance)
    acc.Reload()
    tags = acc.Tags()
    scalars = {t: [(e.step, e.value, e.wall_time) for e in acc.Scalars(t)] for t in tags["scalars"]}
    histograms = {t: list(acc.Histograms(t)) for t in tags["histograms"]}
    images = {t: list(acc.Images(t)) for t in tags["images"]}
    texts: dict[str, list[tuple[int, str]]] = {}
    for tag in tags["tensors"]:
        for e in acc.Tensors(tag):
            value = tensor_util.make_ndarray(e.tensor_proto)
            item = np.asarray(value).ravel()[0]
            text = item.decode() if isinstance(item, bytes) else str(item)
            texts.setdefault(tag.removesuffix("/text_summary"), []).append((e.step, text))
    files = sorted(logdir.glob("events.out.tfevents.*"))
    return TensorBoardRun(scalars, histograms, images, texts, files)
