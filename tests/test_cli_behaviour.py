"""How every ``hfs-cds`` command behaves as a command: version, help on every option, one-line
errors for input files, Ctrl-C, a closed stdout pipe, and progress that only a terminal sees."""

from __future__ import annotations

import importlib.metadata
import io
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click
import pytest

from cds_service.cli import hfs_cds, main
from cds_service.sandbox.fhir_http import Interrupted

Cli = Callable[..., tuple[int, str, str]]
EXAMPLE = str(Path(__file__).parent / "data" / "bundle-42min-hb2.json")


def _commands(
    group: click.Group = hfs_cds, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    """Every command of the tree with its path (``("db", "upgrade")``)."""
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        assert command is not None
        yield (*path, name), command
        if isinstance(command, click.Group):
            yield from _commands(command, (*path, name))


COMMANDS = dict(_commands())


def test_version_comes_from_the_package_metadata(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out == f"hfs-cds {importlib.metadata.version('hfs-cds')}\n"


def test_the_tree_has_every_command() -> None:
    assert set(COMMANDS) >= {
        ("serve",),
        ("dev-token",),
        ("score",),
        ("fit",),
        ("validate",),
        ("db",),
        ("db", "upgrade"),
        ("db", "status"),
        ("db", "purge"),
        ("report",),
        ("synth",),
        ("load",),
        ("smoke",),
    }


@pytest.mark.parametrize("path", sorted(COMMANDS), ids=" ".join)
def test_every_option_and_argument_has_help_and_shows_its_default(
    path: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    command = COMMANDS[path]
    with pytest.raises(SystemExit) as exited:
        main([*path, "--help"])
    assert exited.value.code == 0
    page = "".join(capsys.readouterr().out.split())  # no spaces: wrapping puts them anywhere
    ctx = click.Context(command, info_name=path[-1], show_default=True)
    for param in command.get_params(ctx):
        if param.name == "help":
            continue
        record = param.get_help_record(ctx)
        assert record is not None and record[1].strip(), f"{'/'.join(path)} {param.name}: no help"
        words, text = record
        assert "".join(words.split()) in page and "".join(text.split()) in page
        has_default = param.to_info_dict()["default"] not in (None, (), False)
        if isinstance(param, click.Option) and not param.required and has_default:
            assert "default: " in text, f"{'/'.join(path)} {param.name}: default not shown"


def test_an_option_without_help_is_caught() -> None:
    """The walk above would fail on such an option (the check's own check)."""
    command = click.Command("x", params=[click.Option(["--quiet-one"])])
    ctx = click.Context(command)
    record = command.get_params(ctx)[0].get_help_record(ctx)
    assert record is not None and not record[1].strip()


@pytest.mark.parametrize(
    ("content", "score_error", "load_error"),
    [
        (None, "cannot read {p}: No such file or directory", "cannot read {p}: No such file"),
        ("{oops", "{p} is not valid JSON: ", "{p} is not valid JSON: "),
        ('"text"', "{p} must hold a FHIR Bundle or a JSON array of", "{p} must hold a FHIR Bundle"),
        ("[1, 2]", "{p} must hold a FHIR Bundle or a JSON array of", "{p} must hold a FHIR Bundle"),
    ],
)
def test_input_files_that_cannot_be_used_are_one_line_naming_the_file(
    cli: Cli, tmp_path: Path, content: str | None, score_error: str, load_error: str
) -> None:
    """One reader for every JSON input file: missing, not JSON, or not the right kind of value."""
    path = tmp_path / "input.json"
    if content is not None:
        path.write_text(content)
    code, out, err = cli("score", str(path))
    assert (code, out) == (2, "") and err.count("\n") == 1
    assert err.startswith("hfs-cds: " + score_error.format(p=path))
    code, out, err = cli("load", "--fhir", "http://127.0.0.1:1/fhir", "--bundle", str(path))
    assert (code, out) == (2, "") and err.count("\n") == 1
    assert err.startswith("hfs-cds load: " + load_error.format(p=path))


def test_ctrl_c_exits_130_with_one_line(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted() -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr("cds_service.cli.assessor", interrupted)
    assert cli("score", EXAMPLE) == (130, "", "hfs-cds: interrupted\n")


def test_ctrl_c_during_smoke_prints_and_writes_the_table_so_far(
    cli: Cli, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def stopped(*args: object, **kwargs: object) -> Any:
        raise Interrupted("PATIENT  SCENARIO\nhfs-synth-1-000  typical\nInterrupted after 1 of 9")

    monkeypatch.setattr("cds_service.sandbox.smoke.run_smoke", stopped)
    monkeypatch.setattr("cds_service.sandbox.smoke.CdsClient.__init__", lambda *a: None)
    monkeypatch.setattr("cds_service.sandbox.smoke.CdsClient.close", lambda self: None)
    table = tmp_path / "out" / "smoke.txt"
    args = ["--fhir", "http://127.0.0.1:1/fhir", "--service", "http://127.0.0.1:1", "--out"]
    code, out, err = cli("smoke", *args, str(table))
    assert code == 130 and err == "hfs-cds: interrupted\n"
    assert out.endswith("Interrupted after 1 of 9\n") and table.read_text() == out


def test_a_closed_stdout_pipe_exits_141_without_a_traceback() -> None:
    """``hfs-cds score … | head -c0``: the reader has gone before the first line is written."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "cds_service.cli", "score", EXAMPLE, "--format", "json"],
            stdout=write_end,
            stderr=subprocess.PIPE,
            timeout=120,
            check=False,
        )
    finally:
        os.close(write_end)
    assert (done.returncode, done.stderr) == (141, b"")


def test_a_stdout_that_breaks_is_quiet_in_process(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    class Closed(io.StringIO):
        def write(self, text: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(sys, "stdout", Closed())
    assert main(["score", EXAMPLE, "--at", "2026-11-25"]) == 141
    assert capsys.readouterr().err == ""


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_goes_to_a_terminal_stderr_only(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["synth", "--patients", "40", "--today", "2026-01-15"]
    assert main(args) == 0
    plain = capsys.readouterr()
    assert plain.err == ""
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert main(args) == 0
    assert capsys.readouterr().out == plain.out  # stdout byte for byte the same
    assert "synthesising" in terminal.getvalue() and "100%" in terminal.getvalue()
    json.loads(plain.out)


def test_serve_listens_where_host_and_port_say(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOST", "0.0.0.0")
    monkeypatch.setenv("PORT", "9123")
    params = COMMANDS[("serve",)].make_context("serve", []).params
    assert params == {"host": "0.0.0.0", "port": 9123}
    params = COMMANDS[("serve",)].make_context("serve", ["--port", "8000"]).params
    assert params["port"] == 8000


def test_smoke_takes_repeated_hooks_modes_and_patients() -> None:
    args = ["--fhir", "f", "--service", "s", "--modes", "fetch", "--hooks", "a", "--hooks", "b"]
    params = COMMANDS[("smoke",)].make_context("smoke", args).params
    assert params["modes"] == ("fetch",) and params["hooks"] == ("a", "b")
    assert params["patient"] == ()
