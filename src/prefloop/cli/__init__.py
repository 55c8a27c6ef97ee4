"""The ``prefloop`` command line. It only builds configs and calls the library."""

from prefloop.cli.main import main

__all__ = ["main"]
