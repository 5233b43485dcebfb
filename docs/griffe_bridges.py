"""A Griffe extension for the API reference: read bridges/ as the package ``jaxobs.bridges``.

The bridges live in the repository's top-level ``bridges/`` folder and are installed only as
``jaxobs.bridges`` (see ``[tool.setuptools] package-dir`` in pyproject.toml). Griffe reads
packages from folders, so on its own it finds no ``jaxobs.bridges``: this extension loads
``bridges/`` when Griffe loads ``jaxobs`` and attaches it there, so that the reference shows
``jaxobs.bridges.wandb.WandbSink``, never a bare ``bridges`` (a name another PyPI project
owns).
"""

from __future__ import annotations

from typing import Any

import griffe


class BridgesAsSubpackage(griffe.Extension):
    """Attach the top-level ``bridges`` package to ``jaxobs`` as ``jaxobs.bridges``."""

    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        if pkg.name != "jaxobs" or "bridges" in pkg.members:
            return
        bridges = loader.load("bridges", try_relative_path=False)
        loader.modules_collection.del_member("bridges")
        pkg.set_member("bridges", bridges)
