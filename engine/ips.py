"""Sending IPs (PowerMTA virtual MTAs): their lifecycle, and what the dispatcher reads to rotate over them."""

from __future__ import annotations

import datetime as dt
import enum
import ipaddress
import re
from typing import Any

import asyncpg
import msgspec

from engine import warmup_plans
from engine.errors import Conflict, Invalid, NotFound
from engine.sending import quotas
from engine.sending.rotation import Candidate
from sql import q

# PowerMTA's <virtual-mta name> and the ips.vmta_name CHECK: a letter or digit, then up to 62 of [A-Za-z0-9._-].
VMTA_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
# RFC 1123 host name: what HELO announces and PTR must point back to.
HOSTNAME = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}$")

# Unique constraint -> the request field it protects (0001's inline UNIQUEs get Postgres' default names).
UNIQUE_FIELDS = {"ips_address_key": "address", "ips_vmta_name_key": "vmta_name"}


class IpStatus(enum.StrEnum):
    """The ip_status enum: only warming and active IPs are given messages."""

    WARMING = "warming"
    ACTIVE = "active"
    PAUSED = "paused"
    BLACKLISTED = "blacklisted"
    RETIRED = "retired"


class Ip(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    tenant_id: int
    address: str
    hostname: str
    vmta_name: str
    weight: int
    pool: str
    status: str
    status_reason: str | None
    daily_cap: int
    rate_per_minute: int
    status_changed_at: dt.datetime
    created_at: dt.datetime
    updated_at: dt.datetime


def check_address(address: str) -> str:
    """The canonical text of an IPv4/IPv6 address; Invalid naming `address` otherwise."""
    try:
        return str(ipaddress.ip_address(address.strip()))
    except ValueError as exc:
        raise Invalid(f"address: {address!r} is not an IPv4 or IPv6 address", field="address") from exc


def check_fields(*, hostname: str | None = None, vmta_name: str | None = None, weight: int | None = None,
                 daily_cap: int | None = None, rate_per_minute: int | None = None) -> None:
    """The rules the API's types cannot say; each failure names its field."""
    if hostname is not None and not HOSTNAME.match(hostname):
        raise Invalid(f"hostname: {hostname!r} is not a fully qualified host name", field="hostname")
    if vmta_name is not None and not VMTA_NAME.match(vmta_name):
        raise Invalid(f"vmta_name: {vmta_name!r} must be 1-63 of letters, digits, '.', '_' or '-'", field="vmta_name")
    if weight is not None and not 1 <= weight <= 100:
        raise Invalid(f"weight: must be from 1 to 100, got {weight}", field="weight")
    if daily_cap is not None and daily_cap < 1:
        raise Invalid(f"daily_cap: must be at least 1, got {daily_cap}", field="daily_cap")
    if rate_per_minute is not None and rate_per_minute < 0:
        raise Invalid(f"rate_per_minute: must be 0 (unlimited) or more, got {rate_per_minute}", field="rate_per_minute")


def _conflict(exc: asyncpg.UniqueViolationError, values: dict[str, Any]) -> Conflict:
    field = UNIQUE_FIELDS.get(getattr(exc, "constraint_name", "") or "", "address")
    return Conflict(f"{field}: {values.get(field)!r} is already used by another IP", field=field)


async def create_ip(db: asyncpg.Connection, tenant_id: int, *, address: str, hostname: str, vmta_name: str,
                    weight: int = 10, pool: str = "default", daily_cap: int = 50_000,
                    rate_per_minute: int = 0) -> Ip:
    """A new IP, warming, with its warmup plan (the tenant's curve, or doubling from 50 to `daily_cap`)."""
    canonical = check_address(address)
    check_fields(hostname=hostname, vmta_name=vmta_name, weight=weight, daily_cap=daily_cap,
                 rate_per_minute=rate_per_minute)
    async with db.transaction():
        try:
            row = await db.fetchrow(q("create-ip"), tenant_id, canonical, hostname, vmta_name, weight, pool,
                                    daily_cap, rate_per_minute)
        except asyncpg.UniqueViolationError as exc:
            raise _conflict(exc, {"address": canonical, "vmta_name": vmta_name}) from exc
        except asyncpg.ForeignKeyViolationError as exc:
            raise NotFound(f"tenant {tenant_id} not found") from exc
        ip = Ip(**row)
        await warmup_plans.create_plan(db, tenant_id, ip.id, daily_cap)
    return ip


async def list_ips(db: asyncpg.Connection, tenant_id: int | None, status: str | None = None) -> list[Ip]:
    """A tenant's IPs (every tenant's when `tenant_id` is None), optionally of one status."""
    return [Ip(**r) for r in await db.fetch(q("list-ips"), tenant_id, status)]


async def get_ip(db: asyncpg.Connection, tenant_id: int, ip_id: int) -> Ip:
    row = await db.fetchrow(q("get-ip"), tenant_id, ip_id)
    if row is None:
        raise NotFound(f"IP {ip_id} not found")
    return Ip(**row)


async def update_ip(db: asyncpg.Connection, tenant_id: int, ip_id: int, *, hostname: str | None = None,
                    vmta_name: str | None = None, weight: int | None = None, pool: str | None = None,
                    daily_cap: int | None = None, rate_per_minute: int | None = None) -> Ip:
    """Change what may change; the address is the IP's identity and does not. None keeps a field."""
    check_fields(hostname=hostname, vmta_name=vmta_name, weight=weight, daily_cap=daily_cap,
                 rate_per_minute=rate_per_minute)
    try:
        row = await db.fetchrow(q("update-ip"), tenant_id, ip_id, hostname, vmta_name, weight, pool, daily_cap,
                                rate_per_minute)
    except asyncpg.UniqueViolationError as exc:
        raise _conflict(exc, {"vmta_name": vmta_name}) from exc
    if row is None:
        raise NotFound(f"IP {ip_id} not found")
    return Ip(**row)


# action -> the statuses it may start from. Resuming returns an IP to where its warmup plan stands (warming
# until the plan completed, active after); blacklisting is for the blacklist monitor, not the API.
TRANSITIONS: dict[str, frozenset[str]] = {
    "pause": frozenset({IpStatus.WARMING, IpStatus.ACTIVE}),
    "resume": frozenset({IpStatus.PAUSED, IpStatus.BLACKLISTED}),
    "retire": frozenset({IpStatus.WARMING, IpStatus.ACTIVE, IpStatus.PAUSED, IpStatus.BLACKLISTED}),
    "blacklist": frozenset({IpStatus.WARMING, IpStatus.ACTIVE, IpStatus.PAUSED}),
}


async def change_status(db: asyncpg.Connection, tenant_id: int, ip_id: int, action: str,
                        reason: str | None = None) -> Ip:
    """Pause, resume, retire or blacklist an IP, recording why and when; retired is final."""
    if action not in TRANSITIONS:
        raise Invalid(f"action: expected one of {', '.join(TRANSITIONS)}, got {action!r}", field="action")
    async with db.transaction():
        row = await db.fetchrow(q("lock-ip-status"), tenant_id, ip_id)
        if row is None:
            raise NotFound(f"IP {ip_id} not found")
        if row["status"] not in TRANSITIONS[action]:
            raise Conflict(f"status: cannot {action} an IP that is {row['status']}", field="status")
        new = {"pause": IpStatus.PAUSED, "retire": IpStatus.RETIRED, "blacklist": IpStatus.BLACKLISTED}.get(action)
        if new is None:
            new = IpStatus.WARMING if row["phase"] == "warming" else IpStatus.ACTIVE
            await db.execute(q("health-rearm"), "ip", ip_id)  # engine.health: the check starts afresh
        return Ip(**await db.fetchrow(q("set-ip-status"), tenant_id, ip_id, new.value, reason))


async def sending_candidates(db: asyncpg.Connection | asyncpg.Pool, tenant_id: int,
                             today: dt.date) -> list[Candidate]:
    """The tenant's IPs that may send today, each with today's daily quota, for `Rotator.pick`.

    Warming IPs get their plan's current quota (the cron moves it at the tenant's warmup hour, so early in
    the local day it is still yesterday's step), active IPs their daily cap; paused, blacklisted and retired
    IPs are left out. Only this tenant's IPs are ever returned. `today` names the day the quota is for.
    """
    del today  # the plan's current step IS today's quota; kept so callers state which day they mean
    rows = await db.fetch(q("ips-sending-candidates"), tenant_id)
    return [Candidate(ip_id=r["ip_id"], vmta_name=r["vmta_name"], weight=r["weight"], daily_quota=r["daily_quota"],
                      status=r["status"], rate_per_min=float(r["rate_per_minute"])) for r in rows]


def used_today_callback(pool: asyncpg.Pool) -> quotas.UsedToday:
    """A `used_today(ip_id, day)` reading the quota ledger (`day` is the ISO date in the IP's tenant's timezone).

    Outside a grant transaction it reads only what is committed, so it suits tools and tests; the dispatcher
    rebuilds inside its grant transaction instead (engine.sending.grants)."""

    async def count(ip_id: int, day: str) -> int:
        return await pool.fetchval(q("ips-used-on-day"), ip_id, dt.date.fromisoformat(day))

    return count
