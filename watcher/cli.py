"""Command line: argparse subcommands; exit 0 ok, 2 usage or configuration, 1 other."""

from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    """Run the ``sklm-watcher`` command line and return the exit code."""
    raise NotImplementedError
