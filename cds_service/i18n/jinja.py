"""The catalogues in Jinja templates: Jinja's own i18n extension, with the callables per render.

Flask renders every request with one shared Jinja environment, so installing a locale's callables
as the environment's globals would let one request's language leak into another's. Instead the
environment gets the extension once with English (null) callables and *newstyle* gettext (Jinja
formats ``%(name)s`` itself and escapes the values under autoescape), and each page passes its
locale's callables in the render context (:func:`template_context`), which wins over globals.
Babel extracts ``{% trans %}`` blocks and ``_()`` calls from the templates
(:mod:`cds_service.i18n.catalogues`).

Flask-Babel would do the same with a per-request locale selector, but it is one more dependency,
and the service chooses the locale itself (trust list, launch ``locale``, ``Accept-Language``).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from jinja2 import Environment
from jinja2.runtime import Context
from jinja2.utils import pass_context
from markupsafe import Markup

from cds_service.i18n import BCP47, Locale, translations


def install(env: Environment) -> None:
    """Add the i18n extension to an environment once (English until a page passes its own)."""
    if "jinja2.ext.InternationalizationExtension" not in env.extensions:
        env.add_extension("jinja2.ext.i18n")
        env.install_null_translations(newstyle=True)  # type: ignore[attr-defined]


@lru_cache(maxsize=8)
def template_context(locale: Locale) -> dict[str, Any]:
    """``gettext``, ``ngettext``, ``_`` and ``lang`` (the BCP 47 tag) for one locale's pages."""
    t = translations(locale)

    @pass_context
    def gettext(context: Context, message: str, **variables: Any) -> str:
        text = t.gettext(message)
        if context.eval_ctx.autoescape:
            text = Markup(text)
        return text % variables  # newstyle: "%%" for a literal percent sign, always

    @pass_context
    def ngettext(context: Context, singular: str, plural: str, n: int, **variables: Any) -> str:
        variables.setdefault("num", n)
        text = t.ngettext(singular, plural, n)
        if context.eval_ctx.autoescape:
            text = Markup(text)
        return text % variables

    return {"gettext": gettext, "ngettext": ngettext, "_": gettext, "lang": BCP47[locale]}
