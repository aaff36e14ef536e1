"""``hfs-cds preview REQUEST.json``: the cards a hook request gets, as a CDS Hooks client shows them."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import click

from cds_service.cli_support import (
    INPUT_FILE,
    OUTPUT_FILE,
    CliError,
    IsoMoment,
    read_json,
    write_text,
)


@click.command(
    epilog="Exit status: 0 when cards were shown; 2 with one line on stderr when the file is not "
    "a hook request, the service refused it (4xx/5xx, e.g. 412 when data could not be had) or "
    "answered no cards."
)
@click.argument("request", type=INPUT_FILE, help="a CDS Hooks request (JSON)")
@click.option(
    "--service",
    metavar="URL",
    show_default="in process, as make run serves",
    help="send to this running service: its base, discovery or service URL",
)
@click.option("--out", type=OUTPUT_FILE, help="also write the cards as a self-contained HTML page")
@click.option(
    "--at",
    type=IsoMoment(utc=True),
    show_default="now",
    help="the service's clock, in process only",
)
@click.option(
    "--jwt-key",
    type=INPUT_FILE,
    metavar="PRIVATE_JWK_FILE",
    help="with --service: sign with this private JWK instead of the development issuer's",
)
@click.option("--iss", help="with --jwt-key: the JWT issuer the service trusts")
@click.option("--timeout", type=float, default=10.0, help="with --service: seconds to wait")
def preview(
    request: Path,
    service: str | None,
    out: Path | None,
    at: datetime | None,
    jwt_key: Path | None,
    iss: str | None,
    timeout: float,
) -> int:
    """Show the cards a hook request gets, as an EHR would.

    Sends REQUEST (in process by default: development mode, no JWT, a throwaway database) and
    prints each card: indicator, summary, the detail's markdown as text, source, suggestions,
    links and override reasons; --out writes them as an HTML page too."""
    from cds_service.preview.cards import cards_of
    from cds_service.preview.html import render_html
    from cds_service.preview.send import hook_of, send_in_process, send_to_service
    from cds_service.preview.text import render_text

    body = read_json(request, "a CDS Hooks request (a JSON object)")
    try:
        hook_of(body)
    except CliError as exc:
        raise CliError(f"{request}: {exc}") from None
    if service is None:
        if jwt_key is not None or iss is not None:
            raise CliError("--jwt-key and --iss go with --service")
        answer = send_in_process(body, at)
    else:
        if at is not None:
            raise CliError("--at sets the clock of the in-process service; not with --service")
        if timeout <= 0:
            raise CliError("--timeout must be positive")
        answer = send_to_service(body, service, jwt_key=jwt_key, iss=iss, timeout=timeout)
    cards = cards_of(answer)
    print(render_text(answer, cards))
    if out is not None:
        write_text(out, render_html(answer, cards))
        print(f"\nwrote {out}")
    return 0
