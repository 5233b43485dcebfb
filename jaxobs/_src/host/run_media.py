"""`MediaMethods`: the image and table methods that `Run` inherits."""

from __future__ import annotations

from typing import Any

from jaxobs._src.formats.codec import dumps, write_atomic, write_text_atomic
from jaxobs._src.formats.events import Level
from jaxobs._src.formats.fields import check_step
from jaxobs._src.formats.media import encode_png, media_folder, table_json, to_pixels

__all__ = ["MediaMethods"]


class MediaMethods:
    """`Run.log_image`, `Run.log_images` and `Run.log_table` (one ``media`` record each)."""

    def _media_step(self, step: Any) -> int:
        if step is None:
            step = self.step  # type: ignore[attr-defined]
        return check_step(step)

    def log_image(
        self, name: str, image: Any, step: int | None = None, caption: str | None = None
    ) -> None:
        """Write one image as PNG under ``media/<name>/`` and record it."""
        self.log_images(name, [image], step, None if caption is None else [caption])

    def log_images(
        self,
        name: str,
        images: Any,
        step: int | None = None,
        captions: Any = None,
    ) -> None:
        """Write images as PNG ``media/<name>/<step:08d>-<k>.png`` and record them."""
        folder = media_folder(name)
        step = self._media_step(step)
        images = list(images)
        if captions is not None:
            captions = list(captions)
            if len(captions) != len(images):
                raise ValueError(
                    f"images {name!r}: {len(captions)} captions for {len(images)} images"
                )
        pixels = [to_pixels(im, name) for im in images]
        self._check_open("log_images")  # type: ignore[attr-defined]
        items = []
        for k, px in enumerate(pixels):
            rel = f"{folder}/{step:08d}-{k}.png"
            if self.enabled:  # type: ignore[attr-defined]
                write_atomic(self.dir / rel, encode_png(px))  # type: ignore[attr-defined]
            cap = None if captions is None or captions[k] is None else str(captions[k])
            h, w, c = px.shape
            items.append({"path": rel, "caption": cap, "width": w, "height": h, "channels": c})
        data = {"name": name, "kind": "image", "items": items}
        self._record("log_images", "media", data, Level.BASIC, step)  # type: ignore[attr-defined]

    def log_table(self, name: str, columns: Any, rows: Any, step: int | None = None) -> None:
        """Write a table to ``media/<name>/<step:08d>.table.json`` and record it."""
        folder = media_folder(name)
        step = self._media_step(step)
        table = table_json(name, columns, rows)
        self._check_open("log_table")  # type: ignore[attr-defined]
        rel = f"{folder}/{step:08d}.table.json"
        if self.enabled:  # type: ignore[attr-defined]
            write_text_atomic(self.dir / rel, dumps(table))  # type: ignore[attr-defined]
        data = {
            "name": name,
            "kind": "table",
            "path": rel,
            "columns": table["columns"],
            "n_rows": len(table["rows"]),
        }
        self._record("log_table", "media", data, Level.BASIC, step)  # type: ignore[attr-defined]
