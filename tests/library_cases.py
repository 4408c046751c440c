"""Every library message in both layouts, rendered for a realistic contact of its language (shared by the
library, checks and browser tests)."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import msgspec

from engine.checks import Message, build_check_message
from engine.layout import Layout
from engine.library import DEFAULT_ROOT, LibraryFile, library_files, library_templates, load_file
from engine.rendering import render_context
from engine.seed import TENANTS
from engine.starters import StarterTemplate

SAMPLE_ROOT = Path(__file__).parent / "data" / "library_sample"

# A contact as the scrapers deliver them in each language: long names and companies included, since those
# are what overflow a 320 px screen.
CONTACTS: dict[str, dict[str, str]] = {
    "fr": {"first_name": "Marie-Christine", "company": "Cabinet Durand & Associés", "website": "https://durand-avocats.example"},
    "en": {"first_name": "Jane", "company": "Smith Whitfield LLP", "website": "https://smithwhitfield.example"},
    "es": {"first_name": "María José", "company": "Bufete García Fernández", "website": "https://garcia-abogados.example"},
    "de": {"first_name": "Hans-Joachim", "company": "Rechtsanwaltskanzlei Müller-Lüdenscheidt", "website": "https://mueller-recht.example"},
    "pt": {"first_name": "João", "company": "Sociedade de Advogados Lisboa", "website": "https://advogados-lisboa.example"},
    "ru": {"first_name": "Екатерина", "company": "Юридическая фирма «Правовед»", "website": "https://pravoved.example"},
    "zh": {"first_name": "王伟", "company": "北京金诚同达律师事务所", "website": "https://jincheng.example"},
    "hi": {"first_name": "राजेश", "company": "शर्मा एंड एसोसिएट्स", "website": "https://sharma-law.example"},
    "ar": {"first_name": "محمد", "company": "مكتب النور للمحاماة والاستشارات", "website": "https://alnoor-law.example"},
}


def sender_of(slug: str) -> dict[str, str]:
    """The seed's sender identity of a tenant, as the book carries it."""
    tenant = next(t for t in TENANTS if t.slug == slug)
    return {"sender_name": tenant.sender_name, "sender_company": tenant.name,
            "sender_address": tenant.sender_address, "sender_website": tenant.sender_website}


class Case(msgspec.Struct, frozen=True, kw_only=True):
    file: str
    tenant: str
    template: StarterTemplate
    layout: str

    @property
    def id(self) -> str:
        return f"{self.tenant}/{self.template.category}/{self.template.step}/{self.template.language}/{self.layout}"


@cache
def library_paths() -> tuple[Path, ...]:
    """The library's files, and the suite's own sample so the checks always have something to run on."""
    return tuple(library_files(DEFAULT_ROOT)) + tuple(library_files(SAMPLE_ROOT))


@cache
def loaded(path: Path) -> LibraryFile:
    return load_file(path)


@cache
def cases() -> tuple[Case, ...]:
    out = []
    for path in library_paths():
        file = loaded(path)
        for template in library_templates(file):
            for layout in Layout:
                out.append(Case(file=str(path), tenant=file.tenant, template=template, layout=layout.value))
    return tuple(out)


@cache
def message(case: Case) -> Message:
    """Built once per run: the checks and the browser test share it."""
    t = case.template
    return build_check_message(subject=t.subject, body_html=t.body_html, body_text=t.body_text,
                               variables=t.variables, language=t.language, layout=case.layout,
                               preheader=t.preheader, title=None, context=render_context(CONTACTS[t.language]),
                               sender=sender_of(case.tenant))
