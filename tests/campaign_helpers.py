"""Shared set-up for campaign tests: contacts, sending IPs, a running worker, waiting for a campaign."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg

from engine.languages import Language
from tests.conftest import SECRET_KEY

LANGS = [lang.value for lang in Language]


async def add_contacts(client, headers, n: int, *, tenant_id: int = 1, source_id: int = 1, prefix: str = "c",
                       domain: str = "inbox{i}.example", language_cycle: list[str] | None = None) -> list[str]:
    """Ingest n contacts through the API (valid status set directly) and return their addresses."""
    langs = language_cycle or LANGS
    emails = []
    for start in range(0, n, 5000):
        batch = []
        for i in range(start, min(n, start + 5000)):
            email = f"{prefix}{i}@{domain.format(i=i % 50)}"
            emails.append(email)
            batch.append({"tenant_id": tenant_id, "data_source_id": source_id, "email": email,
                          "first_name": f"Name{i}", "company": f"Company {i}", "language": langs[i % len(langs)],
                          "tags": ["campaign-test"]})
        r = await client.post("/api/v2/contacts/ingest", json={"contacts": batch}, headers=headers)
        assert r.status_code in (200, 201), r.text
    return emails


async def mark_valid(db: asyncpg.Connection, tenant_id: int = 1) -> None:
    await db.execute("UPDATE contacts SET status = 'valid' WHERE tenant_id = $1 AND status = 'pending'", tenant_id)


async def use_ips(db: asyncpg.Connection, tenant_id: int, weights: list[int], *, daily_cap: int = 1_000_000) -> list[str]:
    """Keep len(weights) active IPs with these weights; pause the tenant's others. Returns their VMTA names."""
    rows = await db.fetch("SELECT id, vmta_name FROM ips WHERE tenant_id = $1 ORDER BY id", tenant_id)
    chosen = rows[:len(weights)]
    for row, weight in zip(chosen, weights, strict=True):
        await db.execute("UPDATE ips SET status = 'active', weight = $2, daily_cap = $3 WHERE id = $1",
                         row["id"], weight, daily_cap)
    await db.execute("UPDATE ips SET status = 'paused' WHERE tenant_id = $1 AND NOT (id = ANY($2::bigint[]))",
                     tenant_id, [r["id"] for r in chosen])
    return [r["vmta_name"] for r in chosen]


@contextlib.asynccontextmanager
async def running_worker(settings, **ctx: Any) -> AsyncIterator[Any]:
    """An arq worker in this event loop (its campaign sender included), stopped on exit."""
    from workers.main import create_worker

    worker = create_worker(settings, secret_key=SECRET_KEY, handle_signals=False, ctx=dict(ctx))
    task = asyncio.create_task(worker.async_run())
    try:
        yield worker
    finally:
        await worker.close()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


async def wait_for_status(db: asyncpg.Connection, campaign_id: int, status: str, *, within: float = 60) -> None:
    deadline = time.monotonic() + within
    current = None
    while time.monotonic() < deadline:
        current = await db.fetchval("SELECT status::text FROM campaigns WHERE id = $1", campaign_id)
        if current == status:
            return
        await asyncio.sleep(0.1)
    counts = await db.fetch("SELECT status::text, count(*) FROM sends WHERE campaign_id = $1 GROUP BY 1", campaign_id)
    raise AssertionError(f"campaign {campaign_id} is {current}, not {status}, after {within}s: {counts}")


async def create_and_start(client, headers, **fields: Any) -> int:
    body = {"tenant_id": 1, "name": "Test campaign", "from_name": "SOS-Expat Équipe",
            "from_email": "hello@sos-expat-mail-01.example", "reply_to": "team@sos-expat-mail-01.example",
            "audience": {"tags": ["campaign-test"]}, **fields}
    r = await client.post("/api/v2/campaigns", json=body, headers=headers)
    assert r.status_code == 201, r.text
    campaign_id = r.json()["id"]
    r = await client.post(f"/api/v2/campaigns/1/{campaign_id}/start", headers=headers)
    assert r.status_code == 200, r.text
    return campaign_id
