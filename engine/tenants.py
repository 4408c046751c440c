"""Tenants and their API keys."""

from __future__ import annotations

import datetime as dt
import re
from enum import StrEnum
from typing import Annotated

import asyncpg
import msgspec

from engine import secrets
from engine.errors import Conflict, NotFound
from engine.sending.policy import AutoPause, TenantPolicy
from sql import q

SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


class TenantTransport(StrEnum):
    """The tenant_transport enum: how a tenant's campaigns leave by default."""

    PMTA = "pmta"
    MAILWIZZ = "mailwizz"


class Tenant(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    slug: str
    name: str
    timezone: str
    transport: str
    created_at: dt.datetime


class ApiKey(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    tenant_id: int
    name: str
    prefix: str
    created_at: dt.datetime
    last_used_at: dt.datetime | None
    revoked_at: dt.datetime | None


class CreatedApiKey(msgspec.Struct, frozen=True, kw_only=True):
    """The answer to a key's creation: the only time the key itself is ever shown."""

    id: int
    tenant_id: int
    name: str
    prefix: str
    created_at: dt.datetime
    key: str


async def create_tenant(db: asyncpg.Connection, *, slug: str, name: str, timezone: str = "UTC", transport: str = "pmta") -> Tenant:
    try:
        row = await db.fetchrow(q("create-tenant"), slug, name, timezone, transport)
    except asyncpg.UniqueViolationError as exc:
        raise Conflict(f"a tenant with slug {slug!r} already exists", field="slug") from exc
    return Tenant(**row)


async def list_tenants(db: asyncpg.Connection) -> list[Tenant]:
    return [Tenant(**r) for r in await db.fetch(q("list-tenants"))]


async def get_tenant(db: asyncpg.Connection, tenant_id: int) -> Tenant:
    row = await db.fetchrow(q("get-tenant"), tenant_id)
    if row is None:
        raise NotFound(f"tenant {tenant_id} not found")
    return Tenant(**row)


async def tenant_settings(db: asyncpg.Connection, tenant_id: int) -> dict:
    return await db.fetchval(q("get-tenant-settings"), tenant_id) or {}


class SendingPolicy(msgspec.Struct, frozen=True, kw_only=True):
    """What the send policy reads from a tenant's settings (engine.sending.policy.TenantPolicy)."""

    mail_risky: bool = True
    validation_wait_hours: float = 24.0
    auto_pause: AutoPause = AutoPause()


class LimitsPatch(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    hard_bounce_rate: Annotated[float, msgspec.Meta(ge=0, le=1, examples=[0.02],
                                                    description="hard bounces per final result")] | None = None
    complaint_rate: Annotated[float, msgspec.Meta(ge=0, le=1, examples=[0.001],
                                                  description="complaints per final result")] | None = None
    min_results: Annotated[int, msgspec.Meta(ge=1, le=10_000_000, examples=[200],
                                             description="final results before the rates are judged")] | None = None


class AutoPausePatch(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    campaign: LimitsPatch | None = None
    ip: LimitsPatch | None = None
    domain: LimitsPatch | None = None


class SendingPolicyPatch(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    mail_risky: Annotated[bool, msgspec.Meta(
        description="mail contacts validated as risky (catch-all domains, role accounts); default true")] | None = None
    validation_wait_hours: Annotated[float, msgspec.Meta(
        gt=0, le=720, examples=[24], description="how long a campaign row waits for its contact's "
        "validation before it is skipped; default 24")] | None = None
    auto_pause: Annotated[AutoPausePatch, msgspec.Meta(
        description="when a campaign (whole run), an IP or a sending domain (rolling 24 h) pauses itself; "
        "only the limits given change")] | None = None


def sending_policy(settings: dict) -> SendingPolicy:
    read = TenantPolicy.from_settings(settings)  # the one reading of these knobs
    return SendingPolicy(mail_risky=read.mail_risky,
                         validation_wait_hours=read.validation_wait.total_seconds() / 3600,
                         auto_pause=read.auto_pause)


async def get_sending_policy(db: asyncpg.Connection, tenant_id: int) -> SendingPolicy:
    await get_tenant(db, tenant_id)
    return sending_policy(await tenant_settings(db, tenant_id))


async def patch_sending_policy(db: asyncpg.Connection, tenant_id: int, patch: SendingPolicyPatch) -> SendingPolicy:
    await get_tenant(db, tenant_id)
    changes = {k: v for k, v in msgspec.structs.asdict(patch).items() if v is not None}
    if patch.auto_pause is not None:
        # Limits merge one level down: changing a campaign's rate keeps the IP's and the domain's.
        stored = (await tenant_settings(db, tenant_id)).get("auto_pause") or {}
        changes["auto_pause"] = {**stored, **{
            target: {**(stored.get(target) or {}), **{k: v for k, v in msgspec.structs.asdict(given).items()
                                                       if v is not None}}
            for target in AutoPausePatch.__struct_fields__
            if (given := getattr(patch.auto_pause, target)) is not None}}
    return sending_policy(await db.fetchval(q("merge-tenant-settings"), tenant_id, changes))


async def create_api_key(db: asyncpg.Connection, tenant_id: int, name: str) -> CreatedApiKey:
    await get_tenant(db, tenant_id)
    key = secrets.new_api_key()
    row = await db.fetchrow(q("create-api-key"), tenant_id, name, key[:10], secrets.hash_key(key))
    return CreatedApiKey(id=row["id"], tenant_id=tenant_id, name=row["name"], prefix=row["prefix"],
                         created_at=row["created_at"], key=key)


async def list_api_keys(db: asyncpg.Connection, tenant_id: int) -> list[ApiKey]:
    await get_tenant(db, tenant_id)
    return [ApiKey(**r) for r in await db.fetch(q("list-api-keys"), tenant_id)]


async def revoke_api_key(db: asyncpg.Connection, tenant_id: int, key_id: int) -> None:
    if await db.fetchval(q("revoke-api-key"), tenant_id, key_id) is None:
        raise NotFound(f"api key {key_id} not found")


async def authenticate(db: asyncpg.Connection | asyncpg.Pool, key: str) -> int | None:
    """The tenant a live key belongs to, or None."""
    found = await authenticate_key(db, key)
    return None if found is None else found[1]


async def authenticate_key(db: asyncpg.Connection | asyncpg.Pool, key: str) -> tuple[int, int] | None:
    """(key id, tenant id) of a live key, or None."""
    row = await db.fetchrow(q("authenticate-api-key"), secrets.hash_key(key))
    if row is None:
        return None
    await db.execute(q("touch-api-key"), row["id"])
    return row["id"], row["tenant_id"]
