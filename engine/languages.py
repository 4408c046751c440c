"""The nine template languages, their normalisation and their writing direction."""

from __future__ import annotations

from enum import StrEnum


class Language(StrEnum):
    FR = "fr"
    EN = "en"
    ES = "es"
    DE = "de"
    PT = "pt"
    RU = "ru"
    ZH = "zh"
    HI = "hi"
    AR = "ar"


LANGUAGES: frozenset[str] = frozenset(lang.value for lang in Language)
FALLBACK = Language.EN
RTL: frozenset[str] = frozenset({Language.AR.value})


def normalise_language(raw: str | None) -> str | None:
    """`fr-FR`, `FR`, `pt_BR` -> `fr`, `fr`, `pt`; an unknown tag is kept as given (stripped)."""
    if raw is None:
        return None
    value = raw.strip()
    if not value:
        return None
    primary = value.replace("_", "-").split("-", 1)[0].lower()
    return primary if primary in LANGUAGES else value


def template_language(language: str | None) -> str:
    """The language a template is chosen in: one of the nine, English for anything else."""
    lang = normalise_language(language)
    return lang if lang in LANGUAGES else FALLBACK.value


def direction(language: str | None) -> str:
    """`rtl` for right-to-left scripts, else `ltr`."""
    return "rtl" if template_language(language) in RTL else "ltr"
