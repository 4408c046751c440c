"""A worker killed with SIGKILL mid-campaign: after a restart no contact is missing, and the only contacts
that may get the campaign twice are the ones in flight at the moment of the kill, which are counted."""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import sys
from pathlib import Path

import asyncpg

from tests.campaign_helpers import add_contacts, create_and_start, mark_valid, use_ips, wait_for_status
from tests.conftest import ADMIN_KEY, SECRET_KEY
from tests.smtpserver import SmtpTestServer

ROOT = Path(__file__).resolve().parent.parent
CONTACTS = 3000


async def _worker(settings, server, home: Path) -> asyncio.subprocess.Process:
    env = {**os.environ,
           "EMAIL_ENGINE_DATABASE_URL": settings.database_url, "EMAIL_ENGINE_REDIS_URL": settings.redis_url,
           "EMAIL_ENGINE_REDIS_NAMESPACE": settings.redis_namespace, "EMAIL_ENGINE_HOME": str(home),
           "EMAIL_ENGINE_ADMIN_KEY": ADMIN_KEY, "EMAIL_ENGINE_SECRET_KEY": SECRET_KEY,
           "EMAIL_ENGINE_PUBLIC_URL": settings.public_url, "EMAIL_ENGINE_LOG_LEVEL": "WARNING",
           "EMAIL_ENGINE_PMTA_HOST": server.host, "EMAIL_ENGINE_PMTA_PORT": str(server.port),
           "EMAIL_ENGINE_PMTA_POOL_SIZE": "4"}
    return await asyncio.create_subprocess_exec(sys.executable, "-m", "api.cli", "worker", env=env, cwd=ROOT,
                                                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)


async def test_sigkill_mid_campaign_loses_nothing(client, admin, seeded, db: asyncpg.Connection, settings,
                                                  tmp_path: Path) -> None:
    emails = await add_contacts(client, admin, CONTACTS)
    await mark_valid(db)
    await use_ips(db, 1, [1, 1])
    async with SmtpTestServer() as server:
        first = await _worker(settings, server, tmp_path)
        second = None
        try:
            campaign_id = await create_and_start(client, admin)
            for _ in range(600):
                if len(server.messages) >= CONTACTS // 3:
                    break
                await asyncio.sleep(0.05)
            assert len(server.messages) < CONTACTS, "the worker finished before it could be killed"
            first.send_signal(signal.SIGKILL)
            await first.wait()
            killed_at = len(server.messages)
            second = await _worker(settings, server, tmp_path)
            await wait_for_status(db, campaign_id, "completed", within=120)
        finally:
            for proc in (first, second):
                if proc is not None and proc.returncode is None:
                    proc.terminate()
                    await proc.wait()
        received = collections.Counter(r for m in server.messages for r in m.rcpt_tos)

    missing = set(emails) - set(received)
    duplicates = sum(n - 1 for n in received.values() if n > 1)
    in_flight = await db.fetchval("SELECT recovered_in_flight FROM campaigns WHERE id = $1", campaign_id)
    stats = (await client.get(f"/api/v2/campaigns/1/{campaign_id}/stats", headers=admin)).json()
    assert 0 < killed_at < CONTACTS
    assert not missing, f"{len(missing)} contacts never received the campaign"
    assert duplicates <= in_flight, (duplicates, in_flight)
    # The bound: the chunk on the wire and the next one, marked while it is (dispatch.Tuning.chunk, 64 by
    # default): at most two chunks are ambiguous after a crash.
    assert in_flight <= 2 * 64
    assert stats["recovered_in_flight"] == in_flight
    assert stats["by_status"]["injected"] == CONTACTS
