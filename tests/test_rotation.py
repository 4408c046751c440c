"""Smooth weighted round-robin, alone and combined with the Redis quotas in `Rotator`."""

from __future__ import annotations

import itertools
import math
import random
from collections import Counter

import pytest
from redis.asyncio import Redis

from engine.providers import ProviderCap
from engine.sending import quotas
from engine.sending.rotation import (
    Candidate,
    Pick,
    Rotator,
    Wait,
    smooth_weighted_next,
    smooth_weighted_sequence,
)
from tests import _quota_helpers as h

DAY = "2024-03-01"
WEIGHTS = {1: 1, 2: 2, 3: 3, 4: 4}


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


async def nothing_sent(ip_id: int, day: str) -> int:
    return 0


class FakeClock:
    """One clock for the rotator's out-marks and the quota script's `now`."""

    def __init__(self, t: float = 1_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def ips(weights: dict[int, int], quota: int = 10**9, **kw) -> list[Candidate]:
    return [Candidate(ip_id=i, vmta_name=f"vmta-{i}", weight=w, daily_quota=quota, **kw) for i, w in weights.items()]


def shares(ids: list[int]) -> dict[int, float]:
    counts = Counter(ids)
    return {k: 100 * v / len(ids) for k, v in counts.items()}


def test_nginx_reference_sequence():
    # nginx's own example (ngx_http_upstream_round_robin.c): weights a=5, b=1, c=1 give a a b a c a a
    assert "".join(smooth_weighted_sequence([("a", 5), ("b", 1), ("c", 1)], 7)) == "aabacaa"


def test_shares_over_100k_picks_are_within_half_a_point():
    picks = smooth_weighted_sequence(list(WEIGHTS.items()), 100_000)
    for ip_id, share in shares(picks).items():
        assert abs(share - 10 * WEIGHTS[ip_id]) < 0.5


def test_deterministic_and_smooth():
    a = smooth_weighted_sequence(list(WEIGHTS.items()), 1000)
    b = smooth_weighted_sequence(list(WEIGHTS.items()), 1000)
    assert a == b
    assert a[:10] == [4, 3, 2, 4, 1, 3, 4, 2, 3, 4]  # one cycle holds each IP exactly `weight` times
    # smooth: at most two in a row (plain WRR would send ip 4 four times running)
    assert max(len(list(run)) for _, run in itertools.groupby(a)) == 2


def test_sequence_is_the_same_as_step_by_step():
    rng = random.Random(7)
    for _ in range(200):
        peers = [(f"ip{i}", rng.randint(1, 50)) for i in range(rng.randint(1, 60))]
        start = {key: rng.randint(-100, 100) for key, _ in peers if rng.random() < 0.7}
        batched, stepped = dict(start), dict(start)
        n = rng.randint(1, 700)
        assert smooth_weighted_sequence(peers, n, batched) == [smooth_weighted_next(stepped, peers) for _ in range(n)]
        assert batched == stepped


def test_peers_left_out_keep_their_place():
    state: dict[str, int] = {}
    smooth_weighted_next(state, [("a", 1), ("b", 1)])
    before = state["b"]
    smooth_weighted_next(state, [("a", 1)])
    assert state["b"] == before


async def test_rotator_shares_over_100k_picks(r, ns):
    rot = Rotator(ns, nothing_sent)
    picked: list[int] = []
    for _ in range(100):
        result = await rot.pick(r, "tenant-a", ips(WEIGHTS), 1000, day=DAY)
        assert isinstance(result, list) and len(result) == 1000
        picked += [p.ip_id for p in result]
    for ip_id, share in shares(picked).items():
        assert abs(share - 10 * WEIGHTS[ip_id]) < 0.5
    for ip_id in WEIGHTS:  # every pick holds a token, and no more were taken
        assert await quotas.used(r, ns, ip_id, DAY) == picked.count(ip_id)


async def test_no_ip_is_picked_past_its_quota_and_then_all_wait(r, ns):
    quotas_by_ip = {1: 5_000, 2: 3_000, 3: 100_000, 4: 2_000}
    candidates = [Candidate(ip_id=i, vmta_name=f"vmta-{i}", weight=WEIGHTS[i], daily_quota=q)
                  for i, q in quotas_by_ip.items()]
    rot = Rotator(ns, nothing_sent)
    picked: list[int] = []
    while True:
        result = await rot.pick(r, "tenant-a", candidates, 997, day=DAY, day_ends_in=3600.0)
        if isinstance(result, Wait):
            break
        picked += [p.ip_id for p in result]
    counts = Counter(picked)
    assert counts == quotas_by_ip  # each IP went to exactly its quota, never past it
    assert result.seconds == pytest.approx(3600.0, abs=5)
    assert "daily" in result.reason
    for ip_id, q in quotas_by_ip.items():
        assert await quotas.used(r, ns, ip_id, DAY) == q


async def test_ip_out_of_rate_drops_out_until_its_bucket_refills(r, ns):
    clock = FakeClock()
    rot = Rotator(ns, nothing_sent, clock=clock, redis_now=clock)
    limited = Candidate(ip_id=1, vmta_name="slow", weight=1, daily_quota=1000, rate_per_min=60, burst=2)
    free = Candidate(ip_id=2, vmta_name="fast", weight=1, daily_quota=1000)
    first = await rot.pick(r, "t", [limited, free], 10, day=DAY)
    assert Counter(p.ip_id for p in first) == {1: 2, 2: 8}  # the slow IP gave its burst, then sat out
    clock.t += 0.5
    second = await rot.pick(r, "t", [limited, free], 4, day=DAY)
    assert {p.ip_id for p in second} == {2}  # still out: next token at +1 s
    clock.t += 0.5
    third = await rot.pick(r, "t", [limited, free], 4, day=DAY)
    assert Counter(p.ip_id for p in third)[1] == 1  # back with the one token it refilled


async def test_all_out_of_rate_returns_the_earliest_refill(r, ns):
    clock = FakeClock()
    rot = Rotator(ns, nothing_sent, clock=clock, redis_now=clock)
    candidates = [Candidate(ip_id=1, vmta_name="a", weight=1, daily_quota=1000, rate_per_min=60, burst=1),
                  Candidate(ip_id=2, vmta_name="b", weight=1, daily_quota=1000, rate_per_min=30, burst=1)]
    got = await rot.pick(r, "t", candidates, 5, day=DAY)
    assert sorted(p.ip_id for p in got) == [1, 2]
    wait = await rot.pick(r, "t", candidates, 5, day=DAY)
    assert isinstance(wait, Wait)
    assert wait.seconds == pytest.approx(1.0)  # ip 1 refills at 1/s, ip 2 at 0.5/s
    assert "rate" in wait.reason


async def test_provider_cap_benches_an_ip_for_that_provider_only(r, ns):
    rot = Rotator(ns, nothing_sent)
    candidates = ips({1: 1, 2: 1})
    gmail = await rot.pick(r, "t", candidates, 30, day=DAY, provider="gmail", provider_cap=ProviderCap(per_day=5))
    assert Counter(p.ip_id for p in gmail) == {1: 5, 2: 5}
    assert isinstance(await rot.pick(r, "t", candidates, 1, day=DAY, provider="gmail",
                                     provider_cap=ProviderCap(per_day=5)), Wait)
    other = await rot.pick(r, "t", candidates, 4, day=DAY, provider="other")
    assert isinstance(other, list) and len(other) == 4


async def test_only_ips_from_the_callers_list_and_never_paused_ones(r, ns):
    rot = Rotator(ns, nothing_sent)
    tenant_a = ips({1: 5, 2: 5}) + [Candidate(ip_id=3, vmta_name="vmta-3", weight=50, daily_quota=10**6,
                                              status="paused")]
    tenant_b = [Candidate(ip_id=9, vmta_name="vmta-9", weight=1, daily_quota=10**6)]
    a = await rot.pick(r, "a", tenant_a, 500, day=DAY)
    b = await rot.pick(r, "b", tenant_b, 500, day=DAY)
    assert {p.ip_id for p in a} == {1, 2}
    assert {p.ip_id for p in b} == {9}
    blocked = [Candidate(ip_id=5, vmta_name="vmta-5", weight=1, daily_quota=100, status=s)
               for s in ("paused", "blacklisted", "retired")]
    none = await rot.pick(r, "c", blocked, 1, day=DAY)
    assert isinstance(none, Wait) and math.isinf(none.seconds)


async def test_reserve_takes_ahead_and_close_refunds(r, ns):
    rot = Rotator(ns, nothing_sent, reserve=10)
    candidates = ips({1: 1})
    for _ in range(3):
        assert await rot.pick(r, "t", candidates, 1, day=DAY) == [Pick(ip_id=1, vmta_name="vmta-1")]
    assert await quotas.used(r, ns, 1, DAY) == 11  # one Redis call took 1 + 10 ahead
    await rot.close(r)
    assert await quotas.used(r, ns, 1, DAY) == 3


async def test_reserve_never_passes_the_quota(r, ns):
    rot = Rotator(ns, nothing_sent, reserve=64)
    candidates = ips({1: 1, 2: 3}, quota=100)
    total = 0
    while isinstance(result := await rot.pick(r, "t", candidates, 7, day=DAY), list):
        total += len(result)
    assert total == 200
    await rot.close(r)
    assert await quotas.used(r, ns, 1, DAY) == 100 and await quotas.used(r, ns, 2, DAY) == 100


async def test_a_new_day_refunds_yesterdays_pockets(r, ns):
    rot = Rotator(ns, nothing_sent, reserve=5)
    await rot.pick(r, "t", ips({1: 1}), 1, day=DAY)
    await rot.pick(r, "t", ips({1: 1}), 1, day="2024-03-02")
    assert await quotas.used(r, ns, 1, DAY) == 1
    assert await quotas.used(r, ns, 1, "2024-03-02") == 6
    await rot.close(r)


def test_sequence_over_whole_cycles_is_the_same_as_step_by_step():
    """From a state the rotation reaches (a fresh one, or one a cycle later), batches longer than the total
    weight repeat the cycle: the picks and the state they leave are those of the steps one by one."""
    rng = random.Random(11)
    for _ in range(100):
        peers = [(i, rng.randint(1, 5)) for i in range(rng.randint(1, 50))]
        total = sum(w for _, w in peers)
        batched: dict[int, int] = {}
        stepped: dict[int, int] = {}
        for n in (rng.randint(1, 3 * total), total, total + 1, 2 * total, rng.randint(1, 700)):
            assert smooth_weighted_sequence(peers, n, batched) == [smooth_weighted_next(stepped, peers)
                                                                    for _ in range(n)]
            assert batched == {k: v for k, v in stepped.items()}
