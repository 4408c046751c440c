"""Tokens per second through the engine's quota script against a bare Redis INCR loop, in the same run.

Both sides use redis-py asyncio on one client with CONCURRENCY tasks each awaiting one command at a time
(no pipelining on either side, so the shapes match). Then batched takes (n tokens per script call) and the
Rotator picking batches over four IPs. Uses the Redis at EMAIL_ENGINE_TEST_REDIS_URL or 127.0.0.1:6379 under
a private key namespace, deleted afterwards.

    .venv/bin/python bench/quota.py [--calls 40000] [--concurrency 32]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import sys
import time
from pathlib import Path

from redis.asyncio import Redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.providers import ProviderCap  # noqa: E402
from engine.sending import quotas  # noqa: E402
from engine.sending.rotation import Candidate, Rotator  # noqa: E402

DAY = "2024-03-01"
HUGE = 10**12


async def nothing_sent(ip_id: int, day: str) -> int:
    return 0


async def run(tasks: int, calls: int, one) -> float:
    """Seconds for `calls` awaits of `one()` spread over `tasks` concurrent tasks."""
    per_task = calls // tasks

    async def worker() -> None:
        for _ in range(per_task):
            await one()

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(tasks)))
    return time.perf_counter() - start


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=40_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--batch", type=int, default=100)
    opts = parser.parse_args()
    url = os.environ.get("EMAIL_ENGINE_TEST_REDIS_URL") or "redis://127.0.0.1:6379"
    ns = f"eebench{secrets.token_hex(4)}"
    client = Redis.from_url(url)
    c, n, b = opts.concurrency, opts.calls, opts.batch
    rows: list[tuple[str, float]] = []
    try:
        await quotas.take(client, ns, 1, DAY, 1, daily_quota=HUGE, used_today=nothing_sent)  # warm: SCRIPT LOAD
        incr_key = f"{ns}:incr"
        t = await run(c, n, lambda: client.incr(incr_key))
        baseline = n / t
        rows.append(("bare INCR, 1 per call (baseline)", baseline))

        t = await run(c, n, lambda: quotas.take(client, ns, 1, DAY, 1, daily_quota=HUGE, used_today=nothing_sent))
        rows.append(("take n=1 (daily counter)", n / t))

        t = await run(c, n, lambda: quotas.take(
            client, ns, 2, DAY, 1, daily_quota=HUGE, used_today=nothing_sent, rate_per_sec=HUGE, burst=HUGE,
            provider="gmail", provider_cap=ProviderCap(per_day=HUGE, per_hour=HUGE)))
        rows.append(("take n=1 (daily + rate + provider caps)", n / t))

        batched_calls = n // 4
        t = await run(c, batched_calls, lambda: quotas.take(client, ns, 3, DAY, b, daily_quota=HUGE,
                                                             used_today=nothing_sent))
        rows.append((f"take n={b} (daily counter), tokens/s", batched_calls * b / t))

        rotator = Rotator(ns, nothing_sent)
        candidates = [Candidate(ip_id=10 + i, vmta_name=f"vmta-{i}", weight=i + 1, daily_quota=HUGE)
                      for i in range(4)]
        t = await run(c, batched_calls, lambda: rotator.pick(client, "bench", candidates, b, day=DAY))
        rows.append((f"Rotator.pick n={b} over 4 IPs, tokens/s", batched_calls * b / t))
    finally:
        async for key in client.scan_iter(match=f"{ns}:*", count=1000):
            await client.delete(key)
        await client.aclose()

    print(f"redis {url}  concurrency {c}  calls {n}  python {sys.version.split()[0]}")
    for label, rate in rows:
        print(f"  {label:<45} {rate:>12,.0f} /s   ratio to INCR {rate / baseline:6.2f}")


if __name__ == "__main__":
    asyncio.run(main())
