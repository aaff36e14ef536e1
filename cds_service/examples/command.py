"""``hfs-cds examples --out DIR``: write the example requests, dated relative to a day."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

import click

from cds_service.cli_support import IsoDate, assessor, write_text


@click.command(epilog="Each run rewrites the files it names and leaves anything else in DIR alone.")
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    metavar="DIR",
    help="folder to write them to (created if missing)",
)
@click.option(
    "--today", type=IsoDate(), show_default="today, UTC", help="date the requests are relative to"
)
def examples(out: Path, today: date | None) -> int:
    """Write example CDS Hooks requests that work today.

    A prefetch-filled request for every hook the service offers, one that gets the explanatory
    card, a feedback body, a fetch-mode request, the matching Bundle for `hfs-cds score`, and
    README.txt with the curl line for each. Same date, same files."""
    from cds_service.examples.build import INDEX_NAME, build_examples

    day = today or datetime.now(UTC).date()
    pipeline = assessor()  # the service's model card and value sets (CDS_MODEL_CARD, ...)
    example_set = build_examples(day, pipeline.value_sets, pipeline.card)
    for name, text in example_set.rendered().items():
        write_text(out / name, text)
    width = max(len(f.name) for f in example_set.files)
    print(f"wrote {len(example_set.files) + 1} files to {out}, dated relative to {day}:")
    for f in example_set.files:
        print(f"  {f.name.ljust(width)}  {f.what}")
    print(f"{out / INDEX_NAME} has the curl line for each; see a card with:")
    print(f"  hfs-cds preview {out / 'patient-view.json'}")
    return 0
