"""Rotation at its edges: what mutation testing (mutation/run.sh) showed the other tests let change.

Every token a pick takes is heard by `on_grant` (the caller writes it to the quota ledger, which a lost Redis
counter is rebuilt from: a grant not heard is a quota overrun after a Redis loss); an IP with a quota of one
sends once; IPs without a quota make the campaign wait for good, saying why; one message per call still
rotates by weight (the round-robin position outlives the call).
"""

from __future__ import annotations

import math
from collections import Counter

import pytest
from redis.asyncio import Redis

from engine.sending import quotas
from engine.sending.rotation import Candidate, Pick, Rotator, Wait
from tests import _quota_helpers as h

DAY = "2024-03-01"


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


def ip(ip_id: int, quota: int, weight: int = 1) -> Candidate:
    return Candidate(ip_id=ip_id, vmta_name=f"vmta-{ip_id}", weight=weight, daily_quota=quota)


async def test_every_token_taken_is_heard_by_on_grant(redis_and_ns):
    redis, ns = redis_and_ns
    heard: Counter = Counter()
    rotator = Rotator(ns, nothing_sent)
    picks = await rotator.pick(redis, 1, [ip(1, 1000, 1), ip(2, 1000, 3)], 40, day=DAY,
                               on_grant=lambda ip_id, n: heard.update({ip_id: n}))
    assert isinstance(picks, list) and len(picks) == 40
    assert heard == Counter(p.ip_id for p in picks) == Counter({1: 10, 2: 30})
    for ip_id in (1, 2):
        assert await quotas.used(redis, ns, ip_id, DAY) == heard[ip_id]


async def test_an_ip_with_a_quota_of_one_sends_once(redis_and_ns):
    redis, ns = redis_and_ns
    rotator = Rotator(ns, nothing_sent)
    assert await rotator.pick(redis, 1, [ip(7, 1)], 5, day=DAY, day_ends_in=60) == [Pick(ip_id=7, vmta_name="vmta-7")]
    later = await rotator.pick(redis, 1, [ip(7, 1)], 1, day=DAY, day_ends_in=60)
    assert isinstance(later, Wait) and later.seconds > 0


async def test_ips_without_a_quota_wait_for_good_saying_why(redis_and_ns):
    redis, ns = redis_and_ns
    rotator = Rotator(ns, nothing_sent)
    for candidates in ([], [ip(1, 0), ip(2, 0)], [ip(3, 10, weight=0)]):
        assert await rotator.pick(redis, 1, candidates, 3, day=DAY, day_ends_in=60) == \
            Wait(seconds=math.inf, reason="no IP is warming or active with a quota")


async def test_one_pick_per_call_still_rotates_by_weight(redis_and_ns):
    redis, ns = redis_and_ns
    rotator = Rotator(ns, nothing_sent)
    candidates = [ip(1, 1000, 1), ip(2, 1000, 1), ip(3, 1000, 2)]
    picked = Counter()
    for _ in range(40):
        [one] = await rotator.pick(redis, 1, candidates, 1, day=DAY)
        picked[one.ip_id] += 1
    assert picked == Counter({1: 10, 2: 10, 3: 20})  # the position is kept between calls, per tenant
