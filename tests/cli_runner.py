"""Running ``hfs-cds`` in-process, through the same parser and error handling as the command."""

from __future__ import annotations

from cds_service.cli import main


def run_cli(*argv: str) -> int:
    """``hfs-cds ARGV...``; its exit code (argparse errors still raise SystemExit)."""
    return main(list(argv))
