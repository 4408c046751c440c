"""Quota grants: taking tokens for a batch and recording them before anything is injected.

Redis enforces the quotas (engine.sending.quotas); PostgreSQL remembers them. One transaction per batch holds
the tenant's grant lock, takes the campaign's and the IPs' tokens from Redis, stamps each send row with its
IP, and adds the tokens to the `quota_grants` ledger, then commits. A Redis day counter that is missing is
rebuilt inside that transaction from the ledger plus what the transaction itself has taken so far: nobody else
can change either meanwhile, so the rebuilt counter is exact and no IP can pass its quota after a Redis loss,
whatever the number of workers. Tokens granted and then not used (the message never left) are given back the
same way: ledger, stamp and Redis together, under the lock.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections import Counter
from collections.abc import Sequence
from enum import StrEnum
from typing import Generic, TypeVar

import asyncpg
import msgspec
from redis.asyncio import Redis

from engine import ips, metrics
from engine.providers import default_cap as cap_for
from engine.sending import backoff, quotas, sends
from engine.sending.rotation import ELIGIBLE, Candidate, Rotator, Wait
from sql import q

# The two-int advisory lock space of grant locks ("gr"); the second key is the tenant.
GRANT_LOCK_SPACE = 0x6772


class QuotaScope(StrEnum):
    """The quota_scope enum: whose tokens a ledger row counts."""

    IP = "ip"
    CAMPAIGN = "campaign"


IP = QuotaScope.IP
CAMPAIGN = QuotaScope.CAMPAIGN

T = TypeVar("T")


class Ledger:
    """The day's granted tokens as the ledger holds them, plus what this transaction took (lazily read)."""

    def __init__(self, db: asyncpg.Connection, day: dt.date) -> None:
        self.db = db
        self.day = day
        self.taken: Counter[tuple[str, int]] = Counter()
        self._committed: dict[tuple[str, int], int] = {}
        self._lock = asyncio.Lock()   # the rotator rebuilds several IPs at once over this one connection

    async def used(self, scope: str, scope_id: int) -> int:
        key = (scope, scope_id)
        async with self._lock:
            if key not in self._committed:
                rows = await self.db.fetch(q("grants-on-day"), scope, self.day, [scope_id])
                self._committed[key] = rows[0]["granted"] if rows else 0
        return self._committed[key] + self.taken[key]

    def took(self, scope: str, scope_id: int, n: int) -> None:
        self.taken[(scope, scope_id)] += n

    async def flush(self) -> None:
        """Write what this transaction took (or gave back) to the ledger."""
        for scope in (IP, CAMPAIGN):
            up = {k[1]: n for k, n in self.taken.items() if k[0] == scope and n > 0}
            down = {k[1]: -n for k, n in self.taken.items() if k[0] == scope and n < 0}
            if up:
                await self.db.execute(q("grants-add"), scope, self.day, list(up), list(up.values()))
            if down:
                await self.db.execute(q("grants-give-back"), scope, self.day, list(down), list(down.values()))
        self.taken.clear()


async def lock(db: asyncpg.Connection, tenant_id: int) -> None:
    await db.execute(q("grants-lock"), GRANT_LOCK_SPACE, tenant_id)


class Item(msgspec.Struct, frozen=True, kw_only=True):
    """A row asking for a token: the fence, and the destination provider its IP is shaped for."""

    held: sends.Held
    provider: str


class Granted(msgspec.Struct, Generic[T], kw_only=True):
    """The outcome of one grant: picked rows with their IP, rows that got no token, and how long to wait."""

    picked: list[tuple[T, int, str]]
    short: list[T]
    wait: float
    # rows for a provider every IP of the tenant is held for (engine.sending.backoff): they wait until
    # `held_until`, the first of those holds to end
    held: list[T] = msgspec.field(default_factory=list)
    held_until: dt.datetime | None = None


async def grant(pool: asyncpg.Pool, redis: Redis, rotator: Rotator, namespace: str, worker_id: str, *,
                tenant_id: int, campaign_id: int, daily_cap: int | None, day: dt.date, day_ends_in: float,
                items: Sequence[tuple[T, Item]]) -> Granted[T]:
    """Tokens for `items` (campaign cap, then an IP each by weighted rotation), recorded before injection."""
    day_key = day.isoformat()
    async with pool.acquire() as db, db.transaction():
        await lock(db, tenant_id)
        ledger = Ledger(db, day)
        wanted = list(items)
        short: list[T] = []
        wait = 0.0
        if daily_cap is not None and wanted:
            async def campaign_used(scope_id: int, _day: str) -> int:
                return await ledger.used(CAMPAIGN, scope_id)

            got = await quotas.take(redis, f"{namespace}:campaign", campaign_id, day_key, len(wanted),
                                    daily_quota=daily_cap, used_today=campaign_used)
            ledger.took(CAMPAIGN, campaign_id, got.granted)
            short.extend(value for value, _ in wanted[got.granted:])
            wanted = wanted[:got.granted]
            if short:
                wait = day_ends_in

        async def ip_used(ip_id: int, _day: str) -> int:
            return await ledger.used(IP, ip_id)

        def on_grant(ip_id: int, n: int) -> None:
            ledger.took(IP, ip_id, n)

        candidates = await ips.sending_candidates(db, tenant_id, day) if wanted else []
        holds = await backoff.held(db, tenant_id) if wanted else {}
        by_provider: dict[str, list[tuple[T, Item]]] = {}
        for entry in wanted:
            by_provider.setdefault(entry[1].provider, []).append(entry)
        picked: list[tuple[T, Item, int, str]] = []
        held: list[T] = []
        held_until: dt.datetime | None = None
        for provider, group in by_provider.items():
            resting = holds.get(provider, {})
            usable = [c for c in candidates if c.ip_id not in resting]
            sendable = {c.ip_id for c in candidates if c.status in ELIGIBLE}
            if sendable and sendable <= resting.keys():
                # Every IP that could take them rests from this provider: the rows wait for the first to
                # come back (their campaign tokens go back with the unused ones below).
                held.extend(value for value, _ in group)
                first = min(resting[ip_id] for ip_id in sendable)
                held_until = first if held_until is None else min(held_until, first)
                continue
            picks = await rotator.pick(redis, tenant_id, usable, len(group), day=day_key,
                                       day_ends_in=day_ends_in, provider=provider, provider_cap=cap_for(provider),
                                       used_today=ip_used, on_grant=on_grant)
            if isinstance(picks, Wait):
                short.extend(value for value, _ in group)
                wait = max(wait, picks.seconds)
                continue
            picked.extend((value, item, pick.ip_id, pick.vmta_name) for (value, item), pick in zip(group, picks, strict=False))
            if len(picks) < len(group):
                short.extend(value for value, _ in group[len(picks):])
                wait = max(wait, 0.2)
        stamped = await sends.stamp(db, [sends.Stamp(item.held.id, item.held.gen, ip_id, vmta)
                                         for _, item, ip_id, vmta in picked], worker_id)
        # Tokens of rows that got none (campaign tokens of rows no IP could take) or whose row is no longer
        # ours (taken back meanwhile) go back at once.
        lost = [(item, ip_id) for _, item, ip_id, _ in picked if item.held.id not in stamped]
        unused_campaign = len(wanted) - len(picked) + len(lost)
        await _refund(redis, namespace, ledger, candidates, day_key, lost,
                      campaign=(campaign_id, unused_campaign) if daily_cap is not None else None)
        await ledger.flush()
    if short:
        metrics.TOKEN_WAITS.labels(str(tenant_id)).inc(len(short))
    return Granted(picked=[(value, ip_id, vmta) for value, item, ip_id, vmta in picked if item.held.id in stamped],
                   short=short, wait=wait, held=held, held_until=held_until)


async def give_back(pool: asyncpg.Pool, redis: Redis, rotator: Rotator, namespace: str, worker_id: str, *,
                    tenant_id: int, campaign_id: int, capped: bool, day: dt.date,
                    items: Sequence[tuple[Item, int]], retry_at: dt.datetime | None) -> set[int]:
    """Rows granted a token whose message never left: released (deferred to `retry_at`, or queued), their
    stamp cleared and their tokens returned to Redis and the ledger. Returns the rows released."""
    if not items:
        return set()
    async with pool.acquire() as db, db.transaction():
        await lock(db, tenant_id)
        ledger = Ledger(db, day)
        released = await sends.release(db, campaign_id, worker_id, [item.held for item, _ in items],
                                       retry_at=retry_at, unstamp=True)
        back = [(item, ip_id) for item, ip_id in items if item.held.id in released]
        candidates = await ips.sending_candidates(db, tenant_id, day)
        await _refund(redis, namespace, ledger, candidates, day.isoformat(), back,
                      campaign=(campaign_id, len(back)) if capped else None)
        await ledger.flush()
    return released


async def _refund(redis: Redis, namespace: str, ledger: Ledger, candidates: Sequence[Candidate], day: str,
                  items: Sequence[tuple[Item, int]], *, campaign: tuple[int, int] | None) -> None:
    by_id = {c.ip_id: c for c in candidates}
    counts = Counter((ip_id, item.provider) for item, ip_id in items)
    for (ip_id, provider), n in counts.items():
        c = by_id.get(ip_id)
        await quotas.refund(redis, namespace, ip_id, day, n, rate_per_min=c.rate_per_min if c else None,
                            burst=c.burst if c else None, provider=provider, provider_cap=cap_for(provider))
        ledger.took(IP, ip_id, -n)
    if campaign is not None and campaign[1] > 0:
        await quotas.refund(redis, f"{namespace}:campaign", campaign[0], day, campaign[1])
        ledger.took(CAMPAIGN, campaign[0], -campaign[1])
