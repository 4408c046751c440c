"""Contacts: batch ingest, keyset listing with filters, one contact, its events, changes and erasure."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

import msgspec
from arq.connections import ArqRedis
from litestar import Request, delete, get, patch, post
from litestar.params import JSONBody, QueryParameter

from api import audit
from api.deps import Caller, Config, Db, RedisClient, TenantId, id_param
from engine import contacts
from engine.contacts import (
    MAX_BATCH,
    Contact,
    ContactEvent,
    ContactFilter,
    ContactPage,
    IngestRequest,
    Outcome,
)
from engine.errors import TooLarge
from engine.settings import Settings

ContactId = id_param("contact")
ManualStatus = Literal["pending", "valid", "risky", "invalid", "unsubscribed", "bounced", "complained"]
Text = Annotated[str, msgspec.Meta(max_length=1000)]


class IngestResult(msgspec.Struct, frozen=True, kw_only=True):
    """Counts, and each contact's outcome by its position in the request."""

    created: int
    updated: int
    unchanged: int
    rejected: int
    results: list[Outcome]


class ContactPatch(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Fields to change (absent = keep, null = clear), tags to add or remove, or a status set by hand."""

    first_name: Text | None | msgspec.UnsetType = msgspec.UNSET
    last_name: Text | None | msgspec.UnsetType = msgspec.UNSET
    company: Text | None | msgspec.UnsetType = msgspec.UNSET
    website: Text | None | msgspec.UnsetType = msgspec.UNSET
    country: Annotated[str, msgspec.Meta(max_length=64)] | None | msgspec.UnsetType = msgspec.UNSET
    language: Annotated[str, msgspec.Meta(max_length=35)] | None | msgspec.UnsetType = msgspec.UNSET
    category: Annotated[str, msgspec.Meta(max_length=200)] | None | msgspec.UnsetType = msgspec.UNSET
    data_source_id: Annotated[int, msgspec.Meta(gt=0)] | None | msgspec.UnsetType = msgspec.UNSET
    custom: dict[str, Any] | msgspec.UnsetType = msgspec.UNSET
    add_tags: Annotated[list[Annotated[str, msgspec.Meta(max_length=64)]], msgspec.Meta(
        max_length=100, examples=[["vip"]])] = msgspec.field(default_factory=list)
    remove_tags: Annotated[list[Annotated[str, msgspec.Meta(max_length=64)]], msgspec.Meta(max_length=100)] = msgspec.field(default_factory=list)
    status: Annotated[ManualStatus, msgspec.Meta(description="set by hand; needs a reason")] | None = None
    reason: Annotated[str, msgspec.Meta(min_length=1, max_length=500, examples=["confirmed by phone"])] | None = None


async def enqueue_validation(redis: ArqRedis, settings: Settings, to_validate: dict[int, list[int]]) -> None:
    """One validation job per tenant per batch (never per contact); called after the batch committed."""
    for tenant_id, ids in to_validate.items():
        await redis.enqueue_job("validate_contacts", tenant_id, ids, _queue_name=settings.queue_name)


@post("/contacts/ingest", operation_id="ingestContacts", summary="Ingest a batch of contacts", tags=["contacts"],
      status_code=200,
      description=f"Up to {MAX_BATCH:,} contacts, written with one set-based upsert. Contacts are deduplicated on "
                  "(tenant, normalised email), inside the batch too; known ones are merged (non-null fields win, "
                  "tags add up). Each contact's outcome is `created`, `updated`, `unchanged` or `rejected` with a "
                  "reason; bad contacts never stop the good ones. New contacts are validated in the background.")
async def ingest_contacts(data: JSONBody[IngestRequest], request: Request, caller: Caller, redis: RedisClient,
                          settings: Config) -> IngestResult:
    if len(data.contacts) > MAX_BATCH:
        raise TooLarge(f"contacts: at most {MAX_BATCH:,} per request, got {len(data.contacts):,}", field="contacts")
    # Our own transaction, not the Db dependency's: the validation job must be enqueued after the commit.
    async with audit.transaction(request) as db:
        report = await contacts.ingest(db, data.contacts, tenant_id=None if caller.admin else caller.tenant_id)
    await enqueue_validation(redis, settings, report.to_validate)
    return IngestResult(created=report.created, updated=report.updated, unchanged=report.unchanged,
                        rejected=report.rejected, results=report.results)


@get("/contacts/{tenant_id:int}", operation_id="listContacts", summary="List contacts", tags=["contacts"],
     description="Keyset pages in id order: pass `next_cursor` back as `cursor`. Filters combine with AND; "
                 "`tag` may repeat (`tags_mode` any/all). `q` searches email and company. `total` counts every "
                 "match. Erased contacts appear only with `status=erased`.")
async def list_contacts(
    tenant_id: TenantId, db: Db, caller: Caller,
    status: Annotated[Literal["pending", "valid", "risky", "invalid", "unsubscribed", "bounced", "complained",
                              "erased"] | None, QueryParameter()] = None,
    tag: Annotated[list[str] | None, QueryParameter(description="tag slug; repeat for several")] = None,
    tags_mode: Annotated[Literal["any", "all"], QueryParameter()] = "any",
    language: Annotated[str | None, QueryParameter()] = None,
    category: Annotated[str | None, QueryParameter()] = None,
    data_source_id: Annotated[int | None, QueryParameter(gt=0)] = None,
    created_from: Annotated[dt.datetime | None, QueryParameter()] = None,
    created_to: Annotated[dt.datetime | None, QueryParameter()] = None,
    q: Annotated[str | None, QueryParameter(max_length=200, description="substring of email or company")] = None,
    cursor: Annotated[str | None, QueryParameter()] = None,
    limit: Annotated[int, QueryParameter(ge=1, le=contacts.PAGE_MAX)] = 100,
) -> ContactPage:
    caller.scope(tenant_id)
    f = ContactFilter(status=status, tags=tag, tags_all=tags_mode == "all", language=language, category=category,
                      data_source_id=data_source_id, created_from=created_from, created_to=created_to, search=q)
    return await contacts.list_contacts(db, tenant_id, f, cursor=cursor, limit=limit)


@get("/contacts/{tenant_id:int}/{contact_id:int}", operation_id="getContact", summary="Get a contact",
     tags=["contacts"], description="One contact with its tags, status, score and reasons.")
async def get_contact(tenant_id: TenantId, contact_id: ContactId, db: Db, caller: Caller) -> Contact:
    return await contacts.get_contact(db, caller.scope(tenant_id), contact_id)


@get("/contacts/{tenant_id:int}/{contact_id:int}/events", operation_id="listContactEvents",
     summary="A contact's history", tags=["contacts"],
     description="Creation, changes, validation, status changes and erasure, oldest first.")
async def list_contact_events(tenant_id: TenantId, contact_id: ContactId, db: Db, caller: Caller) -> list[ContactEvent]:
    return await contacts.list_events(db, caller.scope(tenant_id), contact_id)


@patch("/contacts/{tenant_id:int}/{contact_id:int}", operation_id="patchContact", summary="Change a contact",
       tags=["contacts"],
       description="Change fields, add or remove tags, or set the status by hand (with a `reason`, recorded in "
                   "the contact's events). The email cannot change: it is the contact's identity. A contact set back "
                   "to `pending` is validated again in the background.")
async def patch_contact(tenant_id: TenantId, contact_id: ContactId, data: JSONBody[ContactPatch], request: Request,
                        caller: Caller, redis: RedisClient, settings: Config) -> Contact:
    caller.scope(tenant_id)
    changes = {f: getattr(data, f) for f in contacts.EDITABLE if getattr(data, f) is not msgspec.UNSET}
    if "custom" in changes and changes["custom"] is None:
        changes["custom"] = {}
    # Our own transaction: a contact set back to pending is validated again, by a job enqueued after commit.
    async with audit.transaction(request) as db:
        contact = await contacts.patch_contact(db, tenant_id, contact_id, changes, add_tags=data.add_tags,
                                               remove_tags=data.remove_tags, status=data.status, reason=data.reason)
    if data.status == "pending":
        await enqueue_validation(redis, settings, {tenant_id: [contact_id]})
    return contact


@delete("/contacts/{tenant_id:int}/{contact_id:int}", operation_id="eraseContact", summary="Erase a contact",
        tags=["contacts"],
        description="Erases the personal data and keeps only a hash of the address, so the address is refused "
                    "if anyone imports it again (it is reported as rejected: erased).")
async def erase_contact(tenant_id: TenantId, contact_id: ContactId, db: Db, caller: Caller) -> None:
    await contacts.erase_contact(db, caller.scope(tenant_id), contact_id)


ROUTES = [ingest_contacts, list_contacts, get_contact, list_contact_events, patch_contact, erase_contact]
