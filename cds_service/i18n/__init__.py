"""Languages: which ones exist, how a request's language is chosen, and the message catalogues.

Every text a person reads comes from a gettext catalogue (``locales/<locale>/LC_MESSAGES/
messages.mo``, compiled from the ``.po`` files by ``python -m cds_service.i18n compile`` and
committed; a test fails when a ``.mo`` is stale or a message has no translation). English is the
source language: its catalogue exists for plural rules and completeness, and its messages are the
msgids themselves.

Locale names: ``en`` and ``zh_Hans`` inside (Babel/gettext spelling); BCP 47 tags such as
``zh-Hans``, ``zh-CN`` or ``en-GB`` are accepted wherever a person or an EHR names a language.
"""

from __future__ import annotations

import gettext
from functools import lru_cache
from pathlib import Path
from typing import Final, Literal

Locale = Literal["en", "zh_Hans"]

DEFAULT: Final[Locale] = "en"
SUPPORTED: Final[tuple[Locale, ...]] = ("en", "zh_Hans")
#: The BCP 47 tag of each locale, for HTML ``lang`` and the model card's translations block.
BCP47: Final[dict[Locale, str]] = {"en": "en", "zh_Hans": "zh-Hans"}
LOCALES_DIR: Final = Path(__file__).with_name("locales")
DOMAIN: Final = "messages"

# Chinese tags that mean Simplified script (zh-TW, zh-HK and zh-Hant are Traditional: not offered).
_SIMPLIFIED = {"zh", "zh-hans", "zh-cn", "zh-sg", "zh-my", "zh-hans-cn", "zh-hans-sg"}


def normalize(tag: str | None) -> Locale | None:
    """The supported locale a language tag names, or None (``"zh-CN"`` → ``"zh_Hans"``).

    Traditional Chinese (``zh-TW``, ``zh-Hant``) is not Simplified: None, so the caller falls back
    rather than showing a reader of Traditional script the Simplified texts unasked.
    """
    if not tag:
        return None
    t = tag.strip().replace("_", "-").lower()
    if t == "en" or t.startswith("en-"):
        return "en"
    if t in _SIMPLIFIED:
        return "zh_Hans"
    return None


def parse(tag: str) -> Locale:
    """A configured language (``CDS_LANGUAGE``, the trust list, ``--lang``): unsupported → ValueError."""
    locale = normalize(tag)
    if locale is None:
        raise ValueError(
            f"unsupported language {tag!r}; expected one of "
            + ", ".join(BCP47[s] for s in SUPPORTED)
        )
    return locale


def negotiate(accept_language: str | None, default: Locale = DEFAULT) -> Locale:
    """The best supported locale for an ``Accept-Language`` header (RFC 9110 §12.5.4 weights)."""
    if not accept_language:
        return default
    best: tuple[float, int, Locale] | None = None
    for position, part in enumerate(accept_language.split(",")):
        tag, _, params = part.strip().partition(";")
        q = 1.0
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key.lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        locale = normalize(tag)
        if locale is not None and q > 0 and (best is None or (q, -position) > best[:2]):
            best = (q, -position, locale)
    return best[2] if best else default


@lru_cache(maxsize=len(SUPPORTED))
def translations(locale: Locale) -> gettext.NullTranslations:
    """The compiled catalogue of a locale, read once per process (the hot path only looks it up).

    A missing catalogue is a packaging error: it raises FileNotFoundError at first use, which
    ``create_app`` makes start-up (``warm_up``, from the SMART blueprint's registration), never
    silently English.
    """
    if locale == DEFAULT:
        # The source language: msgids are the English texts; the catalogue gives plural rules only.
        path = LOCALES_DIR / locale / "LC_MESSAGES" / f"{DOMAIN}.mo"
        if not path.exists():
            return gettext.NullTranslations()
    with (LOCALES_DIR / locale / "LC_MESSAGES" / f"{DOMAIN}.mo").open("rb") as f:
        return gettext.GNUTranslations(f)


def warm_up() -> None:
    """Load every catalogue now, so a broken install fails at start-up, not on a patient's card."""
    for locale in SUPPORTED:
        translations(locale)
