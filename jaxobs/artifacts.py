"""Small file formats carried over from the seed projects, kept out of the headline API.

- `ConfusionMatrix`: a classification confusion matrix with its own JSON codec
  (``jaxobs.confusion_matrix``); `jaxobs.Run.log_confusion_matrix` attaches one to a run.
- `LogDestination`: where a command-line routine sends its log (a JSON path, or nowhere),
  parsed from a ``--log`` argument.
"""

from jaxobs._src.formats.artifacts import CONFUSION_FORMAT, ConfusionMatrix, LogDestination

__all__ = ["CONFUSION_FORMAT", "ConfusionMatrix", "LogDestination"]
