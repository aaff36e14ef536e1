"""Keeping the message catalogues in step with the code (Babel): extract, update, compile, check.

``python -m cds_service.i18n update`` extracts every marked message (``gettext``/``ngettext``/``_``
in Python, ``{% trans %}`` and ``_()`` in the Jinja templates) into ``messages.pot`` and merges it
into each ``.po``; a translator fills the new ``msgstr``; ``compile`` writes the ``.mo`` files the
service reads; ``check`` (also a test) fails on an untranslated or fuzzy message and on a ``.mo``
that is not the compilation of its ``.po``.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

from babel.messages.catalog import Catalog
from babel.messages.extract import extract_from_dir
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po, write_po

from cds_service.i18n import DOMAIN, LOCALES_DIR, SUPPORTED, Locale

PACKAGE_DIR = Path(__file__).resolve().parent.parent  # cds_service/
POT = LOCALES_DIR / f"{DOMAIN}.pot"
METHOD_MAP = [
    ("i18n/**", "ignore"),
    ("**.py", "python"),
    ("**/templates/**.html", "jinja2.ext:babel_extract"),
]
OPTIONS = {"**/templates/**.html": {"extensions": "jinja2.ext.i18n", "newstyle_gettext": "true"}}
# Message comments starting "i18n:" reach the translator (context the msgid alone does not give).
COMMENT_TAGS = ["i18n:"]


def po_path(locale: Locale) -> Path:
    return LOCALES_DIR / locale / "LC_MESSAGES" / f"{DOMAIN}.po"


def mo_path(locale: Locale) -> Path:
    return po_path(locale).with_suffix(".mo")


def extract() -> Catalog:
    """Every message marked in the package's Python and templates."""
    catalog = Catalog(project="hfs-cds", domain=DOMAIN, charset="utf-8")
    found = extract_from_dir(
        PACKAGE_DIR, METHOD_MAP, OPTIONS, comment_tags=COMMENT_TAGS, strip_comment_tags=True
    )
    for filename, lineno, message, comments, context in found:
        path = (PACKAGE_DIR.name + "/" + filename).replace("\\", "/")
        catalog.add(message, None, [(path, lineno)], auto_comments=comments, context=context)
    return catalog


def read(locale: Locale) -> Catalog:
    with po_path(locale).open("rb") as f:
        return read_po(f, locale=locale, domain=DOMAIN)


def update() -> None:
    """Write messages.pot and merge it into every .po (new messages arrive untranslated)."""
    template = extract()
    POT.parent.mkdir(parents=True, exist_ok=True)
    with POT.open("wb") as f:
        write_po(f, template, omit_header=False, sort_output=True, width=100)
    for locale in SUPPORTED:
        path = po_path(locale)
        if path.exists():
            catalog = read(locale)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            catalog = Catalog(locale=locale, domain=DOMAIN, project="hfs-cds", charset="utf-8")
        catalog.update(template, no_fuzzy_matching=True)
        catalog.obsolete.clear()  # a removed message leaves no stale translation behind
        with path.open("wb") as f:
            write_po(f, catalog, sort_output=True, width=100, ignore_obsolete=True)


def compiled(locale: Locale) -> bytes:
    """The .mo bytes of a locale's .po (deterministic: the same .po gives the same bytes)."""
    buf = io.BytesIO()
    write_mo(buf, read(locale), use_fuzzy=False)
    return buf.getvalue()


def compile_all() -> None:
    for locale in SUPPORTED:
        mo_path(locale).write_bytes(compiled(locale))


def problems() -> Iterator[str]:
    """Why the catalogues are not ready to ship; nothing when they are."""
    source = {(m.id if isinstance(m.id, str) else m.id[0]) for m in extract() if m.id}
    for locale in SUPPORTED:
        if not po_path(locale).exists():
            yield f"{locale}: no catalogue at {po_path(locale)}"
            continue
        catalog = read(locale)
        ids = {(m.id if isinstance(m.id, str) else m.id[0]) for m in catalog if m.id}
        for missing in sorted(source - ids):
            yield f"{locale}: message not in the catalogue (run update): {missing!r}"
        for stale in sorted(ids - source):
            yield f"{locale}: message no longer in the code (run update): {stale!r}"
        if locale != "en":
            for m in catalog:
                if not m.id:
                    continue
                strings = m.string if isinstance(m.string, tuple) else (m.string,)
                if m.fuzzy or not all(strings):
                    yield f"{locale}: untranslated or fuzzy: {m.id!r}"
                for error in m.check(catalog):
                    yield f"{locale}: {m.id!r}: {error}"
        if not mo_path(locale).exists() or mo_path(locale).read_bytes() != compiled(locale):
            yield f"{locale}: {mo_path(locale).name} is not the compilation of its .po (run compile)"
