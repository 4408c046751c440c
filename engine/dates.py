"""Dates written the way each of the nine languages writes them, without depending on host locales."""

from __future__ import annotations

from datetime import date, datetime

from engine.languages import template_language

# Month names as data (CLDR "format wide" forms), so output never depends on the host's installed locales.
MONTHS: dict[str, tuple[str, ...]] = {
    "fr": ("janvier", "février", "mars", "avril", "mai", "juin", "juillet", "août", "septembre",
           "octobre", "novembre", "décembre"),
    "en": ("January", "February", "March", "April", "May", "June", "July", "August", "September",
           "October", "November", "December"),
    "es": ("enero", "febrero", "marzo", "abril", "mayo", "junio", "julio", "agosto", "septiembre",
           "octubre", "noviembre", "diciembre"),
    "de": ("Januar", "Februar", "März", "April", "Mai", "Juni", "Juli", "August", "September",
           "Oktober", "November", "Dezember"),
    "pt": ("janeiro", "fevereiro", "março", "abril", "maio", "junho", "julho", "agosto", "setembro",
           "outubro", "novembro", "dezembro"),
    # Russian dates use the genitive: "24 ноября".
    "ru": ("января", "февраля", "марта", "апреля", "мая", "июня", "июля", "августа", "сентября",
           "октября", "ноября", "декабря"),
    "zh": tuple(f"{n}月" for n in range(1, 13)),
    "hi": ("जनवरी", "फ़रवरी", "मार्च", "अप्रैल", "मई", "जून", "जुलाई", "अगस्त", "सितंबर", "अक्तूबर",
           "नवंबर", "दिसंबर"),
    "ar": ("يناير", "فبراير", "مارس", "أبريل", "مايو", "يونيو", "يوليو", "أغسطس", "سبتمبر", "أكتوبر",
           "نوفمبر", "ديسمبر"),
}
DATE_FORMATS: dict[str, str] = {
    "fr": "{day} {month} {year}", "en": "{day} {month} {year}", "es": "{day} de {month} de {year}",
    "de": "{day}. {month} {year}", "pt": "{day} de {month} de {year}", "ru": "{day} {month} {year} г.",
    "zh": "{year}年{month}{day}日", "hi": "{day} {month} {year}", "ar": "{day} {month} {year}",
}


def format_date(value: date | datetime | str, language: str) -> str:
    """`2026-11-24` -> "24 novembre 2026" (fr), "2026年11月24日" (zh), ... from the tables above."""
    if isinstance(value, str):
        value = date.fromisoformat(value[:10])
    lang = template_language(language)
    day: str = str(value.day)
    if lang == "fr" and value.day == 1:
        day = "1er"
    return DATE_FORMATS[lang].format(day=day, month=MONTHS[lang][value.month - 1], year=value.year)
