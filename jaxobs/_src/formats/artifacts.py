"""Two small extras kept out of the headline API (public as `jaxobs.artifacts`).

- `ConfusionMatrix`: a classification confusion matrix and its JSON file format
  (``"format": "jaxobs.confusion_matrix"``, the TrainLog's ``schema_version``), read with the
  shared field reader and version check.
- `LogDestination`: where a command-line routine sends its TrainLog (a JSON path, or
  nowhere), parsed from a ``--log`` argument.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from jaxobs._src.formats.codec import (
    PathLike,
    dumps,
    encode_tree,
    load_json_file,
    write_text_atomic,
)
from jaxobs._src.formats.errors import TrainLogError
from jaxobs._src.formats.experiment import ExperimentLog
from jaxobs._src.formats.fields import (
    CONFUSION_FORMAT,
    REQUIRED,
    FieldReader,
    check_format,
    check_version,
)
from jaxobs._src.formats.trainlog import SCHEMA_VERSION, JsonEq, TrainLog

__all__ = ["CONFUSION_FORMAT", "ConfusionMatrix", "LogDestination"]


@dataclasses.dataclass(frozen=True)
class LogDestination:
    """Where a training routine sends its log: a JSON path, or nowhere.

    Example:
      >>> LogDestination.parse("off").enabled
      False
      >>> LogDestination.parse("out/log.json").path
      PosixPath('out/log.json')
    """

    path: pathlib.Path | None = None

    DISABLED_WORDS: ClassVar[frozenset[str]] = frozenset(
        {"false", "off", "none", "no", "disabled", "0"}
    )

    @classmethod
    def disabled(cls) -> LogDestination:
        return cls(None)

    @classmethod
    def json(cls, path: PathLike) -> LogDestination:
        return cls(pathlib.Path(path))

    @classmethod
    def parse(cls, value: str) -> LogDestination:
        """Parse a command-line value: false/off/none/no/disabled/0 (any case) disable logging;
        anything else is a JSON path."""
        if not isinstance(value, str):
            raise TypeError(f"log destination must be a string, got {type(value).__name__}")
        text = value.strip()
        if not text:
            raise ValueError("empty log destination: give a JSON path, or 'off' to disable")
        return cls.disabled() if text.lower() in cls.DISABLED_WORDS else cls.json(text)

    @classmethod
    def parse_optional(cls, value: str | None, default: PathLike) -> LogDestination:
        """Like `parse`, with ``default`` as the path when no value is given."""
        return cls.json(default) if value is None else cls.parse(value)

    @property
    def enabled(self) -> bool:
        return self.path is not None

    def path_or(self, default: PathLike) -> pathlib.Path:
        """The JSON path, or ``default`` when logging is disabled."""
        return self.path if self.path is not None else pathlib.Path(default)

    def write(self, log: TrainLog | ExperimentLog) -> pathlib.Path | None:
        """Write ``log`` here; a disabled destination writes nothing and returns None."""
        if self.path is None:
            return None
        return log.write_json(self.path)

    def __str__(self) -> str:
        return "disabled" if self.path is None else str(self.path)


@dataclasses.dataclass(eq=False)
class ConfusionMatrix(JsonEq):
    """Counts of (true class, predicted class) pairs; rows are true classes.

    Example:
      >>> cm = ConfusionMatrix.from_predictions([0, 1, 1], [0, 1, 0], labels=["cat", "dog"])
      >>> cm.matrix
      [[1, 0], [1, 1]]
    """

    labels: list[str]
    matrix: list[list[int]]
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        self.labels = [str(label) for label in self.labels]
        n = len(self.labels)
        rows = [list(row) for row in self.matrix]
        if len(rows) != n or any(len(row) != n for row in rows):
            shape = (len(rows), *sorted({len(row) for row in rows}))
            raise ValueError(f"confusion matrix must be {n}x{n} for {n} labels, got rows {shape}")
        for i, row in enumerate(rows):
            for j, v in enumerate(row):
                if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
                    raise ValueError(
                        f"confusion matrix [{i}][{j}]: expected a count >= 0, got {v!r}"
                    )
        self.matrix = [[int(v) for v in row] for row in rows]

    @classmethod
    def from_predictions(
        cls, y_true: Any, y_pred: Any, labels: Sequence[str] | int | None = None
    ) -> ConfusionMatrix:
        """Count predictions. ``labels``: names, a number of classes, or inferred."""
        t_raw, p_raw = np.asarray(y_true), np.asarray(y_pred)
        if t_raw.shape != p_raw.shape:
            raise ValueError(f"y_true has shape {t_raw.shape} but y_pred has shape {p_raw.shape}")
        for what, arr in (("y_true", t_raw), ("y_pred", p_raw)):
            if arr.size and (arr.dtype.kind not in "biuf" or np.any(arr != np.round(arr))):
                raise ValueError(f"{what} must hold integer class indices, got {arr.dtype} values")
        t, p = t_raw.astype(np.int64).ravel(), p_raw.astype(np.int64).ravel()
        if labels is None:
            n = int(max(t.max(initial=-1), p.max(initial=-1)) + 1)
            names = [str(i) for i in range(n)]
        elif isinstance(labels, int):
            names = [str(i) for i in range(labels)]
        else:
            names = [str(x) for x in labels]
        n = len(names)
        if t.size and (min(t.min(), p.min()) < 0 or max(t.max(), p.max()) >= n):
            raise ValueError(f"class indices must lie in [0, {n}) for {n} labels")
        counts = np.bincount(t * n + p, minlength=n * n).reshape(n, n)
        return cls(names, counts.tolist())

    @property
    def total(self) -> int:
        return sum(map(sum, self.matrix))

    @property
    def accuracy(self) -> float:
        """Fraction on the diagonal (NaN for an empty matrix)."""
        total = self.total
        return (
            sum(self.matrix[i][i] for i in range(len(self.labels))) / total if total else math.nan
        )

    def to_json(self) -> dict[str, Any]:
        out = {
            "schema_version": SCHEMA_VERSION,
            "format": CONFUSION_FORMAT,
            "labels": list(self.labels),
            "matrix": [list(r) for r in self.matrix],
        }
        out.update(encode_tree(self.extra))
        return out

    @classmethod
    def from_json(cls, data: Any, source: str = "<data>") -> ConfusionMatrix:
        check_version(data, source, "confusion matrix", current=SCHEMA_VERSION)
        check_format(
            data, source, CONFUSION_FORMAT, what="a confusion matrix", default=CONFUSION_FORMAT
        )
        r = FieldReader(data, "", source)
        r.seen.update({"schema_version", "format"})
        labels = r.strs("labels")
        matrix = r.get("matrix", list, REQUIRED, "a list of rows")
        for i, row in enumerate(matrix):
            if not isinstance(row, list):
                raise r.fail(f"matrix[{i}]", "a row (a list of counts)", row)
        try:
            return cls(labels, matrix, extra=r.rest())
        except (TypeError, ValueError) as e:
            raise TrainLogError(f"{source}: {e}") from None

    def write_json(self, path: PathLike) -> pathlib.Path:
        return write_text_atomic(path, dumps(self.to_json()) + "\n")

    @classmethod
    def read_json(cls, path: PathLike) -> ConfusionMatrix:
        data = load_json_file(path, expected="a jaxobs confusion matrix (JSON)")
        return cls.from_json(data, str(path))
