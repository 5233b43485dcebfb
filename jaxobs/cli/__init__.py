"""The `jaxobs` command: show, export, crash and sync a run directory."""

from jaxobs.cli.main import main

__all__ = ["main"]
