"""The documentation says only true things about the repository.

- docs/configuration.md is what ``scripts/config_reference.py`` writes from ``Settings.describe()``
  today, and its hand-written part names every variable gunicorn's configuration and the CLI read;
- every relative link in README.md, CHANGELOG.md, docker/README.md and docs/*.md reaches a file
  (and a heading, when it names one);
- every ``make`` target, ``hfs-cds`` command and option, repository path and service URL path the
  docs name in code exists;
- the README stays short.
"""

from __future__ import annotations

import re
import runpy
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import click
import pytest
from werkzeug.exceptions import MethodNotAllowed, NotFound

from cds_service import create_app
from cds_service.cli import hfs_cds
from cds_service.cli_support import TOKEN_ENV
from cds_service.config import Settings

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))
PAGES = [README, REPO / "CHANGELOG.md", REPO / "docker" / "README.md", *DOCS]
README_MAX_LINES = 200

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
INLINE = re.compile(r"`([^`\n]+)`")
TOP_LEVEL = (
    "cds_service",
    "fhir_mappings",
    "tests",
    "docker",
    "bench",
    "scripts",
    "examples",
    "docs",
)
REPO_PATH = re.compile(rf"^(?:{'|'.join(TOP_LEVEL)})/[\w./*-]*$")
URL_PATH = re.compile(r"(?<![\w.])(/(?:cds-services|smart|model-card|healthz|readyz)[^\s`'\"),]*)")
#: ``hfs-cds`` as a command (not a path or an image tag) and its words up to a shell operator.
COMMAND = re.compile(r"(?:^|(?<=[\s(])|(?<=bin/))hfs-cds(?![\w.:/-])((?: +[^\s|;&#)`$]+)*)")
#: The service's own origin in examples: ``$BASE``, ``${PORT:-8080}``, ``http://127.0.0.1:8080``, ...
OWN_ORIGIN = re.compile(
    r"\$\{[^}]*\}|\$\w+|https?://(?:127\.0\.0\.1|localhost|cds\.hospital\.example|<your host>)(?::\d*)?"
)


def ids(paths: list[Path]) -> list[str]:
    return [str(p.relative_to(REPO)) for p in paths]


def code_of(text: str) -> list[str]:
    """The code in a markdown page: fenced blocks (continuation lines joined) and inline spans."""
    blocks = [b.replace("\\\n", " ") for b in FENCE.findall(text)]
    prose = FENCE.sub("", text)
    return blocks + INLINE.findall(prose)


def all_code() -> Iterator[tuple[str, str]]:
    for page in PAGES:
        for code in code_of(page.read_text(encoding="utf-8")):
            yield str(page.relative_to(REPO)), code


# -- the generated configuration reference --------------------------------------------------------


@cache
def generator() -> dict[str, Any]:
    return runpy.run_path(str(REPO / "scripts" / "config_reference.py"))


def test_configuration_reference_is_current() -> None:
    """Regenerate with ``.venv/bin/python scripts/config_reference.py`` when this fails."""
    current = (REPO / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert current == generator()["render"](), "docs/configuration.md is stale: run the generator"


def test_configuration_reference_has_every_setting_once() -> None:
    text = (REPO / "docs" / "configuration.md").read_text(encoding="utf-8")
    for variable in Settings.describe():
        assert text.count(f"| `{variable.name}` |") == 1, variable.name


def test_variables_read_outside_the_settings_object_are_listed() -> None:
    gunicorn = (REPO / "docker" / "gunicorn.conf.py").read_text(encoding="utf-8")
    read = set(re.findall(r"""(?:_int_env|os\.environ\.get)\(\s*["'](\w+)["']""", gunicorn))
    assert {"HOST", "PORT", "WEB_CONCURRENCY", "GUNICORN_THREADS"} <= read  # the pattern works
    listed = {name for name, _, _ in generator()["OTHER_VARIABLES"]}
    assert read | {TOKEN_ENV} <= listed


def test_no_other_page_repeats_the_variable_table() -> None:
    """One table: a page may name a variable, but only configuration.md tabulates them."""
    for page in PAGES:
        if page.name == "configuration.md":
            continue
        rows = re.findall(r"^\| `(?:CDS|SMART)_\w+` \|", page.read_text(encoding="utf-8"), re.M)
        assert len(rows) <= 1, (
            f"{page.relative_to(REPO)} tabulates variables: link to configuration.md"
        )


# -- links and headings ---------------------------------------------------------------------------


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    return {slug(h) for h in re.findall(r"^#{1,6} (.+)$", text, re.MULTILINE)}


@pytest.mark.parametrize("page", PAGES, ids=ids(PAGES))
def test_every_relative_link_points_to_something_that_exists(page: Path) -> None:
    broken = []
    for target in LINK.findall(FENCE.sub("", page.read_text(encoding="utf-8"))):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            broken.append(target)
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{target} (no such heading)")
    assert broken == []


def test_the_readme_is_short_and_links_every_doc() -> None:
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= README_MAX_LINES
    linked = {target.partition("#")[0] for target in LINK.findall(text)}
    assert {f"docs/{doc.name}" for doc in DOCS} <= linked


def test_the_design_notes_are_not_cited_as_if_they_were_here() -> None:
    for page in PAGES:
        for target in LINK.findall(page.read_text(encoding="utf-8")):
            assert "clinical-model.md" not in target and "shared/design" not in target, page


# -- what the docs name in code ---------------------------------------------------------------------


def make_targets() -> set[str]:
    text = (REPO / "Makefile").read_text(encoding="utf-8")
    return set(re.findall(r"^([a-z][\w-]*):", text, re.MULTILINE))


def test_every_make_target_named_exists() -> None:
    targets = make_targets()
    named = {
        (where, target)
        for where, code in all_code()
        for target in re.findall(r"(?:^|[\s;(])make ([a-z][\w-]*)", code, re.MULTILINE)
    }
    assert named, "the pattern finds nothing"
    assert sorted((w, t) for w, t in named if t not in targets) == []


def command_uses() -> Iterator[tuple[str, list[str]]]:
    """Each ``hfs-cds WORDS`` in the docs' code, as the words up to a shell operator or comment."""
    for where, code in all_code():
        for line in code.splitlines():
            for match in COMMAND.finditer(line):
                words = match.group(1).split()
                if "docker " in line[: match.start()]:  # the image's name, then maybe a command
                    if words[:1] == ["hfs-cds"]:
                        words.pop(0)
                    elif not words or words[0] not in hfs_cds.commands:
                        continue
                yield where, words


def test_every_hfs_cds_command_and_option_named_exists() -> None:
    problems, seen = [], 0
    for where, words in command_uses():
        command: click.Command = hfs_cds
        while words and isinstance(command, click.Group) and words[0] in command.commands:
            command = command.commands[words.pop(0)]
            seen += 1
        if words and not words[0].startswith("-") and isinstance(command, click.Group):
            if command is not hfs_cds or re.fullmatch(r"[a-z][a-z-]+", words[0]):
                problems.append(f"{where}: no command {words[0]!r} in {command.name}")
            continue
        options = {o for p in command.params for o in (*p.opts, *p.secondary_opts)}
        options |= {"--help", "-h"}
        for word in words:
            option = word.strip("[]()").split("=")[0]
            if re.fullmatch(r"--?[a-z][\w-]*", option) and option not in options:
                problems.append(f"{where}: {command.name} has no option {option}")
    assert seen > 10, "the pattern finds nothing"
    assert problems == []


def test_every_repository_path_named_exists() -> None:
    missing = set()
    for where, code in all_code():
        for token in code.split():
            token = token.strip("\"'(),:;")
            if REPO_PATH.match(token):
                path = token.rstrip("/")
                found = list(REPO.glob(path)) if "*" in path else [REPO / path]
                if not any(p.exists() for p in found):
                    missing.add(f"{where}: {token}")
    assert sorted(missing) == []


@pytest.fixture(scope="module")
def routes() -> Iterator[Any]:
    app = create_app({"TESTING": True, "AUTH_REQUIRED": False})
    yield app.url_map.bind("hfs-cds.test")
    app.extensions["hfs_cds"].close()


def test_every_service_url_path_named_exists(routes: Any) -> None:
    unknown, seen = set(), set()
    for where, code in all_code():
        for path in URL_PATH.findall(OWN_ORIGIN.sub(" ", code)):
            path = path.split("?")[0].rstrip(".")
            path = re.sub(r"\{[^}]+\}|<[^>]+>", "x", path)  # {id}, <ref>: any one segment
            seen.add(path)
            try:
                routes.match(path)
            except MethodNotAllowed:
                pass  # a POST-only route exists
            except NotFound:
                unknown.add(f"{where}: {path}")
    assert {"/cds-services", "/smart/launch", "/model-card", "/healthz", "/readyz"} <= seen
    assert sorted(unknown) == []
