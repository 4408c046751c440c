"""The PowerMTA watch: a real SMTP probe, one engine-wide pmta_unreachable alert per outage past N minutes, and
the worker job that runs it. The clock is the test's."""

from __future__ import annotations

import asyncio
import socket
import time

import msgspec
import pytest

from engine import db as dbm
from pmta import watch
from tests.smtpserver import SmtpTestServer
from workers import notify
from workers.notify import watch_pmta


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
async def pool_ctx(database_url, redis):
    pool = await dbm.create_pool(database_url, min_size=1, max_size=2)
    yield {"pool": pool, "redis_client": redis}
    await pool.close()


async def alerts(db) -> list[tuple]:
    return [tuple(r) for r in await db.fetch("SELECT tenant_id, kind, subject FROM alert_events ORDER BY id")]


async def test_an_outage_past_the_limit_alerts_once_and_recovery_rearms(db, redis, namespace) -> None:
    async with SmtpTestServer() as server:
        assert await watch.probe(server.host, server.port) is None
        assert await watch.watch(db, redis, namespace, server.host, server.port, minutes=5, now=0) == "up"
    port = closed_port()
    seen = [await watch.watch(db, redis, namespace, "127.0.0.1", port, minutes=5, now=t * 60.0)
            for t in range(0, 9)]
    assert seen == ["down"] * 5 + ["alerted"] + ["down"] * 3        # minute 5: past the limit, once
    assert await alerts(db) == [(None, "pmta_unreachable", f"pmta:127.0.0.1:{port}")]
    detail = await db.fetchval("SELECT detail FROM alert_events")
    assert detail["minutes"] == 5 and "ConnectionRefusedError" in detail["reason"]
    # Back up: the count starts again, and the next outage alerts again.
    async with SmtpTestServer(port=port) as server:
        assert await watch.watch(db, redis, namespace, server.host, port, minutes=5, now=600) == "up"
    seen = [await watch.watch(db, redis, namespace, "127.0.0.1", port, minutes=5, now=660 + t * 60.0)
            for t in range(0, 7)]
    assert seen == ["down"] * 5 + ["alerted", "down"]
    assert len(await alerts(db)) == 2


async def test_a_server_that_is_not_smtp_is_unreachable() -> None:
    async def http_like(reader, writer):
        writer.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(http_like, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        reason = await watch.probe("127.0.0.1", port, within=2)
    finally:
        server.close()
        await server.wait_closed()
    assert reason is not None


async def test_the_workers_notifier_probes_a_configured_powermta(settings, pool_ctx, redis, namespace) -> None:
    port = closed_port()
    pool_ctx.update(settings=msgspec.structs.replace(settings, pmta_host="127.0.0.1", pmta_port=port),
                    secret_key="unused-secret-key-0123456789", http=None)
    stop = asyncio.Event()
    task = asyncio.create_task(notify._loop(pool_ctx, stop))
    key = f"{namespace}:pmta-watch:127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while not await redis.exists(key):           # the first round probes: the outage's start is kept
            assert time.monotonic() < deadline, "the notifier never probed"
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await task
    assert await watch_pmta(pool_ctx) == "down"
