"""The ``synth``, ``load`` and ``smoke`` subcommands of ``hfs-cds``.

``register(subparsers)`` adds them to the CLI's argparse sub-parsers. Each command catches the
problems a user can fix and prints them as one line on stderr (exit code 2), so no traceback ever
reaches the terminal; a smoke test that finds mismatches, or a load with failed resources, exits 1.
Tokens can come from the environment (``HFS_CDS_FHIR_TOKEN``) so they stay out of process lists.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from datetime import UTC, date, datetime, time
from functools import wraps
from pathlib import Path
from typing import Any

from cds_service.config import ConfigError, Settings
from cds_service.model import ModelCardError
from cds_service.sandbox.fhir_http import FhirEndpoint, SandboxError
from cds_service.sandbox.loader import MODES as LOAD_MODES
from cds_service.sandbox.scenarios import DEFAULT_SEED, SCENARIOS
from fhir_mappings import ValueSetError

#: Environment variable holding the FHIR bearer token when ``--token`` is not given.
TOKEN_ENV = "HFS_CDS_FHIR_TOKEN"

Command = Callable[[argparse.Namespace], int]


def register(subparsers: Any) -> None:
    """Add ``synth``, ``load`` and ``smoke`` to ``hfs-cds`` (``parser.add_subparsers()``)."""
    synth = subparsers.add_parser(
        "synth",
        help="write synthetic FHIR R4 test patients as a transaction Bundle",
        description="Synthetic hemifacial-spasm patients (typical records and every edge case of "
        "the mapping rules) as a FHIR R4 transaction Bundle, deterministic for a seed.",
    )
    _synth_options(synth)
    synth.add_argument("--out", type=Path, help="write the Bundle here (default: stdout)")
    synth.set_defaults(run=_run_synth)

    load = subparsers.add_parser(
        "load",
        help="load the synthetic patients (or a transaction Bundle) into a FHIR server",
        description="Load a transaction Bundle into any FHIR server without duplicates: "
        "unchanged resources are skipped; a server that refuses transactions gets batches or "
        "single conditional requests.",
    )
    _fhir_options(load)
    load.add_argument("--bundle", type=Path, help="a transaction Bundle file (default: synthesise)")
    _synth_options(load, defaults=False)
    load.add_argument(
        "--mode",
        choices=LOAD_MODES,
        default="auto",
        help="auto (default): transaction, falling back to batch then single requests",
    )
    load.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="wait up to this long for a FHIR server that is still starting",
    )
    load.set_defaults(run=_run_load)

    smoke = subparsers.add_parser(
        "smoke",
        help="fire every hook for every synthetic patient and check the cards",
        description="Calls each CDS service for every synthetic patient on the FHIR server, with "
        "prefetch filled from the server and without prefetch (the service fetches), and checks "
        "each card against the assessment `hfs-cds score` gives for the same resources.",
    )
    _fhir_options(smoke)
    smoke.add_argument(
        "--service",
        required=True,
        metavar="URL",
        help="the service's discovery URL, e.g. http://127.0.0.1:8080/cds-services",
    )
    smoke.add_argument(
        "--jwt-alg",
        choices=("ES384", "RS384", "ES256", "RS256", "PS384"),
        help="signing algorithm (default ES384; with --jwt-key the key's own alg)",
    )
    smoke.add_argument(
        "--jwt-key",
        type=Path,
        metavar="PRIVATE_JWK_FILE",
        help="sign with this private JWK (a real deployment's test client); needs --iss",
    )
    smoke.add_argument("--iss", help="the JWT issuer the service trusts (with --jwt-key)")
    smoke.add_argument("--jku", help="JWK Set URL to name in the JWT header (with --jwt-key)")
    smoke.add_argument("--hooks", nargs="+", metavar="HOOK", help="only these hooks")
    smoke.add_argument(
        "--modes",
        nargs="+",
        choices=("prefetch", "fetch"),
        default=["prefetch", "fetch"],
        help="prefetch: send prefetch; fetch: omit it so the service queries --fhir (default both)",
    )
    smoke.add_argument("--seed", type=int, help="only the synthetic patients of this seed")
    smoke.add_argument(
        "--patient", action="append", default=[], metavar="ID", help="only this patient (id or key)"
    )
    smoke.add_argument("--out", type=Path, help="also write the table to this file")
    smoke.set_defaults(run=_run_smoke)


def _synth_options(parser: argparse.ArgumentParser, *, defaults: bool = True) -> None:
    seed_default = DEFAULT_SEED if defaults else None
    parser.add_argument(
        "--seed", type=int, default=seed_default, help=f"random seed (default {DEFAULT_SEED})"
    )
    parser.add_argument(
        "--patients",
        type=int,
        default=len(SCENARIOS) if defaults else None,
        metavar="N",
        help=f"number of patients (default {len(SCENARIOS)}: one per named scenario)",
    )
    parser.add_argument(
        "--today",
        type=_iso_date,
        default=None,
        metavar="YYYY-MM-DD",
        help="date the data is relative to (default: today, UTC)",
    )
    parser.add_argument(
        "--outcomes-from",
        metavar="CARD",
        help="add follow-up outcomes (recurrence Conditions, last-contact Encounters) drawn from "
        "this model card ('published' for the packaged one); patients beyond the named scenarios "
        "then had their ablation 13-30 months ago, a cohort for 'hfs-cds fit'",
    )


def _fhir_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--fhir", required=True, metavar="BASE", help="FHIR R4 base URL")
    parser.add_argument(
        "--token",
        default=None,
        help=f"bearer token for the FHIR server (default: ${TOKEN_ENV} if set)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="per-request timeout (default 30)",
    )


def _iso_date(value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a date (YYYY-MM-DD)") from None


def _friendly(name: str) -> Callable[[Command], Command]:
    """Problems a user can fix become one line on stderr and exit code 2."""

    def wrap(command: Command) -> Command:
        @wraps(command)
        def run(args: argparse.Namespace) -> int:
            try:
                return command(args)
            except (SandboxError, ConfigError, ModelCardError, ValueSetError) as exc:
                print(f"hfs-cds {name}: {exc}", file=sys.stderr)
                return 2

        return run

    return wrap


def _settings() -> Settings:
    return Settings.from_env(os.environ)


def _bundle_from_args(args: argparse.Namespace) -> dict[str, Any]:
    from cds_service.sandbox.scenarios import build_bundle, synthetic_patients
    from fhir_mappings import load_value_sets

    patients = args.patients if args.patients is not None else len(SCENARIOS)
    if patients < 1:
        raise SandboxError("--patients must be at least 1")
    value_sets = load_value_sets(_settings().valuesets_file or None)
    seed = args.seed if args.seed is not None else DEFAULT_SEED
    outcomes_from = getattr(args, "outcomes_from", None)
    synthetic = synthetic_patients(
        seed, patients, args.today, value_sets, past_cohort=bool(outcomes_from)
    )
    if not outcomes_from:
        return build_bundle(synthetic)
    from cds_service.model import ModelCardError, load_model_card
    from cds_service.sandbox.outcomes import follow_up_entries

    try:
        card = load_model_card(None if outcomes_from == "published" else outcomes_from)
    except ModelCardError as exc:
        raise SandboxError(str(exc)) from None
    as_of = datetime.combine(args.today, time(12), UTC) if args.today else datetime.now(UTC)
    extras = follow_up_entries(card, synthetic, seed=seed, as_of=as_of, value_sets=value_sets)
    return build_bundle(synthetic, extras)


@_friendly("synth")
def _run_synth(args: argparse.Namespace) -> int:
    text = json.dumps(_bundle_from_args(args), indent=2) + "\n"
    if args.out is None:
        sys.stdout.write(text)
        return 0
    try:
        args.out.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise SandboxError(f"cannot write {args.out}: {exc.strerror}") from None
    entries = text.count('"fullUrl"')
    print(f"wrote {entries} resources for {args.patients} patients to {args.out}", file=sys.stderr)
    return 0


@_friendly("load")
def _run_load(args: argparse.Namespace) -> int:
    from cds_service.sandbox.loader import load_bundle

    if args.bundle is not None:
        if any(getattr(args, n) is not None for n in ("seed", "patients", "today")):
            raise SandboxError("give either --bundle or --seed/--patients/--today, not both")
        bundle = _read_json(args.bundle)
    else:
        bundle = _bundle_from_args(args)
    endpoint = _endpoint(args)
    try:
        report = load_bundle(endpoint, bundle, args.mode, wait_seconds=args.wait)
    finally:
        endpoint.close()
    print(report.render())
    return 0 if report.ok else 1


@_friendly("smoke")
def _run_smoke(args: argparse.Namespace) -> int:
    from cds_service.assessment import Assessor
    from cds_service.model import load_model_card
    from cds_service.sandbox.smoke import CdsClient, run_smoke
    from cds_service.security.trusted_issuers import SigningKey, TrustConfigError, development_key
    from fhir_mappings import load_value_sets

    if args.jwt_key is not None:
        if not args.iss:
            raise SandboxError("--jwt-key needs --iss (the issuer the service trusts)")
        try:
            signer = SigningKey.from_file(args.jwt_key, args.iss, args.jwt_alg, args.jku)
        except TrustConfigError as exc:
            raise SandboxError(f"--jwt-key {exc}") from None
    else:
        if args.iss or args.jku:
            raise SandboxError("--iss and --jku go with --jwt-key")
        if args.jwt_alg not in (None, "ES384", "RS384"):
            raise SandboxError("the development signer signs ES384 or RS384 only")
        signer = development_key(args.jwt_alg or "ES384")
    settings = _settings()
    assessor = Assessor(
        load_model_card(settings.model_card or None),
        load_value_sets(settings.valuesets_file or None),
    )
    endpoint = _endpoint(args)
    client = CdsClient(args.service, signer, args.timeout)
    try:
        result = run_smoke(
            endpoint,
            client,
            assessor,
            hooks=args.hooks or (),
            modes=tuple(dict.fromkeys(args.modes)),
            seed=args.seed,
            patient_ids=args.patient,
        )
    finally:
        endpoint.close()
        client.close()
    table = result.render()
    print(table)
    if args.out is not None:
        try:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(table + "\n", encoding="utf-8")
        except OSError as exc:
            raise SandboxError(f"cannot write {args.out}: {exc.strerror}") from None
    return 0 if result.ok else 1


def _endpoint(args: argparse.Namespace) -> FhirEndpoint:
    token = args.token if args.token is not None else os.environ.get(TOKEN_ENV) or None
    if args.timeout <= 0:
        raise SandboxError("--timeout must be positive")
    return FhirEndpoint(args.fhir, token=token, timeout=args.timeout)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SandboxError(f"cannot read {path}: {exc.strerror}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise SandboxError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise SandboxError(f"{path} does not hold a FHIR Bundle")
    return data


__all__ = ["TOKEN_ENV", "register"]
