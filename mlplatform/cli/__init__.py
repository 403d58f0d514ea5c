"""The `mlplatform` command line (`mlplatform.cli.main`); `python -m mlplatform.cli` runs it."""

from mlplatform.cli.main import app

__all__ = ["app"]
