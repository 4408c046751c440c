"""Sender identity: the name, company, postal address and website every message shows.

A tenant has one; a campaign may override any field of it. Both paths that build messages (the PowerMTA
dispatcher and MailWizz) read the resolved identity through `resolve_identity`, via the template book.
"""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlsplit

import asyncpg
import msgspec

from engine.errors import Invalid, NotFound
from sql import q

Line = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]


class SenderIdentity(msgspec.Struct, frozen=True, kw_only=True):
    """Who writes: shown in the signature (`sender_name`), the footer (company, postal address) and links."""

    sender_name: str | None = None
    sender_company: str | None = None
    sender_address: str | None = None
    sender_website: str | None = None

    def context(self) -> dict[str, str]:
        """The fields that are set, as template variables."""
        return {k: v for k, v in msgspec.structs.asdict(self).items() if v}


class IdentityUpdate(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The whole identity (a field left out is cleared; for a campaign, cleared means the tenant's applies)."""

    sender_name: Annotated[Line, msgspec.Meta(examples=["Julien Martin"])] | None = None
    sender_company: Annotated[Line, msgspec.Meta(examples=["SOS-Expat"])] | None = None
    sender_address: Annotated[str, msgspec.Meta(min_length=1, max_length=500,
                                                examples=["12 rue de l'Exemple, 75001 Paris, France"],
                                                description="the postal address the footer shows")] | None = None
    sender_website: Annotated[str, msgspec.Meta(min_length=1, max_length=500, examples=["https://sos-expat.example"],
                                                description="absolute https:// URL")] | None = None


def _clean(data: IdentityUpdate) -> tuple[str | None, ...]:
    values = []
    for field in IdentityUpdate.__struct_fields__:
        value = getattr(data, field)
        if value is not None:
            if "\r" in value or "\n" in value or "\x00" in value:
                raise Invalid(f"{field}: one line, without line breaks", field=field)
            value = value.strip() or None
        values.append(value)
    website = values[3]
    if website is not None and (urlsplit(website).scheme.lower() != "https" or not urlsplit(website).hostname):
        raise Invalid("sender_website: expected an absolute https:// URL", field="sender_website")
    return tuple(values)


async def get_tenant_identity(db: asyncpg.Connection, tenant_id: int) -> SenderIdentity:
    row = await db.fetchrow(q("identities-get-tenant"), tenant_id)
    if row is None:
        raise NotFound(f"tenant {tenant_id} not found")
    return SenderIdentity(**row)


async def put_tenant_identity(db: asyncpg.Connection, tenant_id: int, data: IdentityUpdate) -> SenderIdentity:
    row = await db.fetchrow(q("identities-put-tenant"), tenant_id, *_clean(data))
    if row is None:
        raise NotFound(f"tenant {tenant_id} not found")
    return SenderIdentity(**row)


async def get_campaign_identity(db: asyncpg.Connection, tenant_id: int, campaign_id: int) -> SenderIdentity:
    row = await db.fetchrow(q("identities-get-campaign"), tenant_id, campaign_id)
    if row is None:
        raise NotFound(f"campaign {campaign_id} not found")
    return SenderIdentity(**row)


async def put_campaign_identity(db: asyncpg.Connection, tenant_id: int, campaign_id: int,
                                data: IdentityUpdate) -> SenderIdentity:
    row = await db.fetchrow(q("identities-put-campaign"), tenant_id, campaign_id, *_clean(data))
    if row is None:
        raise NotFound(f"campaign {campaign_id} not found")
    return SenderIdentity(**row)


async def resolve_identity(db: asyncpg.Connection | asyncpg.Pool, tenant_id: int,
                           campaign_id: int | None = None) -> SenderIdentity:
    """The identity a message shows: the campaign's overrides over the tenant's."""
    return SenderIdentity(**await db.fetchrow(q("identities-resolve"), tenant_id, campaign_id))
