"""Per-IP sending quotas in Redis: a daily counter and a rate bucket, taken atomically by one Lua script.

PostgreSQL's send log is the truth. A day counter that Redis has lost (restart, FLUSHALL, eviction) is never
treated as zero: the script refuses to grant and says so, the caller counts the day's sends through the
injected `used_today` callback, seeds the counter with HSETNX and takes again. For that to hold, the send log
must record a send (its IP and day) as soon as its token is taken, before the SMTP injection.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Sequence

import msgspec
from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from engine.providers import ProviderCap

# Day counters live two days: long enough for a day that ends late in a far-west timezone and for refunds
# that arrive after midnight, short enough that Redis never accumulates old days.
DAY_TTL_SECONDS = 2 * 24 * 3600

# How many times `take` rebuilds a missing counter before giving up (a second loss within one call means
# Redis is being flushed repeatedly; better to fail loudly than to loop).
MAX_REBUILDS = 3

UsedToday = Callable[[int, str], Awaitable[int]]
ProviderUsedToday = Callable[[int, str, str], Awaitable[int]]

# One hash per IP and day: `n` = tokens taken, `p:<provider>` = tokens taken for that provider, and `r` = 1
# when the hash was rebuilt mid-day from a non-zero count (its provider fields are then unknown, not zero).
# One call takes for any number of IPs (a batch's whole rotation in one round trip); each IP's take is the
# function below, and the script as a whole is atomic.
# KEYS, three per IP: day hash, rate bucket, provider rate bucket (read only when the provider has a rate)
# ARGV: 1 now ("" = Redis TIME), then nine per IP: n, daily quota, rate/s (0 = none), burst, provider field
#       ("" = none), provider daily cap (-1 = none), provider rate/s (0 = none), provider burst, and "1" to seed
#       an unknown provider count from the IP's day count (an upper bound of it)
# Returns four values per IP: granted, retry_after, reason, remaining today; granted -1/-2 = IP/provider count
# missing (nothing taken for that IP). retry_after "-1" means "not before the day ends". TIME makes the script
# non-deterministic, which is fine since Redis 5 replicates scripts by their effects (the default, and the only
# mode in Redis 7).
_TAKE_LUA = b"""
local now
if ARGV[1] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
else
  now = tonumber(ARGV[1])
end

local function bucket(key, r, cap)
  local b = redis.call('HMGET', key, 't', 'ts')
  if not b[1] then return cap, now end
  local last = tonumber(b[2])
  return math.min(cap, tonumber(b[1]) + math.max(0, now - last) * r), math.max(now, last)
end

local function take(KEYS, ARGV)
local n = tonumber(ARGV[1])
local quota = tonumber(ARGV[2])
local rate, burst = tonumber(ARGV[3]), tonumber(ARGV[4])
local pfield, pcap = ARGV[5], tonumber(ARGV[6])
local prate, pburst = tonumber(ARGV[7]), tonumber(ARGV[8])

local used = redis.call('HGET', KEYS[1], 'n')
if not used then return {-1, '0', 'rebuild', 0} end
used = tonumber(used)
local capped = pfield ~= '' and pcap >= 0
local pused = 0
if capped then
  local p = redis.call('HGET', KEYS[1], pfield)
  if not p then
    if redis.call('HGET', KEYS[1], 'r') ~= '1' then
      p = 0
    elseif ARGV[9] == '1' then
      p = used
      redis.call('HSET', KEYS[1], pfield, p)
    else
      return {-2, '0', 'rebuild_provider', 0}
    end
  end
  pused = tonumber(p)
end

local grant, reason = n, 'ok'
local function limit(avail, why)
  if avail < grant then
    grant = math.max(0, avail)
    reason = why
  end
end
limit(quota - used, 'daily')
if capped then limit(pcap - pused, 'provider_daily') end
local tokens, ts, ptokens, pts
if rate > 0 then
  tokens, ts = bucket(KEYS[2], rate, burst)
  limit(math.floor(tokens + 1e-9), 'rate')
end
if pfield ~= '' and prate > 0 then
  ptokens, pts = bucket(KEYS[3], prate, pburst)
  limit(math.floor(ptokens + 1e-9), 'provider_rate')
end

if grant > 0 then
  redis.call('HINCRBY', KEYS[1], 'n', grant)
  if capped then redis.call('HINCRBY', KEYS[1], pfield, grant) end
  if rate > 0 then
    redis.call('HSET', KEYS[2], 't', tokens - grant, 'ts', ts)
    redis.call('PEXPIRE', KEYS[2], math.ceil(burst / rate * 1000) + 1000)
  end
  if pfield ~= '' and prate > 0 then
    redis.call('HSET', KEYS[3], 't', ptokens - grant, 'ts', pts)
    redis.call('PEXPIRE', KEYS[3], math.ceil(pburst / prate * 1000) + 1000)
  end
end

local wait = 0
if grant < n then
  if quota - used - grant <= 0 or (capped and pcap - pused - grant <= 0) then
    wait = -1
  else
    if rate > 0 and tokens - grant < 1 then wait = math.max(wait, (1 - (tokens - grant)) / rate) end
    if pfield ~= '' and prate > 0 and ptokens - grant < 1 then
      wait = math.max(wait, (1 - (ptokens - grant)) / prate)
    end
  end
end
return {grant, string.format('%.6f', wait), reason, math.max(0, quota - used - grant)}
end

local out = {}
for i = 0, #KEYS / 3 - 1 do
  local got = take({KEYS[3 * i + 1], KEYS[3 * i + 2], KEYS[3 * i + 3]}, {unpack(ARGV, 2 + 9 * i, 10 + 9 * i)})
  for j = 1, 4 do out[4 * i + j] = got[j] end
end
return out
"""

# KEYS: 1 day hash; ARGV: 1 count, 2 ttl, 3 provider field ("" = seed the IP's count `n`).
# HSETNX: of several workers rebuilding at once, the first wins and the others' counts are dropped.
_SEED_LUA = b"""
local count = tonumber(ARGV[1])
if ARGV[3] ~= '' then
  redis.call('HSETNX', KEYS[1], ARGV[3], count)
  return 1
end
if redis.call('HSETNX', KEYS[1], 'n', count) == 1 then
  if count > 0 then redis.call('HSET', KEYS[1], 'r', 1) end
  redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]))
end
return 1
"""

# KEYS as for take; ARGV: 1 n, 2 burst, 3 provider field ("" = none), 4 provider burst. A lost day hash is
# left alone: its rebuild counts the send log, where unsent tokens never appear.
_REFUND_LUA = b"""
local n = tonumber(ARGV[1])
local function dec(field)
  local v = redis.call('HGET', KEYS[1], field)
  if v then redis.call('HINCRBY', KEYS[1], field, -math.min(n, math.max(0, tonumber(v)))) end
end
local function give(key, cap)
  local t = redis.call('HGET', key, 't')
  if t then redis.call('HSET', key, 't', math.min(cap, tonumber(t) + n)) end
end
dec('n')
give(KEYS[2], tonumber(ARGV[2]))
if ARGV[3] ~= '' then
  dec(ARGV[3])
  give(KEYS[3], tonumber(ARGV[4]))
end
return 1
"""

# Bytes scripts need no client encoder, so they are built once here and run on whichever client is passed
# (EVALSHA, with SCRIPT LOAD and a retry on NOSCRIPT after a Redis restart).
_TAKE = AsyncScript(None, _TAKE_LUA)  # type: ignore[arg-type]
_REFUND = AsyncScript(None, _REFUND_LUA)  # type: ignore[arg-type]
_SEED = AsyncScript(None, _SEED_LUA)  # type: ignore[arg-type]


class Grant(msgspec.Struct, frozen=True, kw_only=True):
    """Tokens granted by one take; when short, `reason` names the binding limit and `retry_after` says
    how many seconds until one more token frees up (math.inf: not before the day ends)."""

    granted: int
    retry_after: float
    reason: str  # ok | daily | provider_daily | rate | provider_rate
    remaining: int  # tokens left in the IP's day after this take


def day_key(namespace: str, ip_id: int, day: str) -> str:
    """The hash of tokens an IP took on a day (`day` is the ISO date in the tenant's timezone)."""
    return f"{namespace}:quota:{ip_id}:{day}"


def rate_key(namespace: str, ip_id: int) -> str:
    """The IP's rate token bucket (hash: t = tokens, ts = last update)."""
    return f"{namespace}:rate:{ip_id}"


def provider_rate_key(namespace: str, ip_id: int, provider: str) -> str:
    """The IP x provider hourly-cap token bucket."""
    return f"{namespace}:prate:{ip_id}:{provider}"


def provider_field(provider: str) -> str:
    """The field of the IP's day hash that counts one provider."""
    return f"p:{provider}"


def per_second(rate_per_sec: float | None, rate_per_min: float | None) -> float:
    """One rate in tokens per second from either unit; 0 means unlimited."""
    if rate_per_sec is not None and rate_per_min is not None:
        raise ValueError("give rate_per_sec or rate_per_min, not both")
    if rate_per_sec is not None:
        return max(0.0, float(rate_per_sec))
    return max(0.0, float(rate_per_min or 0) / 60.0)


class _Call(msgspec.Struct, frozen=True):
    """Keys and limits of one IP (x provider) as the scripts take them."""

    keys: list[str]
    rate: float
    burst: float
    field: str
    pcap: int
    prate: float
    pburst: float


def _call(namespace: str, ip_id: int, day: str, rate_per_sec: float | None, rate_per_min: float | None,
          burst: float | None, provider: str | None, cap: ProviderCap | None) -> _Call:
    rate = per_second(rate_per_sec, rate_per_min)
    keys = [day_key(namespace, ip_id, day), rate_key(namespace, ip_id)]
    if provider is None or cap is None:
        return _Call(keys, rate, burst if burst is not None else max(1.0, rate), "", -1, 0.0, 0.0)
    keys.append(provider_rate_key(namespace, ip_id, provider))
    # The hourly cap as a bucket: ten minutes' worth may go at once, as PowerMTA's `83/10m` shapes it.
    prate = cap.per_hour / 3600.0 if cap.per_hour else 0.0
    pburst = max(1.0, cap.per_hour / 6.0) if cap.per_hour else 0.0
    return _Call(keys, rate, burst if burst is not None else max(1.0, rate), provider_field(provider),
                 cap.per_day if cap.per_day is not None else -1, prate, pburst)


class Take(msgspec.Struct, frozen=True, kw_only=True):
    """One IP's share of a `take_many`: up to `n` tokens (its limits as for `take`)."""

    ip_id: int
    n: int
    daily_quota: int
    rate_per_sec: float | None = None
    rate_per_min: float | None = None
    burst: float | None = None
    provider: str | None = None
    provider_cap: ProviderCap | None = None


async def take(
    redis: Redis,
    namespace: str,
    ip_id: int,
    day: str,
    n: int,
    *,
    daily_quota: int,
    used_today: UsedToday,
    rate_per_sec: float | None = None,
    rate_per_min: float | None = None,
    burst: float | None = None,
    provider: str | None = None,
    provider_cap: ProviderCap | None = None,
    provider_used_today: ProviderUsedToday | None = None,
    now: float | None = None,
) -> Grant:
    """Take up to `n` tokens for one IP on `day`; never grants past the daily quota, even after Redis lost it.

    `burst` is the rate bucket's capacity (default: one second's worth, at least 1). Without
    `provider_used_today`, a provider count lost with a mid-day rebuild is assumed to be the IP's whole day
    (an upper bound), so the provider cap errs on the safe side. `now` (epoch seconds) overrides Redis TIME.
    """
    one = Take(ip_id=ip_id, n=n, daily_quota=daily_quota, rate_per_sec=rate_per_sec, rate_per_min=rate_per_min,
               burst=burst, provider=provider, provider_cap=provider_cap)
    return (await take_many(redis, namespace, day, [one], used_today=used_today,
                            provider_used_today=provider_used_today, now=now))[0]


async def take_many(redis: Redis, namespace: str, day: str, takes: Sequence[Take], *, used_today: UsedToday,
                    provider_used_today: ProviderUsedToday | None = None, now: float | None = None) -> list[Grant]:
    """`take` for several IPs in one script call (one Redis round trip); the grants in the order given.

    An IP whose counter is missing is rebuilt through `used_today` (or `provider_used_today`) and taken again
    with the others that were, in one more call."""
    for t in takes:
        if t.n < 1:
            raise ValueError(f"n must be at least 1, got {t.n}")
    calls = [_call(namespace, t.ip_id, day, t.rate_per_sec, t.rate_per_min, t.burst, t.provider, t.provider_cap)
             for t in takes]
    if not takes:
        return []
    seed = "0" if provider_used_today else "1"
    grants: list[Grant | None] = [None] * len(takes)
    todo = list(range(len(takes)))
    for _ in range(MAX_REBUILDS + 1):
        keys: list[str] = []
        args: list[str | int] = ["" if now is None else repr(now)]
        for i in todo:
            call = calls[i]
            keys += call.keys if len(call.keys) == 3 else [*call.keys, call.keys[0]]  # third key unread
            args += [takes[i].n, takes[i].daily_quota, repr(call.rate), repr(call.burst), call.field, call.pcap,
                     repr(call.prate), repr(call.pburst), seed]
        answer = await _TAKE(keys, args, client=redis)
        lost = []
        for k, i in enumerate(todo):
            granted, wait, reason, remaining = answer[4 * k:4 * k + 4]
            if granted == -1:
                count = await used_today(takes[i].ip_id, day)
                await _SEED(calls[i].keys[:1], [count, DAY_TTL_SECONDS, ""], client=redis)
                lost.append(i)
            elif granted == -2:
                assert provider_used_today is not None and takes[i].provider is not None
                count = await provider_used_today(takes[i].ip_id, day, takes[i].provider)
                await _SEED(calls[i].keys[:1], [count, DAY_TTL_SECONDS, calls[i].field], client=redis)
                lost.append(i)
            else:
                retry = float(wait)
                grants[i] = Grant(granted=int(granted), retry_after=math.inf if retry < 0 else retry,
                                  reason=reason.decode() if isinstance(reason, bytes) else reason,
                                  remaining=int(remaining))
        if not lost:
            return grants  # type: ignore[return-value]  # every slot is filled
        todo = lost
    ip_ids = ", ".join(str(takes[i].ip_id) for i in todo)
    raise RuntimeError(f"quota counter for IP {ip_ids} on {day} vanished {MAX_REBUILDS} times while rebuilding")


async def refund(
    redis: Redis,
    namespace: str,
    ip_id: int,
    day: str,
    n: int,
    *,
    rate_per_sec: float | None = None,
    rate_per_min: float | None = None,
    burst: float | None = None,
    provider: str | None = None,
    provider_cap: ProviderCap | None = None,
) -> None:
    """Give back `n` tokens taken with `take` (same arguments) that were not used for a send."""
    if n < 1:
        return
    call = _call(namespace, ip_id, day, rate_per_sec, rate_per_min, burst, provider, provider_cap)
    await _REFUND(call.keys, [n, repr(call.burst), call.field, repr(call.pburst)], client=redis)


async def used(redis: Redis, namespace: str, ip_id: int, day: str, provider: str | None = None) -> int | None:
    """Tokens the IP (for one provider, if given) took on `day` per Redis, or None when not recorded."""
    field = provider_field(provider) if provider else "n"
    value = await redis.hget(day_key(namespace, ip_id, day), field)
    return None if value is None else int(value)
