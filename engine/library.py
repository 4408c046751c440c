"""The template library: per tenant and prospect category, an opening and two follow-ups in nine languages.

Copy lives in `engine/starters/library/<tenant slug>/<category>.toml`, written as plain text by people who
write in each language; this module reads a directory of such files, refuses one that is incomplete, and turns
each message into a template (plain paragraphs become HTML, the one bare link becomes an anchor).
"""

from __future__ import annotations

import html
import re
import tomllib
from importlib.resources import files
from pathlib import Path

import msgspec

from engine.languages import LANGUAGES
from engine.rendering import template_variables
from engine.starters import StarterTemplate

# The files' fixed shape: every language has every step, and each step these keys.
STEPS = ("opening", "follow_up_1", "follow_up_2")
STEP_LABELS = {"opening": "opening", "follow_up_1": "follow-up 1", "follow_up_2": "follow-up 2"}
MESSAGE_KEYS = frozenset({"subject", "preheader", "body"})
# The variables a library message may use: the contact's and the sender identity's (engine/identity.py).
LIBRARY_VARIABLES = ("first_name", "company", "website", "sender_name", "sender_company", "sender_website")

DEFAULT_ROOT = Path(str(files("engine.starters").joinpath("library")))

# A bare absolute URL in the copy, or a variable that holds one: each becomes a link.
_LINK = re.compile(r"https?://[^\s<>\"']+[^\s<>\"'.,;:!?)]|\{\{\s*(?:sender_website|website)\s*\}\}")
_JINJA = re.compile(r"\{\{.*?\}\}|\{%.*?%\}|\{#.*?#\}", re.S)
_BLANK = re.compile(r"\n[ \t]*\n")


class LibraryError(ValueError):
    """A library file that does not have the fixed shape; the message names the file and the key."""


class LibraryMessage(msgspec.Struct, frozen=True, kw_only=True):
    subject: str
    preheader: str
    body: str


class LibraryFile(msgspec.Struct, frozen=True, kw_only=True):
    """One tenant's copy for one category: `messages[language][step]`."""

    path: str
    tenant: str
    category: str
    label: str
    description: str
    messages: dict[str, dict[str, LibraryMessage]]


def library_files(root: Path | None = None) -> list[Path]:
    """Every `<tenant>/<category>.toml` under the root, sorted; none when the directory does not exist."""
    base = root or DEFAULT_ROOT
    return sorted(base.glob("*/*.toml")) if base.is_dir() else []


def load_file(path: Path) -> LibraryFile:
    """Read and check one file; LibraryError names what is missing or unknown."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise LibraryError(f"{path}: {exc}") from None
    category = raw.get("category")
    if category != path.stem:
        raise LibraryError(f"{path}: category = {category!r}, expected the file's name {path.stem!r}")
    for key in ("label", "description"):
        if not isinstance(raw.get(key), str) or not raw[key].strip():
            raise LibraryError(f"{path}: {key} must be a non-empty string")
    unknown = set(raw) - {"category", "label", "description", *LANGUAGES}
    if unknown:
        raise LibraryError(f"{path}: unknown keys {sorted(unknown)}")
    messages: dict[str, dict[str, LibraryMessage]] = {}
    for lang in sorted(LANGUAGES):
        steps = raw.get(lang)
        if not isinstance(steps, dict) or set(steps) != set(STEPS):
            raise LibraryError(f"{path}: [{lang}] must have exactly {', '.join(STEPS)}")
        messages[lang] = {}
        for step in STEPS:
            entry = steps[step]
            if not isinstance(entry, dict) or set(entry) != MESSAGE_KEYS or not all(
                isinstance(v, str) and v.strip() for v in entry.values()
            ):
                raise LibraryError(f"{path}: [{lang}.{step}] must have non-empty subject, preheader and body")
            messages[lang][step] = LibraryMessage(subject=entry["subject"].strip(),
                                                  preheader=entry["preheader"].strip(), body=entry["body"])
    return LibraryFile(path=str(path), tenant=path.parent.name, category=category, label=raw["label"].strip(),
                       description=raw["description"].strip(), messages=messages)


def load_library(root: Path | None = None, tenant: str | None = None) -> list[LibraryFile]:
    """Every file under the root (or only one tenant's), checked."""
    return [load_file(p) for p in library_files(root) if tenant is None or p.parent.name == tenant]


def _escape(text: str) -> str:
    """HTML-escape the copy around its Jinja spans, which stay as written."""
    out, last = [], 0
    for span in _JINJA.finditer(text):
        out.append(html.escape(text[last:span.start()], quote=False))
        out.append(span.group(0))
        last = span.end()
    out.append(html.escape(text[last:], quote=False))
    return "".join(out)


def _linked(line: str) -> str:
    return _LINK.sub(lambda m: f'<a href="{m.group(0)}">{m.group(0)}</a>', line)


def copy_html(body: str) -> str:
    """Plain copy as HTML: one <p> per paragraph, lines joined; the last paragraph (the sign-off) keeps its lines."""
    paragraphs = [p.strip() for p in _BLANK.split(body.strip()) if p.strip()]
    parts = []
    for i, para in enumerate(paragraphs):
        lines = [_linked(_escape(line.strip())) for line in para.splitlines() if line.strip()]
        parts.append("<p>" + ("<br>" if i == len(paragraphs) - 1 else " ").join(lines) + "</p>")
    return "".join(parts)


def bare_links(body: str) -> list[str]:
    """The absolute URLs (or URL variables) the copy shows."""
    return _LINK.findall(body)


def template_name(file: LibraryFile, step: str, language: str) -> str:
    return f"{file.label} - {STEP_LABELS[step]} - {language.upper()}"


def library_templates(file: LibraryFile) -> list[StarterTemplate]:
    """The file's 27 messages as templates, in the personal layout (the default for cold outreach)."""
    out = []
    for lang, steps in file.messages.items():
        for step, message in steps.items():
            body_html = copy_html(message.body)
            out.append(StarterTemplate(
                name=template_name(file, step, lang), language=lang, category=file.category, step=step,
                subject=message.subject, preheader=message.preheader, body_html=body_html, layout="personal",
                variables=tuple(sorted(template_variables(message.subject, body_html))),
            ))
    return out
