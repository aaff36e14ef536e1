"""``hfs-cds synth``, ``load`` and ``smoke``: synthetic patients, the loader and the smoke test.

A smoke test that finds mismatches, or a load with failed resources, exits 1; Ctrl-C during a
load or a smoke run prints what was done so far.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from click.core import ParameterSource

from cds_service.cli_support import (
    INPUT_FILE,
    OUTPUT_FILE,
    TOKEN,
    Choice,
    IsoDate,
    assessor,
    options,
    progress,
    read_json,
    value_sets,
    write_text,
)
from cds_service.model import ModelCardError, load_model_card
from cds_service.sandbox.fhir_http import FhirEndpoint, Interrupted, SandboxError
from cds_service.sandbox.loader import MODES as LOAD_MODES
from cds_service.sandbox.loader import Mode as LoadMode
from cds_service.sandbox.loader import load_bundle
from cds_service.sandbox.scenarios import DEFAULT_SEED, SCENARIOS, build_bundle, synthetic_patients

if TYPE_CHECKING:
    from cds_service.sandbox.smoke import Mode as SmokeMode


_synth_options = options(
    click.option("--seed", type=int, default=DEFAULT_SEED, help="random seed"),
    click.option(
        "--patients",
        type=int,
        default=len(SCENARIOS),
        help="how many (one per scenario by default)",
    ),
    click.option(
        "--today", type=IsoDate(), show_default="today, UTC", help="date the data is relative to"
    ),
    click.option(
        "--outcomes-from",
        metavar="CARD",
        help="add follow-up outcomes (recurrence Conditions, last-contact Encounters) drawn from "
        "this model card ('published' for the packaged one); patients beyond the named scenarios "
        "then had their ablation 13-30 months ago, a cohort for 'hfs-cds fit'",
    ),
)
_fhir_options = options(
    click.option("--fhir", required=True, metavar="BASE", help="FHIR R4 base URL"),
    TOKEN,
    click.option("--timeout", type=float, default=30.0, help="per-request timeout, seconds"),
)


@click.command()
@_synth_options
@click.option("--out", type=OUTPUT_FILE, show_default="stdout", help="write the Bundle here")
def synth(out: Path | None, **synth: Any) -> int:
    """Write synthetic FHIR R4 test patients as a transaction Bundle.

    Hemifacial-spasm patients (typical records and every edge case of the mapping rules),
    deterministic for a seed."""
    text = json.dumps(_synthesise(**synth), indent=2) + "\n"
    if out is None:
        sys.stdout.write(text)
        return 0
    write_text(out, text)
    entries = text.count('"fullUrl"')
    print(f"wrote {entries} resources for {synth['patients']} patients to {out}", file=sys.stderr)
    return 0


@click.command()
@_fhir_options
@click.option("--bundle", type=INPUT_FILE, show_default="synthesise", help="a transaction Bundle")
@_synth_options
@click.option(
    "--mode",
    type=Choice(LOAD_MODES),
    default="auto",
    help="auto: a transaction, falling back to batches, then one request per resource",
)
@click.option("--wait", type=float, default=0.0, help="seconds to wait for a starting server")
def load(
    fhir: str,
    token: str | None,
    timeout: float,
    bundle: Path | None,
    mode: LoadMode,
    wait: float,
    **synth: Any,
) -> int:
    """Load the synthetic patients (or a transaction Bundle) into a FHIR server.

    Without duplicates: unchanged resources are skipped; a server that refuses transactions gets
    batches or single conditional requests."""
    if bundle is not None:
        ctx = click.get_current_context()
        sources = map(ctx.get_parameter_source, ("seed", "patients", "today"))
        if any(source is ParameterSource.COMMANDLINE for source in sources):
            raise SandboxError("give either --bundle or --seed/--patients/--today, not both")
        data = read_json(bundle, "a FHIR Bundle")
    else:
        data = _synthesise(**synth)
    endpoint = _endpoint(fhir, token, timeout)
    try:
        with progress("loading") as step:
            report = load_bundle(endpoint, data, mode, wait_seconds=wait, progress=step)
    except Interrupted as stop:
        print(stop.partial)
        raise
    finally:
        endpoint.close()
    print(report.render())
    return 0 if report.ok else 1


@click.command()
@_fhir_options
@click.option(
    "--service",
    required=True,
    metavar="URL",
    help="the service's discovery URL, e.g. http://127.0.0.1:8080/cds-services",
)
@click.option(
    "--jwt-alg",
    type=Choice(("ES384", "RS384", "ES256", "RS256", "PS384")),
    show_default="ES384; with --jwt-key the key's own",
    help="signing algorithm",
)
@click.option(
    "--jwt-key",
    type=INPUT_FILE,
    metavar="PRIVATE_JWK_FILE",
    help="sign with this private JWK (a real deployment's test client); needs --iss",
)
@click.option("--iss", help="the JWT issuer the service trusts (with --jwt-key)")
@click.option("--jku", help="JWK Set URL to name in the JWT header (with --jwt-key)")
@click.option("--hooks", multiple=True, metavar="HOOK", help="only this hook (repeat for more)")
@click.option(
    "--modes",
    type=Choice(("prefetch", "fetch")),
    multiple=True,
    default=("prefetch", "fetch"),
    help="prefetch: send prefetch; fetch: omit it so the service queries --fhir",
)
@click.option("--seed", type=int, help="only the synthetic patients of this seed")
@click.option("--patient", multiple=True, metavar="ID", help="only this patient (repeat for more)")
@click.option("--out", type=OUTPUT_FILE, help="also write the table to this file")
def smoke(
    fhir: str,
    token: str | None,
    timeout: float,
    service: str,
    jwt_alg: str | None,
    jwt_key: Path | None,
    iss: str | None,
    jku: str | None,
    hooks: tuple[str, ...],
    modes: tuple[SmokeMode, ...],
    seed: int | None,
    patient: tuple[str, ...],
    out: Path | None,
) -> int:
    """Fire every hook for every synthetic patient and check the cards.

    Calls each CDS service for every synthetic patient on the FHIR server, with prefetch filled
    from the server and without prefetch (the service fetches), and checks each card against
    the assessment `hfs-cds score` gives for the same resources."""
    from cds_service.sandbox.smoke import CdsClient, run_smoke
    from cds_service.security.trusted_issuers import SigningKey, TrustConfigError, development_key

    if jwt_key is not None:
        if not iss:
            raise SandboxError("--jwt-key needs --iss (the issuer the service trusts)")
        try:
            signer = SigningKey.from_file(jwt_key, iss, jwt_alg, jku)
        except TrustConfigError as exc:
            raise SandboxError(f"--jwt-key {exc}") from None
    else:
        if iss or jku:
            raise SandboxError("--iss and --jku go with --jwt-key")
        if jwt_alg not in (None, "ES384", "RS384"):
            raise SandboxError("the development signer signs ES384 or RS384 only")
        signer = development_key("RS384" if jwt_alg == "RS384" else "ES384")
    endpoint = _endpoint(fhir, token, timeout)
    client = CdsClient(service, signer, timeout)
    try:
        with progress("checking patients") as step:
            result = run_smoke(
                endpoint,
                client,
                assessor(),
                hooks=hooks,
                modes=tuple(dict.fromkeys(modes)),
                seed=seed,
                patient_ids=patient,
                progress=step,
            )
    except Interrupted as stop:
        _table(stop.partial, out)
        raise
    finally:
        endpoint.close()
        client.close()
    _table(result.render(), out)
    return 0 if result.ok else 1


def _table(table: str, out: Path | None) -> None:
    print(table)
    if out is not None:
        write_text(out, table + "\n")


def _synthesise(
    seed: int, patients: int, today: date | None, outcomes_from: str | None
) -> dict[str, Any]:
    from cds_service.sandbox.outcomes import follow_up_entries

    if patients < 1:
        raise SandboxError("--patients must be at least 1")
    sets = value_sets()
    with progress("synthesising") as step:
        synthetic = synthetic_patients(
            seed, patients, today, sets, past_cohort=bool(outcomes_from), progress=step
        )
    if not outcomes_from:
        return build_bundle(synthetic)
    try:
        card = load_model_card(None if outcomes_from == "published" else outcomes_from)
    except ModelCardError as exc:
        raise SandboxError(str(exc)) from None
    as_of = datetime.combine(today, time(12), UTC) if today else datetime.now(UTC)
    extras = follow_up_entries(card, synthetic, seed=seed, as_of=as_of, value_sets=sets)
    return build_bundle(synthetic, extras)


def _endpoint(fhir: str, token: str | None, timeout: float) -> FhirEndpoint:
    if timeout <= 0:
        raise SandboxError("--timeout must be positive")
    return FhirEndpoint(fhir, token=token or None, timeout=timeout)


COMMANDS = (synth, load, smoke)
