"""Starter templates shipped with the engine: a general introduction per language and the seed's examples."""

from __future__ import annotations

from functools import lru_cache
from importlib.resources import files

import msgspec


class StarterTemplate(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A template a new tenant can start from; `category` None means any category."""

    name: str
    language: str
    category: str | None
    subject: str
    body_html: str
    body_text: str | None = None
    variables: tuple[str, ...] = ()
    # layout None: the branded shell the general starters were written for
    layout: str | None = None
    step: str | None = None
    preheader: str | None = None


@lru_cache(maxsize=1)
def _load() -> tuple[StarterTemplate, ...]:
    raw = files(__package__).joinpath("templates.json").read_bytes()
    return msgspec.json.decode(raw, type=tuple[StarterTemplate, ...])


def starter_templates() -> list[StarterTemplate]:
    """Every starter template, in file order (the nine general ones first, then the seed's)."""
    return list(_load())
