"""Spintax: `{Hello|Hi|Good morning}` in subjects and bodies, one choice per contact and step.

A group is a single brace holding at least one `|` at its own level; groups nest. `{{ … }}`, `{% … %}` and
`{# … #}` are Jinja and `{firstName}` (no `|`) is a placeholder: both are left alone. Spinning runs on the
rendered text, so a choice may hold placeholders and Jinja; each group's choice comes from a hash of the seed
(campaign, step, contact) and the group's own text, so the HTML and the text part of one message agree and the
same contact always reads the same words.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterator
from functools import lru_cache

from engine.errors import Unprocessable

JINJA_OPENERS = ("{{", "{%", "{#")
JINJA_CLOSERS = {"{{": "}}", "{%": "%}", "{#": "#}"}
MAX_PREVIEW = 50


class Group:
    """A brace group: its alternatives, each a list of text pieces and nested groups."""

    __slots__ = ("choices", "source")

    def __init__(self, choices: list[list[str | Group]], source: str) -> None:
        self.choices = choices
        self.source = source


def _parse(text: str, pos: int, depth: int, field: str) -> tuple[list[list[str | Group]], int]:
    """Alternatives from `pos` up to the closing brace of this level (or the end at depth 0)."""
    choices: list[list[str | Group]] = [[]]
    buf: list[str] = []
    i = pos

    def flush() -> None:
        if buf:
            choices[-1].append("".join(buf))
            buf.clear()

    while i < len(text):
        two = text[i:i + 2]
        if two in JINJA_OPENERS:
            end = text.find(JINJA_CLOSERS[two], i + 2)
            if end < 0:
                raise Unprocessable(f"{field}: unclosed {two!r} at position {i}", field=field,
                                    extra={"position": i})
            buf.append(text[i:end + 2])
            i = end + 2
            continue
        ch = text[i]
        if ch == "{":
            flush()
            inner, after = _parse(text, i + 1, depth + 1, field)
            if len(inner) > 1:
                choices[-1].append(Group(inner, text[i:after]))
            else:   # `{name}` or a CSS rule: not spintax, kept as written (groups inside it still spin)
                choices[-1].extend(["{", *inner[0], "}"])
            i = after
            continue
        if ch == "}":
            if depth == 0:
                raise Unprocessable(f"{field}: unbalanced '}}' at position {i}", field=field, extra={"position": i})
            flush()
            return choices, i + 1
        if ch == "|" and depth > 0:
            flush()
            choices.append([])
            i += 1
            continue
        buf.append(ch)
        i += 1
    if depth > 0:
        start = pos - 1
        raise Unprocessable(f"{field}: unbalanced '{{' at position {start}", field=field, extra={"position": start})
    flush()
    return choices, i


def parse(text: str, field: str = "body") -> list[str | Group]:
    """The text's pieces; an unbalanced brace is a 422 naming the position (0-based)."""
    if "{" not in text and "}" not in text:
        return [text]
    choices, _ = _parse(text, 0, 0, field)
    return choices[0]


@lru_cache(maxsize=512)
def _pieces(text: str) -> list[str | Group]:
    """Parsed once per distinct text: a campaign spins the same few templates for every contact."""
    return parse(text)


def check(text: str, field: str) -> None:
    """Save-time check: raise Unprocessable with the position of the first unbalanced brace."""
    if "{" in text or "}" in text:
        parse(text, field)


def _hash(seed: str, source: str) -> int:
    digest = hashlib.blake2b(f"spin\x1f{seed}\x1f{source}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def _spin(pieces: list[str | Group], seed: str, out: list[str]) -> None:
    for piece in pieces:
        if isinstance(piece, str):
            out.append(piece)
        else:
            _spin(piece.choices[_hash(seed, piece.source) % len(piece.choices)], seed, out)


def spin(text: str, seed: str) -> str:
    """The text with one alternative of every group, the same for the same seed."""
    if "|" not in text or "{" not in text:
        return text
    try:
        pieces = _pieces(text)
    except Unprocessable:
        return text   # checked at save time; a rendered value with a stray brace is sent as it is
    if not any(isinstance(piece, Group) for piece in pieces):
        return text   # braces and bars, but no group (`{{ name|upper }}`, CSS): the very same string
    out: list[str] = []
    _spin(pieces, seed, out)
    return "".join(out)


def _variants(pieces: list[str | Group]) -> Iterator[str]:
    options: list[list[str]] = []
    for piece in pieces:
        if isinstance(piece, str):
            options.append([piece])
        else:
            options.append([v for choice in piece.choices for v in _variants(choice)])
    for combo in itertools.product(*options):
        yield "".join(combo)


def variants(text: str, field: str = "text", limit: int = MAX_PREVIEW) -> tuple[list[str], int]:
    """Every way the text can read (up to `limit`) and how many there are in all: the preview."""
    pieces = parse(text, field)
    total = 1
    for piece in pieces:
        if isinstance(piece, Group):
            total *= _count(piece)
    return list(itertools.islice(_variants(pieces), limit)), total


def _count(group: Group) -> int:
    n = 0
    for choice in group.choices:
        m = 1
        for piece in choice:
            if isinstance(piece, Group):
                m *= _count(piece)
        n += m
    return n
