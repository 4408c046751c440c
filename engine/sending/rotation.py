"""Weighted rotation of a tenant's sending IPs: smooth weighted round-robin combined with Redis quotas.

Tenant isolation lives in the caller's list: `Rotator.pick` only ever returns IPs from the `candidates` it
was given, so the dispatcher must pass exactly the tenant's own IPs (read from PostgreSQL with the tenant's
id). Nothing here looks IPs up by itself.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from collections.abc import Callable, Hashable, Sequence
from operator import add
from typing import TypeVar

import msgspec
from redis.asyncio import Redis

from engine.providers import ProviderCap
from engine.sending import quotas

K = TypeVar("K", bound=Hashable)

# Statuses that may send (ip_status enum); paused, blacklisted and retired IPs never get a message.
ELIGIBLE = frozenset({"warming", "active"})


class Candidate(msgspec.Struct, frozen=True, kw_only=True):
    """One of the tenant's IPs as the dispatcher read it: weight 1..100 and today's limits."""

    ip_id: int
    vmta_name: str
    weight: int
    daily_quota: int  # today's warmup quota, or the daily cap of an active IP
    status: str = "active"
    rate_per_min: float = 0  # 0 = no rate limit (as `ips.rate_per_minute`)
    burst: float | None = None  # rate bucket capacity; default one second's worth


class Pick(msgspec.Struct, frozen=True, kw_only=True):
    """One message's IP: its token is already taken."""

    ip_id: int
    vmta_name: str


class Wait(msgspec.Struct, frozen=True, kw_only=True):
    """No IP can send now: try again in `seconds` (math.inf when none can send today at all)."""

    seconds: float
    reason: str


def smooth_weighted_next(current: dict[K, int], peers: Sequence[tuple[K, int]]) -> K:
    """One step of nginx's smooth weighted round-robin; `current` is the state, updated in place.

    Each peer's current weight grows by its weight, the largest wins and loses the total. Ties go to the
    earlier peer, so the sequence is deterministic. Peers left out of `peers` keep their state untouched.
    """
    if not peers:
        raise ValueError("no peers to pick from")
    total = 0
    best: K | None = None
    best_weight = 0
    for key, weight in peers:
        value = current.get(key, 0) + weight
        current[key] = value
        total += weight
        if best is None or value > best_weight:
            best, best_weight = key, value
    assert best is not None
    current[best] -= total
    return best


def smooth_weighted_sequence(peers: Sequence[tuple[K, int]], n: int, current: dict[K, int] | None = None) -> list[K]:
    """The next `n` picks of smooth weighted round-robin over `peers` (a fresh state unless given).

    The same picks as `n` calls of `smooth_weighted_next`, with each step's add and arg-max done by builtins
    over plain lists: this runs for every message of a campaign.
    """
    state: dict[K, int] = {} if current is None else current
    if n <= 0:
        return []
    if not peers:
        raise ValueError("no peers to pick from")
    keys = [key for key, _ in peers]
    weights = [weight for _, weight in peers]
    total = sum(weights)
    start = [state.get(key, 0) for key in keys]
    values = start
    picks: list[K] = []
    for step in range(1, n + 1):
        values = list(map(add, values, weights))
        best = values.index(max(values))   # the first of equals: ties go to the earlier peer
        values[best] -= total
        picks.append(keys[best])
        if step == total and step < n and values == start:
            # Back where it began (every peer picked `weight` times, as from a fresh state): the picks repeat,
            # so the rest is copied, and the final state is the one `n % total` steps in.
            full, rest = divmod(n, total)
            picks = picks * full + picks[:rest]
            values = _swrr_state(start, weights, total, rest)
            break
    state.update(zip(keys, values, strict=True))
    return picks


def _swrr_state(values: list[int], weights: list[int], total: int, n: int) -> list[int]:
    """The round-robin state `n` steps after `values`."""
    for _ in range(n):
        values = list(map(add, values, weights))
        values[values.index(max(values))] -= total
    return values


class _Pocket(msgspec.Struct):
    """Tokens taken ahead for one IP/day/provider, with what is needed to refund them."""

    count: int
    candidate: Candidate
    cap: ProviderCap | None


class _Out(msgspec.Struct, frozen=True):
    """An IP that ran short: skipped until `until` (the rotator's clock) unless its quota was raised."""

    until: float
    daily_quota: int
    reason: str


class Rotator:
    """Picks IPs for messages, per tenant, in weight proportion among the IPs that still have quota.

    Holds in-process state: the round-robin position per tenant, which IPs are out until when, and (with
    `reserve` > 0) tokens taken ahead per IP to save Redis calls. Call `close` to refund those. Tokens held
    ahead are invisible to the send log, so a Redis loss while they are held could let an IP exceed its day
    by at most `reserve` per worker: leave `reserve` at 0 where that matters; `pick(n)` already takes every
    IP's share of a batch in one Redis call.
    """

    def __init__(
        self,
        namespace: str,
        used_today: quotas.UsedToday | None = None,
        *,
        reserve: int = 0,
        provider_used_today: quotas.ProviderUsedToday | None = None,
        clock: Callable[[], float] = time.monotonic,
        redis_now: Callable[[], float] | None = None,
    ) -> None:
        self.namespace = namespace
        self.reserve = reserve
        self._used_today = used_today
        self._provider_used_today = provider_used_today
        self._clock = clock
        self._redis_now = redis_now  # for tests: a fake epoch clock given to the quota script
        self._state: dict[Hashable, dict[int, int]] = {}
        self._out: dict[tuple[int, str, str | None], _Out] = {}
        self._pockets: dict[tuple[int, str, str | None], _Pocket] = {}

    async def pick(
        self,
        redis: Redis,
        tenant_id: Hashable,
        candidates: Sequence[Candidate],
        n: int = 1,
        *,
        day: str,
        day_ends_in: float = math.inf,
        provider: str | None = None,
        provider_cap: ProviderCap | None = None,
        used_today: quotas.UsedToday | None = None,
        on_grant: Callable[[int, int], None] | None = None,
    ) -> list[Pick] | Wait:
        """Up to `n` picks (tokens taken) among `candidates`, or a Wait when none of them can send now.

        Fewer than `n` picks means the IPs ran out part-way; the caller keeps the rest for later. One call is
        for one destination provider (group a batch by provider). `day` is the tenant's local ISO date and
        `day_ends_in` the seconds until it ends, used as the wait once every IP has spent its day.
        `used_today` (default: the one given at construction) is what a lost day counter is rebuilt from, and
        `on_grant(ip_id, n)` hears of every token taken from Redis, so a caller can record the grant.
        """
        rebuild = used_today or self._used_today
        if rebuild is None:
            raise ValueError("no used_today callback to rebuild a lost quota counter from")
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}")
        await self._refund_stale(redis, day)
        state = self._state.setdefault(tenant_id, {})
        sendable = [c for c in candidates if c.status in ELIGIBLE and c.weight > 0 and c.daily_quota > 0]
        if not sendable:
            return Wait(seconds=math.inf, reason="no IP is warming or active with a quota")
        eligible = [c for c in sendable if self._out_mark(c, day, provider) is None]
        picks: list[Pick] = []
        short: set[int] = set()
        while len(picks) < n and eligible:
            by_id = {c.ip_id: c for c in eligible}
            order = smooth_weighted_sequence([(c.ip_id, c.weight) for c in eligible], n - len(picks), state)
            need = Counter(order)
            got = await self._acquire(redis, [(by_id[ip_id], k) for ip_id, k in need.items()], day, day_ends_in,
                                      provider, provider_cap, rebuild, on_grant)
            left = dict(zip(need, got, strict=True))
            # An IP that came up short sits out the rest of this call even if its wait is already over,
            # so a nearly-refilled bucket is never polled in a busy loop.
            short.update(ip_id for ip_id, k in need.items() if left[ip_id] < k)
            for ip_id in order:
                if left[ip_id] > 0:
                    left[ip_id] -= 1
                    picks.append(Pick(ip_id=ip_id, vmta_name=by_id[ip_id].vmta_name))
            eligible = [c for c in eligible if c.ip_id not in short]
        if picks:
            return picks
        return self._wait(sendable, day, provider)

    async def close(self, redis: Redis) -> None:
        """Refund every token taken ahead and not used."""
        pockets, self._pockets = self._pockets, {}
        await asyncio.gather(*(self._refund(redis, key, pocket) for key, pocket in pockets.items()))

    async def _acquire(self, redis: Redis, wants: Sequence[tuple[Candidate, int]], day: str, day_ends_in: float,
                       provider: str | None, cap: ProviderCap | None, used_today: quotas.UsedToday,
                       on_grant: Callable[[int, int], None] | None) -> list[int]:
        """Up to `k` tokens for each (IP, k), from its pocket first, then from Redis in one call for all the
        IPs whose pocket is short; marks an IP out when it comes up short."""
        have = [self._pockets[key].count if (key := (c.ip_id, day, provider)) in self._pockets else 0
                for c, _ in wants]
        asks = [i for i, (_, k) in enumerate(wants) if have[i] < k]
        takes = [quotas.Take(ip_id=wants[i][0].ip_id, n=wants[i][1] - have[i] + self.reserve,
                             daily_quota=wants[i][0].daily_quota, rate_per_min=wants[i][0].rate_per_min,
                             burst=wants[i][0].burst, provider=provider, provider_cap=cap) for i in asks]
        grants = await quotas.take_many(
            redis, self.namespace, day, takes, used_today=used_today,
            provider_used_today=self._provider_used_today,
            now=self._redis_now() if self._redis_now else None) if takes else []
        granted = dict(zip(asks, grants, strict=True))
        uses = []
        for i, (c, k) in enumerate(wants):
            key = (c.ip_id, day, provider)
            grant = granted.get(i)
            if grant is None:   # the pocket holds enough
                self._pockets[key].count -= k
                uses.append(k)
                continue
            if on_grant is not None and grant.granted:
                on_grant(c.ip_id, grant.granted)
            total = have[i] + grant.granted
            use = min(k, total)
            if total - use:
                self._pockets[key] = _Pocket(count=total - use, candidate=c, cap=cap)
            else:
                self._pockets.pop(key, None)
            if use < k:
                wait = day_ends_in if math.isinf(grant.retry_after) else grant.retry_after
                # An IP-wide limit benches the IP for every provider; a provider limit only for that provider.
                mark = (c.ip_id, day, provider if grant.reason.startswith("provider") else None)
                self._out[mark] = _Out(until=self._clock() + wait, daily_quota=c.daily_quota, reason=grant.reason)
            uses.append(use)
        return uses

    def _out_mark(self, c: Candidate, day: str, provider: str | None) -> _Out | None:
        """The live out-mark that benches this IP now, if any."""
        now = self._clock()
        for key in ((c.ip_id, day, None), (c.ip_id, day, provider)):
            mark = self._out.get(key)
            if mark is None:
                continue
            # A raised quota (an IP made active mid-day, a cap changed) lifts a daily mark at once.
            if mark.until <= now or (mark.reason.endswith("daily") and c.daily_quota > mark.daily_quota):
                del self._out[key]
                continue
            return mark
        return None

    def _wait(self, sendable: Sequence[Candidate], day: str, provider: str | None) -> Wait:
        """How long until the first of these IPs frees a token."""
        now = self._clock()
        marks = [m for c in sendable if (m := self._out_mark(c, day, provider)) is not None]
        if not marks:
            return Wait(seconds=0.0, reason="a token just freed up")
        first = min(marks, key=lambda m: m.until)
        reasons = ", ".join(sorted({m.reason for m in marks}))
        return Wait(seconds=max(0.0, first.until - now), reason=f"every IP is out of quota ({reasons})")

    async def _refund_stale(self, redis: Redis, day: str) -> None:
        """Pockets of an earlier day go back to that day's counter; marks of earlier days are dropped."""
        stale = [key for key in self._pockets if key[1] != day]
        await asyncio.gather(*(self._refund(redis, key, self._pockets.pop(key)) for key in stale))
        for key in [key for key in self._out if key[1] != day]:
            del self._out[key]

    async def _refund(self, redis: Redis, key: tuple[int, str, str | None], pocket: _Pocket) -> None:
        ip_id, day, provider = key
        c = pocket.candidate
        await quotas.refund(redis, self.namespace, ip_id, day, pocket.count, rate_per_min=c.rate_per_min,
                            burst=c.burst, provider=provider, provider_cap=pocket.cap)
