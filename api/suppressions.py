"""The suppression list: bulk add, keyset listing, one-address check, removal."""

from __future__ import annotations

from typing import Annotated, Literal

import asyncpg
import msgspec
from arq.connections import ArqRedis
from litestar import Request, delete, get, post
from litestar.datastructures import State
from litestar.params import JSONBody, PathParameter, QueryParameter

from api import audit
from api.deps import Caller, Config, Db, RedisClient, TenantId
from engine import suppression, tenants
from engine.errors import TooLarge
from engine.settings import Settings
from engine.suppression import MAX_BATCH, PAGE_MAX, Rejected, Suppression, SuppressionPage

Reason = Literal["unsubscribe", "hard_bounce", "complaint", "manual", "erased"]
# One propagation job carries at most this many addresses: MailWizz takes them one call each, 8 at a time.
PROPAGATE_CHUNK = 500


class SuppressionAdd(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    tenant_id: Annotated[int, msgspec.Meta(gt=0, examples=[1])]
    emails: Annotated[list[Annotated[str, msgspec.Meta(max_length=320)]], msgspec.Meta(
        examples=[["someone@example.com", "@competitor.example", "bounced.example"]],
        description=f"addresses, or domains (`example.com` or `@example.com`) covering every address at them; "
                    f"at most {MAX_BATCH:,}")]
    reason: Annotated[Reason, msgspec.Meta(examples=["manual"])]
    source: Annotated[str, msgspec.Meta(max_length=200, examples=["crm-sync"],
                                        description="free text: who or what suppressed these")] | None = None


class AddResult(msgspec.Struct, frozen=True, kw_only=True):
    """Counts, and each entry that could not be stored with its position and reason."""

    added: int
    upgraded: int
    unchanged: int
    rejected: list[Rejected]


class SuppressionCheck(msgspec.Struct, frozen=True, kw_only=True):
    email: str
    suppressed: bool
    entry: Suppression | None


async def enqueue_propagation(db: asyncpg.Connection | asyncpg.Pool, redis: ArqRedis, settings: Settings,
                              tenant_id: int, emails: list[str]) -> None:
    """MailWizz sends a MailWizz tenant's mail, so its lists must learn of each suppressed address."""
    if not emails or (await tenants.get_tenant(db, tenant_id)).transport != "mailwizz":
        return
    for i in range(0, len(emails), PROPAGATE_CHUNK):
        await redis.enqueue_job("propagate_unsubscribe", tenant_id, *emails[i:i + PROPAGATE_CHUNK],
                                _queue_name=settings.queue_name)


@post("/suppressions", operation_id="addSuppressions", summary="Suppress addresses or domains", tags=["suppressions"],
      status_code=200,
      description=f"Up to {MAX_BATCH:,} entries in one set-based upsert. An entry already listed keeps its row; its "
                  "reason changes only to a stronger one (manual < unsubscribe < hard_bounce < complaint < erased). "
                  "Bad entries are listed in `rejected` and never stop the good ones. Contacts at a suppressed "
                  "address become unsubscribed / bounced / complained; for a MailWizz tenant the addresses are "
                  "also unsubscribed in MailWizz, in the background.")
async def add_suppressions(data: JSONBody[SuppressionAdd], request: Request, state: State, caller: Caller, redis: RedisClient,
                           settings: Config) -> AddResult:
    caller.scope(data.tenant_id)
    if len(data.emails) > MAX_BATCH:
        raise TooLarge(f"emails: at most {MAX_BATCH:,} per request, got {len(data.emails):,}", field="emails")
    # Our own transaction: the propagation job is enqueued after the commit.
    async with audit.transaction(request) as db:
        report = await suppression.add_suppressions(db, data.tenant_id, data.emails, reason=data.reason,
                                                    source=data.source)
    await enqueue_propagation(state.pool, redis, settings, data.tenant_id, report.changed_addresses)
    return AddResult(added=report.added, upgraded=report.upgraded, unchanged=report.unchanged,
                     rejected=report.rejected)


@get("/suppressions/{tenant_id:int}", operation_id="listSuppressions", summary="List suppressions",
     tags=["suppressions"],
     description="Keyset pages in id order (oldest first): pass `next_cursor` back as `cursor`.")
async def list_suppressions(
    tenant_id: TenantId, db: Db, caller: Caller,
    reason: Annotated[Reason | None, QueryParameter()] = None,
    cursor: Annotated[str | None, QueryParameter(max_length=19)] = None,
    limit: Annotated[int, QueryParameter(ge=1, le=PAGE_MAX)] = 100,
) -> SuppressionPage:
    caller.scope(tenant_id)
    return await suppression.list_suppressions(db, tenant_id, reason=reason, cursor=cursor, limit=limit)


@get("/suppressions/{tenant_id:int}/check", operation_id="checkSuppression", summary="Is this address suppressed?",
     tags=["suppressions"],
     description="The entry that suppresses the address: its own, else its domain's (exact domain only: a "
                 "subdomain's entry does not cover the parent domain, nor the reverse).")
async def check_suppression(
    tenant_id: TenantId, db: Db, caller: Caller,
    email: Annotated[str, QueryParameter(min_length=1, max_length=320)],
) -> SuppressionCheck:
    caller.scope(tenant_id)
    entry = await suppression.check_suppression(db, tenant_id, email)
    value, _ = suppression.parse_entry(email)
    return SuppressionCheck(email=value or email, suppressed=entry is not None, entry=entry)


@delete("/suppressions/{tenant_id:int}/{email:str}", operation_id="removeSuppression", summary="Lift a suppression",
        tags=["suppressions"],
        description="Removes one entry, an address or a domain (URL-encoded: `someone%40example.com`). Contacts "
                    "keep their status: mailing them again is a separate decision (PATCH the contact).")
async def remove_suppression(tenant_id: TenantId, email: Annotated[str, PathParameter()], db: Db,
                             caller: Caller) -> None:
    caller.scope(tenant_id)
    await suppression.remove_suppression(db, tenant_id, email)


ROUTES = [add_suppressions, list_suppressions, check_suppression, remove_suppression]
