"""The one settings object: every variable read once by one parser (``cds_service.config``).

The three sections (service, ``.store``, ``.smart``) share one rule per kind of value, so the app,
``hfs-cds db`` and the SMART app can no longer disagree about a variable.
"""

from __future__ import annotations

import base64
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cds_service import create_app
from cds_service.config import (
    DEFAULT_SCOPES,
    ConfigError,
    Settings,
    SmartSettings,
    StoreSettings,
    load_settings,
)

ROWS = Settings.describe()
URL_VARIABLES = ["CDS_FHIR_ALLOWLIST", "SMART_ALLOWED_ISSUERS", "SMART_STANDALONE_FHIR_BASE"]
URL_VARIABLES += ["SMART_REDIRECT_URL"]
LIST_VARIABLES = ["CDS_CORS_ORIGINS", "SMART_SCOPES", "SMART_FRAME_ANCESTORS"]

# -- defaults and sections ---------------------------------------------------------------------------


def test_nothing_set_is_the_safe_defaults() -> None:
    settings = load_settings({})
    assert settings == Settings()
    assert settings.auth_required and not settings.dev_mode and settings.fhir_allowlist == ()
    assert not settings.smart.enabled and settings.smart.cookie_secure
    assert settings.smart.scopes == DEFAULT_SCOPES
    assert not any(".c" in s or "write" in s for s in settings.smart.scopes)
    assert settings.store == StoreSettings("", "instance", 400)


def test_an_empty_value_is_the_default() -> None:
    """A compose file's ``CDS_AUTH_REQUIRED=`` must not switch authentication off."""
    empty = load_settings({row.name: " " for row in ROWS})
    assert empty == Settings()


def test_each_section_reads_its_variables(tmp_path: Path) -> None:
    settings = load_settings(
        {
            "CDS_DEV_MODE": "yes",
            "CDS_FHIR_MAX_PAGES": "3",
            "CDS_DATABASE_URL": " postgresql://u@db/hfs ",
            "CDS_INSTANCE_PATH": str(tmp_path),
            "CDS_AUDIT_RETENTION_DAYS": "30",
            "SMART_CLIENT_ID": "hfs-app",
            "SMART_ALLOWED_ISSUERS": "https://ehr.example/fhir/, https://other.example/r4",
            "SMART_COOKIE_SECURE": "false",
            "SMART_SESSION_IDLE_SECONDS": "600",
            "SMART_FHIR_BUDGET_SECONDS": "2.5",
            "UNRELATED": "x",
        }
    )
    assert (settings.dev_mode, settings.fhir_max_pages, settings.fhir_budget_seconds) == (
        True,
        3,
        2.0,
    )
    assert settings.store == StoreSettings("postgresql://u@db/hfs", str(tmp_path), 30)
    assert settings.store.resolved_url() == "postgresql://u@db/hfs"
    smart = settings.smart
    assert smart.allowed_issuers == ("https://ehr.example/fhir", "https://other.example/r4")
    assert (smart.client_id, smart.cookie_secure, smart.session_idle_seconds) == (
        "hfs-app",
        False,
        600,
    )
    assert (smart.fhir_budget_seconds, smart.enabled, smart.confidential) == (2.5, True, False)


def test_the_embedded_database_lives_in_the_instance_path(tmp_path: Path) -> None:
    """It also holds the shared state (replay cache, SMART sessions): there is no second file."""
    settings = load_settings({"CDS_INSTANCE_PATH": str(tmp_path)})
    assert settings.store.resolved_url() == f"sqlite:///{tmp_path / 'hfs-cds.sqlite3'}"
    assert not hasattr(settings, "shared_state_file")
    assert settings.store.state_purge_seconds == 60.0
    assert load_settings({"CDS_STATE_PURGE_SECONDS": "5"}).store.state_purge_seconds == 5.0
    with pytest.raises(ConfigError, match="^CDS_STATE_PURGE_SECONDS: cannot use '0'"):
        load_settings({"CDS_STATE_PURGE_SECONDS": "0"})


def test_the_smart_session_key_is_32_bytes_of_base64_and_never_quoted() -> None:
    key = base64.b64encode(bytes(range(32))).decode()
    assert load_settings({"SMART_SESSION_KEY": key}).smart.sealing_key() == bytes(range(32))
    assert load_settings({}).smart.sealing_key() is None  # a random key per instance
    for bad in ("not base64!", base64.b64encode(b"short").decode(), key + "AAAA"):
        with pytest.raises(ConfigError, match="^SMART_SESSION_KEY: not 32 random bytes") as caught:
            load_settings({"SMART_SESSION_KEY": bad})
        assert bad not in str(caught.value)  # a secret: never in a message


def test_the_process_environment_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CDS_MAX_REQUEST_BYTES", "1000")
    monkeypatch.setenv("SMART_CLIENT_SECRET", "s")
    settings = load_settings()
    assert (settings.max_request_bytes, settings.smart.client_secret) == (1000, "s")


# -- create_app overrides ----------------------------------------------------------------------------


def test_overrides_take_every_form_the_tests_use(monkeypatch: pytest.MonkeyPatch) -> None:
    """Service keys with or without ``CDS_``, ``SMART_*`` keys, text or typed values; any other
    key is a Flask setting."""
    monkeypatch.setenv("CDS_AUTH_REQUIRED", "true")
    monkeypatch.setenv("SMART_CLIENT_ID", "from-env")
    clock = object()
    settings = load_settings(
        overrides={
            "TESTING": True,
            "CLOCK": clock,
            "AUTH_REQUIRED": False,
            "DEV_MODE": True,
            "FHIR_ALLOWLIST": ["http://127.0.0.1:9/fhir/", "https://ehr.example/fhir"],
            "FHIR_BUDGET_SECONDS": 1,
            "CORS_ORIGINS": "https://ehr.example.org",
            "CDS_PUBLIC_BASE_URL": "https://cds.example/",
            "SMART_CLIENT_ID": "c",
            "SMART_ALLOWED_ISSUERS": "http://127.0.0.1:9/fhir",
            "SMART_COOKIE_SECURE": False,
            "SMART_HTTP_TIMEOUT_SECONDS": 2,
        }
    )
    assert settings.flask == {"TESTING": True, "CLOCK": clock}
    assert (settings.auth_required, settings.dev_mode, settings.fhir_budget_seconds) == (
        False,
        True,
        1.0,
    )
    assert settings.fhir_allowlist == ("http://127.0.0.1:9/fhir", "https://ehr.example/fhir")
    assert settings.cors_origins == ("https://ehr.example.org",)
    assert settings.public_base_url == "https://cds.example/"
    assert settings.smart == SmartSettings(
        client_id="c",
        allowed_issuers=("http://127.0.0.1:9/fhir",),
        cookie_secure=False,
        http_timeout_seconds=2.0,
    )


def test_the_app_keeps_the_settings_it_was_built_with() -> None:
    app = create_app({"TESTING": True, "AUTH_REQUIRED": False, "MAX_REQUEST_BYTES": 10_000})
    try:
        settings = app.extensions["hfs_cds"].settings
        assert settings.max_request_bytes == app.config["MAX_CONTENT_LENGTH"] == 10_000
        assert app.config["TESTING"] and "AUTH_REQUIRED" not in app.config
    finally:
        app.extensions["hfs_cds"].close()


# -- the three disagreements of issue 13 -------------------------------------------------------------


@pytest.mark.parametrize("days", ["0", "-3", "a year", "1.5"])
def test_retention_is_at_least_one_day_for_the_service_and_the_db_commands(
    days: str, monkeypatch: pytest.MonkeyPatch, cli: Callable[..., tuple[int, str, str]]
) -> None:
    message = f"CDS_AUDIT_RETENTION_DAYS: cannot use '{days}' (a whole number, at least 1)"
    with pytest.raises(ConfigError) as caught:
        load_settings({"CDS_AUDIT_RETENTION_DAYS": days})
    assert str(caught.value) == message
    monkeypatch.setenv("CDS_AUDIT_RETENTION_DAYS", days)
    with pytest.raises(ConfigError, match="CDS_AUDIT_RETENTION_DAYS"):
        create_app({"TESTING": True, "AUTH_REQUIRED": False})
    code, out, err = cli("db", "purge")
    assert code != 0 and out == "" and message in err and err.count("\n") == 1


@pytest.mark.parametrize("variable", ["CDS_FHIR_ALLOWLIST", "SMART_ALLOWED_ISSUERS"])
@pytest.mark.parametrize(
    "raw",
    [
        "https://a.example/fhir https://b.example/r4/",
        " https://a.example/fhir,\nhttps://b.example/r4 ,",
    ],
)
def test_url_lists_split_on_commas_and_whitespace_for_hooks_and_smart(
    variable: str, raw: str
) -> None:
    settings = load_settings({variable: raw})
    parsed = (
        settings.fhir_allowlist if variable.startswith("CDS_") else settings.smart.allowed_issuers
    )
    assert parsed == ("https://a.example/fhir", "https://b.example/r4")


@pytest.mark.parametrize("variable", LIST_VARIABLES)
def test_every_list_setting_has_the_same_syntax(variable: str) -> None:
    settings = load_settings({variable: "a, b\tc,,\nd"})
    section = settings.smart if variable.startswith("SMART_") else settings
    assert getattr(section, variable.split("_", 1)[1].lower()) == ("a", "b", "c", "d")


@pytest.mark.parametrize("variable", URL_VARIABLES)
@pytest.mark.parametrize(
    ("url", "dev_mode", "why"),
    [
        (
            "http://ehr.example/fhir",
            "1",
            "must be https (http only on loopback in development mode)",
        ),
        (
            "http://127.0.0.1:9/fhir",
            "0",
            "must be https (http only on loopback in development mode)",
        ),
        ("https://u:p@ehr.example/fhir", "1", "must not carry credentials"),
        ("ftp://ehr.example/fhir", "1", "is not an absolute http(s) URL"),
        ("ehr.example/fhir", "1", "is not an absolute http(s) URL"),
    ],
)
def test_one_url_rule_for_every_url_setting(
    variable: str, url: str, dev_mode: str, why: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({"CDS_DEV_MODE": dev_mode, variable: url})
    message = str(caught.value)  # the entry itself may be shown or redacted (credentials)
    assert message.startswith(f"{variable}: ") and message.endswith(why) and "\n" not in message


@pytest.mark.parametrize("variable", URL_VARIABLES)
def test_loopback_http_is_accepted_in_development_mode_only(variable: str) -> None:
    url = "http://127.0.0.1:9/fhir"
    settings = load_settings({variable: url}, {"DEV_MODE": True})
    smart = settings.smart
    values = (*settings.fhir_allowlist, *smart.allowed_issuers, smart.standalone_fhir_base)
    assert url in (*values, smart.redirect_url)
    with pytest.raises(ConfigError, match=variable):
        create_app({"TESTING": True, "AUTH_REQUIRED": False, variable: url})


def test_a_single_url_setting_takes_one_url() -> None:
    raw = "https://a.example/fhir https://b.example/fhir"
    with pytest.raises(
        ConfigError, match=r"SMART_STANDALONE_FHIR_BASE: cannot use .*one absolute URL"
    ):
        load_settings({"SMART_STANDALONE_FHIR_BASE": raw})
    base = load_settings({"SMART_STANDALONE_FHIR_BASE": "https://a.example/fhir/"}).smart
    assert base.standalone_fhir_base == "https://a.example/fhir" and base.fhir_bases == (
        "https://a.example/fhir",
    )


# -- every bad value: one line naming the variable and what it accepts -------------------------------


@pytest.mark.parametrize(
    "row",
    [r for r in ROWS if r.accepts.startswith(("true", "a whole", "a number"))],
    ids=lambda row: row.name,
)
@pytest.mark.parametrize("bad", ["maybe", "0", "-1", "nan", "inf"])
def test_a_bad_value_is_one_line_naming_the_variable_and_what_it_accepts(
    row: Any, bad: str
) -> None:
    if row.accepts.startswith("true") and bad == "0":
        return  # a flag's false
    with pytest.raises(ConfigError) as caught:
        load_settings({row.name: bad})
    assert str(caught.value) == f"{row.name}: cannot use {bad!r} ({row.accepts})"


def test_a_client_id_without_an_ehr_that_may_launch_is_refused() -> None:
    with pytest.raises(ConfigError, match="SMART_CLIENT_ID is set but no EHR may launch the app"):
        load_settings({"SMART_CLIENT_ID": "a"})
    standalone = load_settings(
        {"SMART_CLIENT_ID": "a", "SMART_STANDALONE_FHIR_BASE": "https://x/f"}
    )
    assert standalone.smart.enabled


# -- the variables, for the configuration reference --------------------------------------------------


def test_describe_lists_every_variable_once_with_its_help() -> None:
    names = [row.name for row in ROWS]
    assert len(names) == len(set(names)) == 38
    assert {"CDS_AUTH_REQUIRED", "CDS_AUDIT_RETENTION_DAYS", "SMART_CLIENT_ID"} <= set(names)
    assert all(row.help and "\n" not in row.help for row in ROWS)
    retention = next(row for row in ROWS if row.name == "CDS_AUDIT_RETENTION_DAYS")
    assert retention.default == "400" and retention.accepts == "a whole number, at least 1"
    assert retention.help.startswith("How many days audit records and feedback are kept")


def test_the_described_defaults_read_back_as_the_defaults() -> None:
    assert load_settings({row.name: row.default for row in ROWS}) == Settings()


def test_reading_settings_imports_no_http_client() -> None:
    """Cold start of every command: the parser is the standard library only (the FHIR client,
    which checks URLs, loads only when a URL is set)."""
    code = (
        "import sys; from cds_service.config import load_settings; load_settings({}); "
        "sys.exit(bool({'requests', 'flask', 'sqlalchemy', 'pydantic'} & set(sys.modules)))"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


@pytest.mark.parametrize(
    ("raw", "level"), [("debug", "DEBUG"), (" Warning ", "WARNING"), ("", "INFO")]
)
def test_the_log_level_is_a_setting_read_like_the_others(raw: str, level: str) -> None:
    assert load_settings({"CDS_LOG_LEVEL": raw}).log_level == level


def test_an_unknown_log_level_is_one_line_naming_the_levels() -> None:
    """``CDS_LOG_LEVEL=verbose`` used to end ``hfs-cds serve`` in a traceback from logging."""
    with pytest.raises(ConfigError) as caught:
        load_settings({"CDS_LOG_LEVEL": "verbose"})
    assert str(caught.value) == (
        "CDS_LOG_LEVEL: cannot use 'verbose' (DEBUG, INFO, WARNING, ERROR or CRITICAL)"
    )


def test_serve_refuses_an_unknown_log_level_before_starting(
    monkeypatch: pytest.MonkeyPatch, cli: Callable[..., tuple[int, str, str]]
) -> None:
    monkeypatch.setenv("CDS_LOG_LEVEL", "verbose")
    code, out, err = cli("serve", "--port", "9")
    assert (code, out) == (2, "")
    assert (
        err
        == "hfs-cds: CDS_LOG_LEVEL: cannot use 'verbose' (DEBUG, INFO, WARNING, ERROR or CRITICAL)\n"
    )


def test_the_app_factory_takes_settings_already_read() -> None:
    settings = load_settings({"CDS_AUTH_REQUIRED": "false", "CDS_MAX_REQUEST_BYTES": "2048"})
    app = create_app(settings)
    try:
        assert app.extensions["hfs_cds"].settings is settings
        assert app.config["MAX_CONTENT_LENGTH"] == 2048
    finally:
        app.extensions["hfs_cds"].close()


def test_the_fhir_clients_response_cap_and_per_issuer_limit_are_settings() -> None:
    """Issue 15's byte cap and per-EHR fetch limit reach both outbound clients (hooks and app)."""
    app = create_app(
        {
            "TESTING": True,
            "AUTH_REQUIRED": False,
            "FHIR_MAX_RESPONSE_BYTES": "65536",
            "FHIR_MAX_FETCHES_PER_ISSUER": 2,
            "SMART_CLIENT_ID": "app",
            "SMART_ALLOWED_ISSUERS": "https://ehr.example.org/fhir",
        }
    )
    try:
        client = app.extensions["hfs_cds"].fhir_client
        assert (client.max_response_bytes, client.max_fetches_per_issuer) == (65536, 2)
        smart = app.extensions["hfs_cds_smart"]
        assert smart.fhir_client.max_response_bytes == 65536
    finally:
        app.extensions["hfs_cds"].close()
