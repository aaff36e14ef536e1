"""What every ``hfs-cds`` command shares: the one-line error, reading and writing files,
parameter types for dates, choices and counts, and a progress bar that only a terminal sees."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from cds_service.config import load_settings
from cds_service.i18n import Locale
from cds_service.i18n import parse as parse_language

if TYPE_CHECKING:
    from click._termui_impl import ProgressBar

    from cds_service.assessment import Assessor
    from fhir_mappings import ValueSets

F = TypeVar("F", bound=Callable[..., Any])
#: Environment variable with the FHIR bearer token, which it keeps out of process lists.
TOKEN_ENV = "HFS_CDS_FHIR_TOKEN"
TOKEN = click.option(
    "--token", envvar=TOKEN_ENV, show_envvar=True, show_default="none", help="FHIR bearer token"
)

#: Checked when read, so that a missing file is one line like a malformed one.
INPUT_FILE = click.Path(dir_okay=False, path_type=Path)
OUTPUT_FILE = click.Path(dir_okay=False, writable=True, path_type=Path)


class CliError(Exception):
    """A problem with the command line or a file: one line on stderr, exit status 2."""


def language_option(reads: str) -> Callable[[F], F]:
    """``--lang`` (default ``CDS_LANGUAGE``, else ``en``): the language of ``reads``; the command
    turns it into a locale with :func:`locale_of`."""
    return click.option(
        "--lang",
        "language",
        envvar="CDS_LANGUAGE",
        default="en",
        show_default="CDS_LANGUAGE, else en",
        help=f"language of {reads}: en or zh-Hans",
    )


def locale_of(language: str) -> Locale:
    """``--lang`` as a locale; an unsupported language is a one-line error (exit status 2)."""
    try:
        return parse_language(language)
    except ValueError as exc:
        raise CliError(f"--lang: {exc}") from None


def read_json(path: Path, holds: str = "a JSON object", types: tuple[type, ...] = (dict,)) -> Any:
    """The JSON in ``path``; a missing or unreadable file, malformed JSON, or a value that is not
    one of ``types`` is a :class:`CliError` naming the file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror}") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise CliError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(data, types):
        raise CliError(f"{path} must hold {holds}")
    return data


def write_text(path: Path, text: str) -> None:
    """Write an output file (and its directory); a failure is a :class:`CliError`."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise CliError(f"cannot write {path}: {exc.strerror}") from exc


def value_sets() -> ValueSets:
    """The value sets the service would use (``CDS_VALUESETS_FILE``, else the packaged ones)."""
    from fhir_mappings import load_value_sets

    return load_value_sets(load_settings().valuesets_file or None)


def assessor() -> Assessor:
    """The service's assessor: its model card and value sets (``CDS_MODEL_CARD``, …)."""
    from cds_service.assessment import Assessor
    from cds_service.model import load_model_card

    return Assessor(load_model_card(load_settings().model_card or None), value_sets())


def options(*decorators: Callable[[F], F]) -> Callable[[F], F]:
    """Several Click options as one decorator, for options that commands share."""

    def apply(command: F) -> F:
        for decorator in reversed(decorators):
            command = decorator(command)
        return command

    return apply


class Choice(click.Choice[str]):
    """One of a fixed set of words, shown as ``{a,b}`` and refused with ``invalid choice: 'x'``."""

    def get_metavar(self, param: click.Parameter, ctx: click.Context) -> str:
        return "{" + ",".join(self.choices) + "}"

    def get_invalid_choice_message(self, value: Any, ctx: click.Context | None) -> str:
        return f"invalid choice: {value!r} (choose from {', '.join(map(repr, self.choices))})"


class WholeNumber(click.ParamType[int]):
    """An integer of at least ``minimum`` (0 or 1)."""

    name = "integer"

    def __init__(self, minimum: int) -> None:
        self.minimum = minimum

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        number: int = click.INT.convert(value, param, ctx)
        if number < self.minimum:
            self.fail(
                f"{value} is {'negative' if self.minimum == 0 else 'not a positive whole number'}"
            )
        return number


class IsoDate(click.ParamType[date]):
    """A calendar date, ``YYYY-MM-DD``."""

    name = "YYYY-MM-DD"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> date:
        try:
            return date.fromisoformat(value)
        except ValueError:
            self.fail(f"{value!r} is not a date (YYYY-MM-DD)", param, ctx)


class IsoMoment(click.ParamType[datetime]):
    """An ISO 8601 date or date-time, UTC unless it says otherwise (``utc``: converted to UTC).

    A bad value is a one-line :class:`CliError`, like a bad input file, not a usage error."""

    name = "ISO-DATE"

    def __init__(self, *, utc: bool = False) -> None:
        self.utc = utc

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> datetime:
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            option = param.opts[0] if param is not None else "the date"
            raise CliError(f"{option} {value!r} is not an ISO 8601 date or date-time") from None
        if moment.tzinfo is None:
            return moment.replace(tzinfo=UTC)
        return moment.astimezone(UTC) if self.utc else moment


@contextmanager
def progress(label: str) -> Iterator[Callable[[int, int], None]]:
    """A ``progress(done, total)`` callback drawn as a bar on stderr when stderr is a terminal,
    and a no-op otherwise: output meant for programs never carries it."""
    with ExitStack() as stack:
        bars: list[ProgressBar[int]] = []  # from the first call (which knows the total) on

        def step(done: int, total: int) -> None:
            if not bars and sys.stderr.isatty():
                bar = click.progressbar(length=total, label=label, file=sys.stderr)
                bars.append(stack.enter_context(bar))
            for bar in bars:
                bar.update(done - bar.pos)

        yield step
