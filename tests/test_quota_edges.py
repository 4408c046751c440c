"""Quotas at their edges: what mutation testing (mutation/run.sh) showed the other tests let change.

A single refunded token comes back, to the day, the rate bucket and the provider's count alike; a provider
count lost with Redis is rebuilt from the send log of that IP, that day and that provider; the rate bucket
holds what it holds whether a provider is named or not, a small hourly cap lets one message go at once, and
without a time given the bucket runs on Redis's clock.
"""

from __future__ import annotations

import pytest
from redis.asyncio import Redis

from engine.providers import ProviderCap
from engine.sending import quotas
from tests import _quota_helpers as h

DAY = "2024-03-01"
GMAIL = dict(provider="gmail", provider_cap=ProviderCap(per_day=50))


@pytest.fixture
async def redis_and_ns():
    url = h.shared_redis_url()
    namespace = h.new_namespace()
    client = Redis.from_url(url)
    yield client, namespace
    await client.aclose()
    h.delete_namespace(url, namespace)


async def nothing_sent(ip_id: int, day: str) -> int:
    return 0


async def test_one_token_refunded_comes_back_to_the_day_the_bucket_and_the_provider(redis_and_ns):
    r, ns = redis_and_ns
    kw = dict(rate_per_sec=5, burst=5, **GMAIL)
    first = await quotas.take(r, ns, 1, DAY, 5, daily_quota=100, used_today=nothing_sent, now=5.0, **kw)
    assert first.granted == 5
    await quotas.refund(r, ns, 1, DAY, 1, **kw)
    assert (await quotas.used(r, ns, 1, DAY), await quotas.used(r, ns, 1, DAY, "gmail")) == (4, 4)
    again = await quotas.take(r, ns, 1, DAY, 5, daily_quota=100, used_today=nothing_sent, now=5.0, **kw)
    assert again.granted == 1  # the rate bucket had exactly that one token back


async def test_a_lost_provider_count_is_rebuilt_for_that_ip_day_and_provider(redis_and_ns):
    r, ns = redis_and_ns
    asked = []

    async def sent(ip_id: int, day: str) -> int:
        return 30

    async def sent_to(ip_id: int, day: str, provider: str) -> int:
        asked.append((ip_id, day, provider))
        return 20

    grant = await quotas.take(r, ns, 7, DAY, 100, daily_quota=1000, used_today=sent,
                              provider_used_today=sent_to, **GMAIL)
    assert asked == [(7, DAY, "gmail")]
    assert grant.granted == 30  # the cap of 50 less the 20 the log counted for gmail
    assert await quotas.used(r, ns, 7, DAY, "gmail") == 50


@pytest.mark.parametrize(("rate", "burst", "capacity"), [(1.0, 3.0, 3), (0.5, None, 1), (2.0, None, 2)])
async def test_the_rate_bucket_holds_its_burst_when_a_provider_is_named(redis_and_ns, rate, burst, capacity):
    r, ns = redis_and_ns
    for ip_id, provider in ((1, {}), (2, GMAIL)):
        grant = await quotas.take(r, ns, ip_id, DAY, 10, daily_quota=100, used_today=nothing_sent, now=0.0,
                                  rate_per_sec=rate, burst=burst, **provider)
        assert (grant.granted, grant.reason) == (capacity, "rate"), provider


async def test_a_small_hourly_cap_lets_one_message_go_at_once(redis_and_ns):
    r, ns = redis_and_ns
    cap = dict(provider="yahoo", provider_cap=ProviderCap(per_hour=6))   # one every ten minutes
    first = await quotas.take(r, ns, 1, DAY, 5, daily_quota=100, used_today=nothing_sent, now=0.0, **cap)
    assert (first.granted, first.reason, first.retry_after) == (1, "provider_rate", pytest.approx(600.0))
    later = await quotas.take(r, ns, 1, DAY, 5, daily_quota=100, used_today=nothing_sent, now=600.0, **cap)
    assert later.granted == 1


async def test_a_rate_below_one_a_second_refills_at_its_own_pace(redis_and_ns):
    r, ns = redis_and_ns
    kw = dict(daily_quota=100, used_today=nothing_sent, rate_per_sec=0.5)
    assert (await quotas.take(r, ns, 1, DAY, 1, now=0.0, **kw)).granted == 1
    short = await quotas.take(r, ns, 1, DAY, 1, now=1.0, **kw)
    assert (short.granted, short.reason, short.retry_after) == (0, "rate", pytest.approx(1.0))
    assert (await quotas.take(r, ns, 1, DAY, 1, now=2.0, **kw)).granted == 1


async def test_the_rate_bucket_runs_on_the_redis_clock_when_no_time_is_given(redis_and_ns):
    r, ns = redis_and_ns
    kw = dict(daily_quota=100, used_today=nothing_sent, rate_per_min=1, burst=3)   # one token a minute
    first = await quotas.take(r, ns, 1, DAY, 10, **kw)
    assert (first.granted, first.reason, first.retry_after) == (3, "rate", pytest.approx(60.0, abs=1.0))
    short = await quotas.take(r, ns, 1, DAY, 1, **kw)
    assert (short.granted, short.reason) == (0, "rate")
    assert 0 < short.retry_after <= 60.0
    assert await quotas.used(r, ns, 1, DAY) == 3
