"""Email templates: save-time checks, versions, the selection chain, rendering, and the dispatcher's book."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import re
from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import asyncpg
import msgspec

from engine import spintax
from engine.errors import Invalid, NotFound, TooLarge, Unprocessable
from engine.identities import resolve_identity
from engine.languages import LANGUAGES, normalise_language, template_language
from engine.layout import Layout, compile_email, render_email
from engine.library import library_templates, load_library
from engine.rendering import (
    CONTACT_FIELDS,
    DEFAULT_CACHE,
    MAX_BODY_BYTES,
    MAX_SUBJECT_CHARS,
    CompiledTemplate,
    TemplateCache,
    TemplateRejected,
    check_template,
    invalidate,
    render_context,
    template_variables,
)
from engine.starters import starter_templates
from sql import q

log = logging.getLogger(__name__)

PAGE_MAX = 200
# Rungs of the selection chain, in the seed's order; `matched` in answers is one of these.
RUNGS = ("language+category", "language", "en+category", "en")

# Names every render provides, so a template may use them without declaring them (the sender_* ones are the
# sender identity, engine/identities.py).
PROVIDED = frozenset({"unsubscribe_url", "unsubscribeUrl", "today", "custom", "template_language", "preheader",
                      "title", "brand", "sender_address", "sender_name", "sender_company", "sender_website"})
CONTACT_NAMES = frozenset(n for pair in CONTACT_FIELDS for n in pair if n)

Name = Annotated[str, msgspec.Meta(min_length=1, max_length=200, examples=["Cold - Avocat FR"])]
Category = Annotated[str, msgspec.Meta(max_length=100, examples=["avocat"],
                                       description="audience category; null or absent: the language's general template")]
Subject = Annotated[str, msgspec.Meta(min_length=1, examples=["Développez votre cabinet avec SOS Expat"],
                                      description=f"Jinja or {{placeholder}}; one line, at most {MAX_SUBJECT_CHARS} chars")]
Body = Annotated[str, msgspec.Meta(examples=["<p>Bonjour {firstName},</p>"],
                                   description=f"Jinja or {{placeholder}}; at most {MAX_BODY_BYTES} bytes")]
Variable = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")]
Variables = Annotated[list[Variable], msgspec.Meta(max_length=100, examples=[["firstName", "company", "website"]])]
Language = Annotated[str, msgspec.Meta(min_length=2, max_length=35, examples=["fr"],
                                       description="one of fr en es de pt ru zh hi ar (fr-FR is read as fr)")]
Preheader = Annotated[str, msgspec.Meta(max_length=500, examples=["Deux lignes sur votre cabinet"],
                                        description="plain text shown after the subject in the inbox")]
Title = Annotated[str, msgspec.Meta(max_length=500, description="plain text; null: the rendered subject")]


class TemplateStep(StrEnum):
    """A template's role in a sequence: the first message, or one of the two follow-ups."""

    OPENING = "opening"
    FOLLOW_UP_1 = "follow_up_1"
    FOLLOW_UP_2 = "follow_up_2"


class Template(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    tenant_id: int
    name: str
    language: str
    category: str | None
    subject: str
    body_html: str
    # None: the text part is derived from the HTML at render time
    body_text: str | None
    variables: list[str]
    active: bool
    version: int
    created_at: dt.datetime
    updated_at: dt.datetime
    layout: Layout = Layout.BRANDED
    step: TemplateStep | None = None
    preheader: str | None = None
    title: str | None = None


class SelectedTemplate(Template, frozen=True, kw_only=True):
    """A template chosen by the selection chain, with the rung that matched."""

    matched: str


class TemplateVersion(msgspec.Struct, frozen=True, kw_only=True):
    template_id: int
    version: int
    language: str
    subject: str
    body_html: str
    body_text: str | None
    variables: list[str]
    created_at: dt.datetime
    layout: Layout = Layout.BRANDED
    preheader: str | None = None
    title: str | None = None


class LibraryEntry(msgspec.Struct, frozen=True, kw_only=True):
    """A line of the library index: which template plays which step for a category and language."""

    id: int
    name: str
    language: str
    category: str | None
    step: TemplateStep | None
    layout: Layout
    active: bool


class LibraryGroup(msgspec.Struct, frozen=True, kw_only=True):
    """One category's templates for one step role, in every language it has."""

    category: str | None
    step: TemplateStep | None
    templates: list[LibraryEntry]


class TemplatePage(msgspec.Struct, frozen=True, kw_only=True):
    items: list[Template]
    next_cursor: str | None


class TemplateCreate(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A new template; the seed's curl payload is one of these."""

    tenant_id: Annotated[int, msgspec.Meta(gt=0, examples=[1])]
    name: Name
    language: Language
    subject: Subject
    body_html: Body
    category: Category | None = None
    body_text: Body | None = None
    variables: Variables | None = None
    active: bool = True
    layout: Layout = Layout.PERSONAL
    step: TemplateStep | None = None
    preheader: Preheader | None = None
    title: Title | None = None


class TemplateUpdate(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Fields to change (absent = keep; body_text/category null = derived/general)."""

    name: Name | msgspec.UnsetType = msgspec.UNSET
    language: Language | msgspec.UnsetType = msgspec.UNSET
    category: Category | None | msgspec.UnsetType = msgspec.UNSET
    subject: Subject | msgspec.UnsetType = msgspec.UNSET
    body_html: Body | msgspec.UnsetType = msgspec.UNSET
    body_text: Body | None | msgspec.UnsetType = msgspec.UNSET
    variables: Variables | None | msgspec.UnsetType = msgspec.UNSET
    active: bool | msgspec.UnsetType = msgspec.UNSET
    layout: Layout | msgspec.UnsetType = msgspec.UNSET
    step: TemplateStep | None | msgspec.UnsetType = msgspec.UNSET
    preheader: Preheader | None | msgspec.UnsetType = msgspec.UNSET
    title: Title | None | msgspec.UnsetType = msgspec.UNSET


class RenderedTemplate(msgspec.Struct, frozen=True, kw_only=True):
    subject: str
    html: str
    text: str
    template_id: int
    version: int
    language: str


# --- save-time rules ---------------------------------------------------------------------------------------

def clean_language(raw: str) -> str:
    lang = normalise_language(raw)
    if lang not in LANGUAGES:
        raise Invalid(f"language: expected one of {' '.join(sorted(LANGUAGES))}, got {raw!r}", field="language")
    return lang


def clean_category(raw: str | None) -> str | None:
    """Trimmed and lowercased (contacts arrive as `Avocat` or `avocat`); empty means general."""
    if raw is None:
        return None
    return raw.strip().lower() or None


def check_sources(subject: str, body_html: str, body_text: str | None, declared: list[str] | None) -> list[str]:
    """Refuse what may not be saved; return the variables to store (declared, or those the template uses)."""
    if "\r" in subject or "\n" in subject:
        raise Invalid("subject: line breaks are not allowed (header injection)", field="subject")
    if len(subject) > MAX_SUBJECT_CHARS:
        raise Invalid(f"subject: longer than {MAX_SUBJECT_CHARS} characters", field="subject")
    for field, source in (("body_html", body_html), ("body_text", body_text)):
        if source is not None and len(source.encode()) > MAX_BODY_BYTES:
            raise TooLarge(f"{field}: larger than {MAX_BODY_BYTES} bytes", field=field)
    for field, source in (("subject", subject), ("body_html", body_html), ("body_text", body_text)):
        if source is not None:
            spintax.check(source, field)   # an unbalanced brace: 422 naming its position
    # What is left is the template language itself: syntax errors and everything the sandbox policy refuses.
    problems = check_template(subject, body_html, body_text)
    if problems:
        raise Unprocessable(problems[0].message, field=problems[0].field,
                            extra={"problems": [{"field": p.field, "reason": p.reason} for p in problems]})
    used = {}
    for field, source in (("subject", subject), ("body_html", body_html), ("body_text", body_text)):
        for name in template_variables(source) - PROVIDED:
            used.setdefault(name, field)
    if declared is None:
        return sorted(used)
    # A declared list catches typos ({{ frist_name }}) and forgotten custom fields before a campaign does.
    for name, field in sorted(used.items()):
        if name not in declared and name not in CONTACT_NAMES:
            raise Unprocessable(f"{field}: uses {name!r}, which is not in variables", field=field,
                                extra={"variable": name})
    return list(dict.fromkeys(declared))


def clean_line(raw: str | None) -> str | None:
    """A preheader or title: one line (breaks become spaces), trimmed; empty means none."""
    if raw is None:
        return None
    return " ".join(raw.split()) or None


def requested_language(raw: str | None) -> str:
    """`fr-FR` -> `fr`; a language outside the nine stays as asked, so only the English rungs can match it."""
    return normalise_language(raw) or "en"


def _template(row: asyncpg.Record | None, template_id: int) -> Template:
    if row is None:
        raise NotFound(f"template {template_id} not found")
    return Template(**row)


# --- storage ---------------------------------------------------------------------------------------------

async def create_template(db: asyncpg.Connection, data: TemplateCreate) -> Template:
    """Names need not be unique: POSTing the seed's example next to the seeded starter creates a second one."""
    language = clean_language(data.language)
    variables = check_sources(data.subject, data.body_html, data.body_text, data.variables)
    try:
        row = await db.fetchrow(q("templates-create"), data.tenant_id, data.name, language,
                                clean_category(data.category), data.subject, data.body_html, data.body_text,
                                variables, data.active, data.layout, data.step, clean_line(data.preheader),
                                clean_line(data.title))
    except asyncpg.ForeignKeyViolationError as exc:
        raise NotFound(f"tenant {data.tenant_id} not found", field="tenant_id") from exc
    return Template(**row)


async def list_templates(db: asyncpg.Connection, tenant_id: int, *, language: str | None = None,
                         category: str | None = None, active: bool | None = None, cursor: str | None = None,
                         limit: int = 50, step: TemplateStep | None = None) -> TemplatePage:
    after = 0
    if cursor:
        if not cursor.isdigit() or len(cursor) > 19:
            raise Invalid("cursor: pass back the next_cursor of the previous page", field="cursor")
        after = int(cursor)
    lang = clean_language(language) if language else None
    rows = await db.fetch(q("templates-list"), tenant_id, lang, clean_category(category), active, after, limit,
                          step)
    items = [Template(**r) for r in rows]
    return TemplatePage(items=items, next_cursor=str(items[-1].id) if len(items) == limit else None)


async def list_library(db: asyncpg.Connection, tenant_id: int, category: str | None = None) -> list[LibraryGroup]:
    """The tenant's templates grouped by category, then step role; each group lists its languages."""
    groups: list[LibraryGroup] = []
    for row in await db.fetch(q("templates-library"), tenant_id, clean_category(category)):
        entry = LibraryEntry(**row)
        if not groups or (groups[-1].category, groups[-1].step) != (entry.category, entry.step):
            groups.append(LibraryGroup(category=entry.category, step=entry.step, templates=[]))
        groups[-1].templates.append(entry)
    return groups


async def get_template(db: asyncpg.Connection, tenant_id: int, template_id: int) -> Template:
    return _template(await db.fetchrow(q("templates-get"), tenant_id, template_id), template_id)


async def update_template(db: asyncpg.Connection, tenant_id: int, template_id: int,
                          changes: TemplateUpdate) -> Template:
    """Apply changes; a change to what renders (language, subject, bodies, variables) makes a new version."""
    current = _template(await db.fetchrow(q("templates-lock"), tenant_id, template_id), template_id)

    def pick(name: str) -> Any:
        value = getattr(changes, name)
        return getattr(current, name) if value is msgspec.UNSET else value

    language = clean_language(pick("language"))
    subject, body_html, body_text = pick("subject"), pick("body_html"), pick("body_text")
    declared = pick("variables")
    variables = check_sources(subject, body_html, body_text, declared)
    layout, preheader, title = pick("layout"), clean_line(pick("preheader")), clean_line(pick("title"))
    content = (language, subject, body_html, body_text, variables, layout, preheader, title)
    bumped = content != (current.language, current.subject, current.body_html, current.body_text,
                         current.variables, current.layout, current.preheader, current.title)
    version = current.version + 1 if bumped else current.version
    row = await db.fetchrow(q("templates-update"), tenant_id, template_id, pick("name"), language,
                            clean_category(pick("category")), subject, body_html, body_text, variables, version,
                            pick("active"), layout, pick("step"), preheader, title)
    invalidate(template_id)
    return Template(**row)


async def delete_template(db: asyncpg.Connection, tenant_id: int, template_id: int) -> None:
    """Soft delete: gone from listings and selection; its versions stay for the sends that used them."""
    if await db.fetchval(q("templates-delete"), tenant_id, template_id) is None:
        raise NotFound(f"template {template_id} not found")
    invalidate(template_id)


async def list_versions(db: asyncpg.Connection, tenant_id: int, template_id: int) -> list[TemplateVersion]:
    rows = await db.fetch(q("templates-list-versions"), tenant_id, template_id)
    if not rows:
        raise NotFound(f"template {template_id} not found")
    return [TemplateVersion(**r) for r in rows]


async def get_template_version(db: asyncpg.Connection, tenant_id: int, template_id: int,
                               version: int) -> TemplateVersion:
    """The exact version a send used (deleted templates included)."""
    row = await db.fetchrow(q("templates-get-version"), tenant_id, template_id, version)
    if row is None:
        raise NotFound(f"template {template_id} version {version} not found")
    return TemplateVersion(**row)


async def select_template(db: asyncpg.Connection, tenant_id: int, language: str | None,
                          category: str | None) -> tuple[Template, str]:
    """The seed's chain: language+category, language general, en+category, en general; (template, rung)."""
    lang, cat = requested_language(language), clean_category(category)
    row = await db.fetchrow(q("templates-select"), tenant_id, lang, cat)
    if row is None:
        looked = f"language {lang!r}" + (f", category {cat!r}" if cat else " (general)")
        raise NotFound(f"no active template for {looked}, nor in English", extra={"language": lang, "category": cat})
    found = SelectedTemplate(**row)
    return found, found.matched


async def seed_starters(db: asyncpg.Connection, tenant_id: int, tenant_slug: str | None = None,
                        library_root: Path | None = None) -> int:
    """Load the starters, and the tenant's library when it has one; a template already there by (name,
    language) is left alone, so the seed is idempotent and keeps a tenant's edits. Returns how many were added."""
    starters = starter_templates()
    if tenant_slug is not None:
        for file in load_library(library_root, tenant_slug):
            starters.extend(library_templates(file))
    rows = [{"name": s.name, "language": s.language, "category": clean_category(s.category), "subject": s.subject,
             "body_html": s.body_html, "body_text": s.body_text,
             "variables": list(s.variables) or sorted(template_variables(s.subject, s.body_html, s.body_text)
                                                      - PROVIDED),
             "layout": s.layout or Layout.BRANDED, "step": s.step, "preheader": s.preheader} for s in starters]
    return await db.fetchval(q("templates-seed-starters"), tenant_id, rows)


# --- rendering ---------------------------------------------------------------------------------------------

# What a preview shows for a contact nobody chose: plausible values, so the layout can be judged as sent.
SAMPLE_CONTACT = {"first_name": "Camille", "last_name": "Martin", "company": "Martin & Associés",
                  "website": "https://www.martin-associes.example", "email": "camille.martin@example.test",
                  "country": "FR"}


def cache_key(template: Template | TemplateVersion) -> tuple[int, int, int]:
    """(id, version, fingerprint): the fingerprint guards against two databases sharing ids in one process
    (tests); it is cheap because a str caches its hash, and the book hands out the same strings every time."""
    template_id = template.id if isinstance(template, Template) else template.template_id
    return template_id, template.version, hash((template.language, template.subject, template.body_html,
                                                template.body_text, template.layout, template.preheader,
                                                template.title))


def compiled_version(template: Template | TemplateVersion, cache: TemplateCache = DEFAULT_CACHE) -> CompiledTemplate:
    """The version compiled inside its language's layout, from the process cache."""
    return compile_email(template.subject, template.body_html, template.body_text, language=template.language,
                         layout=template.layout, preheader=template.preheader, title=template.title,
                         cache_key=cache_key(template), cache=cache)


def render_compiled(template: Template | TemplateVersion, context: Mapping[str, Any]) -> RenderedTemplate:
    """One message from a template version; MissingVariable (422) names what the context lacks."""
    try:
        email = render_email(compiled_version(template), context)
    except TemplateRejected as exc:
        # Refused at save time already; reaching here means an unsafe value met the sandbox: harmless, 422.
        raise Unprocessable(exc.message, field=exc.field) from None
    template_id = template.id if isinstance(template, Template) else template.template_id
    return RenderedTemplate(subject=email.subject, html=email.html, text=email.text, template_id=template_id,
                            version=template.version, language=template.language)


async def contact_fields(db: asyncpg.Connection, tenant_id: int, contact_id: int) -> dict[str, Any]:
    """One of the tenant's contacts as template fields; another tenant's contact is not found."""
    row = await db.fetchrow(q("templates-contact"), tenant_id, contact_id)
    if row is None:
        raise NotFound(f"contact {contact_id} not found", field="contact_id")
    return dict(row)


async def render_template(db: asyncpg.Connection, tenant_id: int, template_id: int, *, unsubscribe_url: str,
                          variables: Mapping[str, Any] | None = None, contact_id: int | None = None,
                          version: int | None = None, sample: bool = False) -> RenderedTemplate:
    """Render the current (or a given) version for a contact, for explicit variables, or both (variables win)."""
    template: Template | TemplateVersion = await get_template(db, tenant_id, template_id)
    if version is not None and version != template.version:
        template = await get_template_version(db, tenant_id, template_id, version)
    contact: dict[str, Any] = {}
    if contact_id is not None:
        contact = await contact_fields(db, tenant_id, contact_id)
    elif sample:
        # Other variables show as their own name in brackets, so the preview says where each one goes.
        used = set(template.variables) | template_variables(template.subject, template.body_html, template.body_text)
        contact = {n: f"[{n}]" for n in used - PROVIDED - CONTACT_NAMES} | SAMPLE_CONTACT
        if "sender_name" in used:
            contact = {"sender_name": "[sender_name]"} | contact  # under the tenant's identity, when it has one
    given = dict(variables or {})
    for snake, camel in CONTACT_FIELDS:  # `firstName` given explicitly beats the contact's `first_name`
        if camel and camel in given:
            given[snake] = given.pop(camel)
    fields = contact | (await resolve_identity(db, tenant_id)).context() | given
    context = render_context(fields, contact.get("custom") or None, unsubscribe_url,
                             {k: v for k, v in fields.items() if k not in CONTACT_NAMES and k != "custom"})
    return render_compiled(template, context)


# --- the dispatcher's book ---------------------------------------------------------------------------------

class TemplateBook:
    """A tenant's live templates in memory: the selection chain with no query per message.

    A book is a snapshot: the dispatcher loads one per batch, so an edit reaches the next batch. Compiled
    templates are cached by (id, version), so no process can render an old version from a fresh book.
    """

    def __init__(self, tenant_id: int, templates: list[Template], cache: TemplateCache = DEFAULT_CACHE,
                 sender: Mapping[str, str] | None = None) -> None:
        self.tenant_id = tenant_id
        self.cache = cache
        # The sender identity (engine/identities.py) every message of this book shows, as template variables.
        self.sender: dict[str, str] = dict(sender or {})
        self.by_id = {t.id: t for t in templates}
        self._compiled: dict[int, CompiledTemplate] = {}
        # Rows come in id order, so a later template on the same (language, category) replaces an earlier one:
        # the newest wins, a one-off template (no step role) over a sequence's opening, and follow-ups are
        # never chosen by the chain, as in `templates-select`.
        self._slots: dict[tuple[str, str | None], Template] = {}
        for t in templates:
            if t.step not in (None, "opening"):
                continue
            held = self._slots.get((t.language, t.category))
            if held is None or t.step is None or held.step is not None:
                self._slots[(t.language, t.category)] = t

    def __len__(self) -> int:
        return len(self.by_id)

    def select(self, language: str | None, category: str | None) -> tuple[Template, str] | None:
        """The chain of `select_template`, in memory: (template, rung) or None."""
        lang, cat = requested_language(language), clean_category(category)
        for rung, key in zip(RUNGS, ((lang, cat), (lang, None), ("en", cat), ("en", None)), strict=True):
            if key[1] is None and rung in ("language+category", "en+category"):
                continue
            found = self._slots.get(key)
            if found is not None:
                return found, rung
        return None

    def choose(self, language: str | None, category: str | None,
               overrides: Mapping[str, int] | None = None) -> Template | None:
        """The campaign's template for this language if it chose one and it is live, else the chain's."""
        if overrides:
            chosen = overrides.get(template_language(language))
            if chosen is not None and chosen in self.by_id:
                return self.by_id[chosen]
        found = self.select(language, category)
        return found[0] if found else None

    def compiled(self, template: Template) -> CompiledTemplate:
        """Compiled once per process per version (cache key: id, version, content fingerprint)."""
        # The book's own templates are fixed for its life: the process cache is asked once per book, not once
        # per message (its key hashes the template's text). A spun copy is not the book's and goes to the cache.
        if self.by_id.get(template.id) is not template:
            return compiled_version(template, self.cache)
        found = self._compiled.get(template.id)
        if found is None:
            found = self._compiled[template.id] = compiled_version(template, self.cache)
        return found


async def load_template_book(db: asyncpg.Connection | asyncpg.Pool, tenant_id: int,
                             campaign_id: int | None = None) -> TemplateBook:
    """Every live template of the tenant, and the sender identity (the campaign's overrides over the tenant's)."""
    rows = await db.fetch(q("templates-book"), tenant_id)
    sender = await resolve_identity(db, tenant_id, campaign_id)
    return TemplateBook(tenant_id, [Template(**r) for r in rows], sender=sender.context())


# --- invalidation across processes -------------------------------------------------------------------------

def invalidation_channel(namespace: str) -> str:
    return f"{namespace}:templates:invalidate"


async def publish_invalidation(redis: Any, namespace: str, template_id: int) -> None:
    """Tell every process to drop the template's compiled versions (memory; correctness needs no message)."""
    await redis.publish(invalidation_channel(namespace), str(template_id))


async def follow_invalidations(redis: Any, namespace: str, cache: TemplateCache = DEFAULT_CACHE,
                               ready: asyncio.Event | None = None) -> None:
    """Drop compiled versions as edits are announced; runs until cancelled."""
    pubsub = redis.pubsub()
    await pubsub.subscribe(invalidation_channel(namespace))
    if ready is not None:
        ready.set()
    try:
        async for message in pubsub.listen():
            data = message.get("data")
            if message.get("type") == "message" and re.fullmatch(rb"\d{1,19}", data if isinstance(data, bytes) else b""):
                invalidate(int(data), cache)
    finally:
        await pubsub.aclose()
