"""What one /metrics reading of PostgreSQL costs against the send log's size, beside a bare count of the same
rows in the same run.

Builds a throwaway database (migrated and seeded) holding one campaign of --rows send rows over 100 IPs'
VMTAs and contacts with a mix of MX hosts and statuses, then times engine.fleet_metrics.read_postgres (every
family, one repeatable-read snapshot) against `SELECT count(*) FROM sends WHERE campaign_id = $1`, the
cheapest read of those rows. Uses the PostgreSQL at EMAIL_ENGINE_TEST_DATABASE_URL (or 127.0.0.1:5432); the
database is dropped afterwards. Redis is not read: its part is two O(1) commands.

    .venv/bin/python bench/metrics.py [--rows 200000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import sys
import time
from pathlib import Path

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine import db as dbm  # noqa: E402
from engine.fleet_metrics import read_postgres  # noqa: E402
from engine.seed import seed  # noqa: E402


def with_database(url: str, name: str) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/{name}"


async def fill(conn: asyncpg.Connection, rows: int) -> int:
    campaign = await conn.fetchval("INSERT INTO campaigns (tenant_id, name, from_name, from_email, status) "
                                   "VALUES (1, 'bench', 'Bench', 'hello@sos-expat-mail-01.example', 'sending') "
                                   "RETURNING id")
    await conn.execute(
        "INSERT INTO contacts (tenant_id, email, email_hash, status, mx_host) "
        "SELECT 1, 'c' || i || '@inbox' || (i % 500) || '.example', sha256(('c' || i)::bytea), 'valid', "
        "       (ARRAY['alt1.aspmx.l.google.com', 'mx1.hotmail.com', 'mx.inbox.example', NULL])[1 + i % 4] "
        "FROM generate_series(1, $1) AS i", rows)
    await conn.execute(
        "INSERT INTO sends (tenant_id, campaign_id, contact_id, status, ip_id, vmta, ip_assigned_at, injected_at, "
        "                   bounce_category, complained_at) "
        "SELECT 1, $1, c.id, (ARRAY['delivered', 'injected', 'bounced', 'failed', 'skipped', 'deferred', "
        "                           'delivered', 'injected']::send_status[])[1 + c.id % 8], "
        "       i.id, i.vmta_name, now(), CASE WHEN c.id % 8 NOT IN (3, 4, 5) THEN now() END, "
        "       CASE WHEN c.id % 8 IN (2, 3) THEN (ARRAY['bad-mailbox', 'spam-related'])[1 + c.id % 2] END, "
        "       CASE WHEN c.id % 997 = 0 THEN now() END "
        "FROM contacts c JOIN ips i ON i.id = 1 + c.id % 100 WHERE c.tenant_id = 1", campaign)
    await conn.execute("ANALYZE")
    return campaign


async def timed(repeat: int, one) -> float:
    runs = []
    for _ in range(repeat):
        start = time.perf_counter()
        await one()
        runs.append(time.perf_counter() - start)
    return statistics.median(runs)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=5)
    opts = parser.parse_args()
    url = os.environ.get("EMAIL_ENGINE_TEST_DATABASE_URL") or "postgresql://postgres@127.0.0.1:5432/postgres"
    name = f"eebench_metrics_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        await dbm.migrate(with_database(url, name))
        conn = await dbm.connect(with_database(url, name))
        try:
            await seed(conn)
            campaign = await fill(conn, opts.rows)
            baseline = await timed(opts.repeat, lambda: conn.fetchval(
                "SELECT count(*) FROM sends WHERE campaign_id = $1", campaign))
            reading = await timed(opts.repeat, lambda: read_postgres(conn, worker_timeout=10))
        finally:
            await conn.close()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
    print(f"{opts.rows:,} send rows in view, median of {opts.repeat}:")
    print(f"  baseline count(*) of the campaign's rows : {baseline * 1000:8.1f} ms")
    print(f"  /metrics reading of PostgreSQL           : {reading * 1000:8.1f} ms  ({reading / baseline:.1f}x)")


if __name__ == "__main__":
    asyncio.run(main())
