"""Quota script: daily counter, rate bucket, provider caps, refunds, rebuilds, and races between processes."""

from __future__ import annotations

import math
import multiprocessing

import pytest
from redis.asyncio import Redis

from engine.providers import ProviderCap
from engine.sending import quotas
from tests import _quota_helpers as h

DAY = "2024-03-01"


@pytest.fixture
def url() -> str:
    return h.shared_redis_url()


@pytest.fixture
def ns(url: str):
    namespace = h.new_namespace()
    yield namespace
    h.delete_namespace(url, namespace)


@pytest.fixture
async def r(url: str):
    client = Redis.from_url(url)
    yield client
    await client.aclose()


def log_count(value: int):
    """A `used_today` callback standing in for COUNT(*) over the send log; records its calls."""
    calls: list[tuple[int, str]] = []

    async def used_today(ip_id: int, day: str) -> int:
        calls.append((ip_id, day))
        return value

    used_today.calls = calls  # type: ignore[attr-defined]
    return used_today


async def test_daily_quota_grants_up_to_quota_then_refuses(r, ns):
    used_today = log_count(0)
    first = await quotas.take(r, ns, 1, DAY, 7, daily_quota=10, used_today=used_today)
    second = await quotas.take(r, ns, 1, DAY, 7, daily_quota=10, used_today=used_today)
    third = await quotas.take(r, ns, 1, DAY, 1, daily_quota=10, used_today=used_today)
    assert (first.granted, first.reason, first.remaining) == (7, "ok", 3)
    assert (second.granted, second.reason, second.remaining) == (3, "daily", 0)
    assert second.retry_after == math.inf
    assert third.granted == 0
    assert await quotas.used(r, ns, 1, DAY) == 10
    # the counter was missing once, at the start of the day, and seeded from the send log's count
    assert used_today.calls == [(1, DAY)]


async def test_days_and_ips_are_separate_counters(r, ns):
    used_today = log_count(0)
    await quotas.take(r, ns, 1, DAY, 5, daily_quota=5, used_today=used_today)
    other_ip = await quotas.take(r, ns, 2, DAY, 5, daily_quota=5, used_today=used_today)
    next_day = await quotas.take(r, ns, 1, "2024-03-02", 5, daily_quota=5, used_today=used_today)
    assert other_ip.granted == 5 and next_day.granted == 5
    assert 0 < await r.ttl(quotas.day_key(ns, 1, DAY)) <= quotas.DAY_TTL_SECONDS


async def test_rate_bucket_limits_a_burst_and_refills_with_time(r, ns):
    used_today = log_count(0)
    kw = dict(daily_quota=1000, used_today=used_today, rate_per_sec=5, burst=5)
    burst = await quotas.take(r, ns, 1, DAY, 10, now=1000.0, **kw)
    empty = await quotas.take(r, ns, 1, DAY, 1, now=1000.0, **kw)
    later = await quotas.take(r, ns, 1, DAY, 10, now=1000.5, **kw)
    assert (burst.granted, burst.reason) == (5, "rate")
    assert burst.retry_after == pytest.approx(0.2)
    assert (empty.granted, empty.retry_after) == (0, pytest.approx(0.2))
    assert (later.granted, later.retry_after) == (2, pytest.approx(0.1))  # 2.5 tokens refilled in 0.5 s
    assert await quotas.used(r, ns, 1, DAY) == 7  # refused tokens never count against the day


async def test_rate_per_minute(r, ns):
    used_today = log_count(0)
    kw = dict(daily_quota=1000, used_today=used_today, rate_per_min=60)  # 1/s, burst defaults to 1
    assert (await quotas.take(r, ns, 1, DAY, 3, now=50.0, **kw)).granted == 1
    assert (await quotas.take(r, ns, 1, DAY, 3, now=50.5, **kw)).granted == 0
    assert (await quotas.take(r, ns, 1, DAY, 3, now=51.0, **kw)).granted == 1


async def test_provider_daily_cap_binds_only_that_provider(r, ns):
    used_today = log_count(0)
    cap = ProviderCap(per_day=4)
    gmail = await quotas.take(r, ns, 1, DAY, 10, daily_quota=100, used_today=used_today, provider="gmail",
                              provider_cap=cap)
    yahoo = await quotas.take(r, ns, 1, DAY, 10, daily_quota=100, used_today=used_today, provider="yahoo",
                              provider_cap=cap)
    assert (gmail.granted, gmail.reason, gmail.retry_after) == (4, "provider_daily", math.inf)
    assert yahoo.granted == 4
    assert await quotas.used(r, ns, 1, DAY) == 8  # both count against the IP's own day


async def test_provider_hourly_cap_is_a_bucket(r, ns):
    used_today = log_count(0)
    cap = ProviderCap(per_hour=60)  # 1/min, ten minutes' worth (10) may go at once
    kw = dict(daily_quota=1000, used_today=used_today, provider="gmail", provider_cap=cap)
    first = await quotas.take(r, ns, 1, DAY, 50, now=0.0, **kw)
    assert (first.granted, first.reason) == (10, "provider_rate")
    assert first.retry_after == pytest.approx(60.0)
    assert (await quotas.take(r, ns, 1, DAY, 50, now=120.0, **kw)).granted == 2


async def test_provider_counts_lost_with_the_day_are_assumed_the_worst_unless_counted(r, ns):
    cap = ProviderCap(per_day=10)
    await quotas.take(r, ns, 1, DAY, 6, daily_quota=100, used_today=log_count(0))  # 6 to other providers
    fresh = await quotas.take(r, ns, 1, DAY, 10, daily_quota=100, used_today=log_count(0), provider="gmail",
                              provider_cap=cap)
    assert fresh.granted == 10  # a day counted from zero knows gmail had none

    await r.delete(quotas.day_key(ns, 1, DAY))  # Redis loses the day; the log knows 16 sends
    lost = await quotas.take(r, ns, 1, DAY, 10, daily_quota=100, used_today=log_count(16), provider="gmail",
                             provider_cap=cap)
    # without a per-provider count from the log, all 16 are assumed to have gone to gmail
    assert (lost.granted, lost.reason) == (0, "provider_daily")

    async def gmail_count(ip_id: int, day: str, provider: str) -> int:
        return 1

    await r.delete(quotas.day_key(ns, 1, DAY))
    counted = await quotas.take(r, ns, 1, DAY, 10, daily_quota=100, used_today=log_count(16), provider="gmail",
                                provider_cap=cap, provider_used_today=gmail_count)
    assert counted.granted == 9
    assert await quotas.used(r, ns, 1, DAY, "gmail") == 10
    assert await quotas.used(r, ns, 1, DAY) == 25


async def test_refund_gives_tokens_back(r, ns):
    used_today = log_count(0)
    kw = dict(rate_per_sec=10, burst=10)
    await quotas.take(r, ns, 1, DAY, 10, daily_quota=10, used_today=used_today, now=5.0, **kw)
    await quotas.refund(r, ns, 1, DAY, 4, **kw)
    assert await quotas.used(r, ns, 1, DAY) == 6
    again = await quotas.take(r, ns, 1, DAY, 10, daily_quota=10, used_today=used_today, now=5.0, **kw)
    assert again.granted == 4  # the day and the rate bucket both got their 4 back
    await quotas.refund(r, ns, 1, DAY, 50)
    assert await quotas.used(r, ns, 1, DAY) == 0  # never below zero


async def test_refund_leaves_a_lost_counter_to_the_rebuild(r, ns):
    await quotas.refund(r, ns, 1, DAY, 3)
    assert await quotas.used(r, ns, 1, DAY) is None


async def test_deleted_counter_is_rebuilt_from_the_send_log_before_any_grant(r, ns):
    await quotas.take(r, ns, 1, DAY, 300, daily_quota=1000, used_today=log_count(0))
    await r.delete(quotas.day_key(ns, 1, DAY))
    used_today = log_count(990)  # the send log knows more than Redis had: it is the truth
    grant = await quotas.take(r, ns, 1, DAY, 300, daily_quota=1000, used_today=used_today)
    assert (grant.granted, grant.reason) == (10, "daily")
    assert used_today.calls == [(1, DAY)]
    assert await quotas.used(r, ns, 1, DAY) == 1000


async def test_flushall_mid_day_on_a_private_redis_still_stops_at_the_quota():
    with h.private_redis() as url:
        client = Redis.from_url(url)
        try:
            sent = 0

            async def used_today(ip_id: int, day: str) -> int:
                return sent

            while sent < 600:
                sent += (await quotas.take(client, "q", 1, DAY, 50, daily_quota=1000, used_today=used_today)).granted
            await client.flushall()
            assert await quotas.used(client, "q", 1, DAY) is None
            while True:
                grant = await quotas.take(client, "q", 1, DAY, 64, daily_quota=1000, used_today=used_today)
                sent += grant.granted
                if grant.granted == 0:
                    break
            assert sent == 1000
            assert await quotas.used(client, "q", 1, DAY) == 1000
        finally:
            await client.aclose()


def _run_processes(ctx, target, args_for, count: int, results, timeout: float = 120) -> list[int]:
    procs = [ctx.Process(target=target, args=args_for(i)) for i in range(count)]
    try:
        for p in procs:
            p.start()
        totals = [results.get(timeout=timeout) for _ in procs]
        for p in procs:
            p.join(timeout=timeout)
            assert p.exitcode == 0
        return totals
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
                p.join()


def test_eight_processes_racing_for_one_ip_get_exactly_the_quota(url, ns):
    ctx = multiprocessing.get_context("spawn")
    start, results = ctx.Barrier(8), ctx.Queue()
    totals = _run_processes(ctx, h.race_worker, lambda i: (url, ns, 7, DAY, 1000, i, start, results), 8, results)
    assert sum(totals) == 1000
    assert sum(1 for t in totals if t > 0) >= 2  # they really raced


def test_eight_processes_across_a_flushall_get_exactly_the_quota():
    ctx = multiprocessing.get_context("spawn")
    sent, rebuilds, lock = ctx.Value("i", 0, lock=False), ctx.Value("i", 0, lock=False), ctx.Lock()
    phase1, phase2, results = ctx.Barrier(9), ctx.Barrier(9), ctx.Queue()
    with h.private_redis() as url:
        import redis as sync_redis

        client = sync_redis.Redis.from_url(url)
        procs_args = lambda i: (url, "q", 7, DAY, 1000, 60, i, sent, rebuilds, lock, phase1, phase2, results)  # noqa: E731
        import threading

        def flush_between_phases() -> None:
            phase1.wait(timeout=120)
            assert client.hget(quotas.day_key("q", 7, DAY), "n") == b"480"
            client.flushall()
            phase2.wait(timeout=120)

        flusher = threading.Thread(target=flush_between_phases)
        flusher.start()
        try:
            totals = _run_processes(ctx, h.flush_worker, procs_args, 8, results)
        finally:
            flusher.join(timeout=130)
            client.close()
    assert sum(totals) == 1000
    assert sent.value == 1000
    assert rebuilds.value >= 2  # once at the start of the day, at least once after the flush


async def test_take_many_grants_each_ip_as_its_own_take_would(r, ns):
    """Several IPs in one call: each IP's grant, reason and limits are those of a take of its own; an IP whose
    counter is missing is rebuilt alone and taken again, the others are taken once."""
    await quotas.take(r, ns, 2, DAY, 4, daily_quota=5, used_today=log_count(0))   # IP 2 has 1 left today
    in_log = {1: 0, 3: 3, 4: 0}
    calls: list[int] = []

    async def used_today(ip_id: int, day: str) -> int:
        calls.append(ip_id)
        return in_log[ip_id]

    grants = await quotas.take_many(r, ns, DAY, [
        quotas.Take(ip_id=1, n=10, daily_quota=100, rate_per_sec=4, burst=6),
        quotas.Take(ip_id=2, n=10, daily_quota=5),
        quotas.Take(ip_id=3, n=10, daily_quota=8),
        quotas.Take(ip_id=4, n=5, daily_quota=100, provider="gmail", provider_cap=ProviderCap(per_day=2)),
    ], used_today=used_today, now=100.0)
    assert [(g.granted, g.reason, g.remaining) for g in grants] == [
        (6, "rate", 94), (1, "daily", 0), (5, "daily", 0), (2, "provider_daily", 98)]
    assert grants[0].retry_after == pytest.approx(0.25)
    assert grants[1].retry_after == grants[2].retry_after == grants[3].retry_after == math.inf
    # IPs 1, 3 and 4 had no counter yet: each rebuilt once from the log; IP 2's was there
    assert sorted(calls) == [1, 3, 4]
    assert [await quotas.used(r, ns, ip, DAY) for ip in (1, 2, 3, 4)] == [6, 5, 8, 2]
    assert await quotas.used(r, ns, 4, DAY, provider="gmail") == 2
    assert await quotas.take_many(r, ns, DAY, [], used_today=used_today) == []
