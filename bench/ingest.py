"""Ingest benchmark, each figure against asyncpg COPY of the same rows measured in the same run:

1. contacts/s through the HTTP API of a real `serve` process;
2. a CSV import of --csv-rows rows (default 1,000,000) by one `worker` process, with its peak RSS;
3. --up-contacts contacts (default 100,000) through the API of `email-engine up --workers N` until every one is
   validated (a loopback DNS server answers MX for their domains): ingest and validation as a user sees them.

Run: .venv/bin/python bench/ingest.py [--contacts 100000] [--batch 1000] [--clients 4] [--csv-rows 1000000]
     [--up-contacts 100000] [--up-workers 2] [--profile DIR]
--profile DIR records the CSV worker and the `up` processes with py-spy (raw collapsed stacks in DIR) and prints
where their time went. Needs a PostgreSQL (EMAIL_ENGINE_BENCH_DATABASE_URL, default
postgresql://postgres@127.0.0.1:5432/postgres; throwaway databases are created and dropped) and a Redis
(EMAIL_ENGINE_BENCH_REDIS_URL, default redis://127.0.0.1:6379/0; namespaces of its own, cleaned afterwards).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import hashlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
from redis.asyncio import Redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine import db as dbm  # noqa: E402
from engine.seed import seed  # noqa: E402
from tests.dnsserver import DnsServer  # noqa: E402

ADMIN_KEY = "ee_bench-admin-key-" + secrets.token_hex(8)
SECRET_KEY = "bench-secret-key-" + secrets.token_hex(8)
DOMAINS = [f"mail{i}.example" for i in range(200)]
LANGS = ["fr", "en-GB", "es", "de", "pt_BR", "ru", "zh", "hi", "ar"]
CATEGORIES = ["avocat", "expatrie", "client", "partenaire"]
COPY_COLUMNS = ["tenant_id", "data_source_id", "email", "email_hash", "first_name", "last_name", "company",
                "language", "category"]


def with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path="/" + name))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def contact(i: int) -> dict:
    return {"tenant_id": 1, "data_source_id": 4, "email": f"person{i}@{DOMAINS[i % len(DOMAINS)]}",
            "first_name": f"First{i}", "last_name": f"Last{i}", "company": f"Company {i % 997}",
            "language": LANGS[i % len(LANGS)], "category": CATEGORIES[i % len(CATEGORIES)],
            "tags": ["bench", f"cohort-{i % 10}"]}


def peak_rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a live process (far less sensitive to the machine's load than rows/s)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def wait_ready(base: str, proc: subprocess.Popen) -> None:
    async with httpx.AsyncClient() as c:
        for _ in range(300):
            if proc.poll() is not None:
                raise SystemExit(f"server exited with {proc.returncode}")
            try:
                if (await c.get(base + "/ready")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
    raise SystemExit("server did not become ready")


async def bench_api(base: str, n: int, batch: int, clients: int) -> float:
    batches = [{"contacts": [contact(i) for i in range(start, min(start + batch, n))]} for start in range(0, n, batch)]
    queue: asyncio.Queue = asyncio.Queue()
    for b in batches:
        queue.put_nowait(b)
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}

    async def client() -> None:
        async with httpx.AsyncClient(base_url=base, headers=headers, timeout=120) as c:
            while not queue.empty():
                body = queue.get_nowait()
                r = await c.post("/api/v2/contacts/ingest", json=body)
                assert r.status_code == 200 and r.json()["created"] == len(body["contacts"]), r.text[:300]

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return n / (time.perf_counter() - start)


async def bench_copy(url: str, n: int, runs: int = 3) -> float:
    """The median of `runs` COPYs of the same rows, each into a fresh copy of the contacts table with all its
    indexes: one COPY lasts a second or two, too short to stand alone on a shared machine."""
    from engine.validation import normalise_email

    conn = await asyncpg.connect(url)
    try:
        rows = []
        for i in range(n):
            c = contact(i)
            email = normalise_email(c["email"])
            rows.append((1, 4, email, hashlib.sha256(email.encode()).digest(), c["first_name"], c["last_name"],
                         c["company"], c["language"], c["category"]))
        rates = []
        for _ in range(runs):
            await conn.execute("DROP TABLE IF EXISTS contacts_copy")
            await conn.execute("CREATE TABLE contacts_copy (LIKE contacts INCLUDING ALL)")
            start = time.perf_counter()
            await conn.copy_records_to_table("contacts_copy", records=rows, columns=COPY_COLUMNS)
            rates.append(n / (time.perf_counter() - start))
        await conn.execute("DROP TABLE contacts_copy")
        return sorted(rates)[len(rates) // 2]
    finally:
        await conn.close()


def write_csv(path: Path, rows: int, first: int = 10_000_000) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["email", "first_name", "last_name", "company", "language", "category", "tags"])
        for i in range(rows):
            c = contact(first + i)
            w.writerow([c["email"], c["first_name"], c["last_name"], c["company"], c["language"], c["category"],
                        "csv,import"])


def start_profile(pid: int, out: Path | None, *, subprocesses: bool = False) -> subprocess.Popen | None:
    """py-spy attached to `pid` (and its children), 50 samples a second, until stop_profile()."""
    if out is None:
        return None
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    argv = [spy, "record", "-p", str(pid), "-r", "50", "-f", "raw", "-o", str(out), "--nonblocking"]
    return subprocess.Popen(argv + (["--subprocesses"] if subprocesses else []),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop_profile(spy: subprocess.Popen | None, out: Path | None, title: str) -> None:
    """Stop py-spy (it writes its file on SIGINT) and print the functions that took the most samples."""
    if spy is None or out is None:
        return
    spy.send_signal(signal.SIGINT)
    spy.wait(timeout=60)
    own: Counter[str] = Counter()
    total = 0
    for line in out.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        total += int(count)
        own[stack.split(";")[-1]] += int(count)
    print(f"profile {title}: {total} samples at 50/s (all threads and processes) in {out}; most own time:")
    for frame, count in own.most_common(12):
        print(f"  {count / max(total, 1):6.1%}  {frame}")


async def bench_csv(base: str, env: dict, rows: int, workdir: Path, profile: Path | None,
                    workers: int) -> tuple[float, int]:
    """Rows/s of one import, from its first batch to done, with `workers` worker processes (as `up` runs
    them): the import job on one, the validation jobs it enqueues on any; the peak RSS of the largest."""
    path = workdir / "contacts.csv"
    write_csv(path, rows)
    size = path.stat().st_size
    headers = {"Authorization": f"Bearer {ADMIN_KEY}", "content-type": "text/csv"}

    async def chunks():
        with open(path, "rb") as f:  # noqa: ASYNC230 - a bench reading its own file
            while chunk := f.read(1 << 20):
                yield chunk

    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=600) as c:
        r = await c.post("/api/v2/contacts/import", params={"tenant_id": 1, "data_source_id": 3},
                         content=chunks())
        assert r.status_code == 202, r.text
        import_id = r.json()["id"]
        procs = [subprocess.Popen([sys.executable, "-m", "api.cli", "worker"], env=env, cwd=ROOT,  # noqa: ASYNC220
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
                 for _ in range(workers)]
        spy = start_profile(procs[0].pid, profile / "csv-worker.txt" if profile else None)
        try:
            start = time.perf_counter()
            rss = 0
            while True:
                await asyncio.sleep(0.5)
                rss = max(rss, *(peak_rss_kb(w.pid) for w in procs))
                p = (await c.get(f"/api/v2/imports/{import_id}")).json()["progress"]
                if p["status"] in ("done", "failed"):
                    break
            elapsed = time.perf_counter() - start
            assert p["status"] == "done" and p["created"] == rows, p
            cpu = sum(cpu_seconds(w.pid) for w in procs)
            print(f"csv file: {size / 1e6:.0f} MB, {rows:,} rows, imported in {elapsed:.1f} s; worker CPU "
                  f"{cpu:.1f} s = {cpu / rows * 1e6:.1f} us/row (import and its validation jobs, startup included)")
            return rows / elapsed, max(rss, *(peak_rss_kb(w.pid) for w in procs))
        finally:
            stop_profile(spy, profile / "csv-worker.txt" if profile else None, "CSV import worker")
            for w in procs:
                os.killpg(w.pid, 15)
                w.wait(timeout=30)


async def bench_csv_alone(url: str, rows: int, workdir: Path) -> float:
    """Rows/s of the same import run in this process with its validation jobs not run: the import's own
    ceiling, measured as the API figure is (no validation competing for the database)."""
    from engine import csv_files, imports
    from engine.imports import ImportDefaults

    path = workdir / "alone.csv"
    write_csv(path, rows, first=20_000_000)
    pool = await dbm.create_pool(url, min_size=2, max_size=4)
    try:
        async with pool.acquire() as db:
            created = await imports.create_import(db, 1, path, path.stat().st_size, {},
                                                  ImportDefaults(data_source_id=3), csv_files.sniff(path))
        queued = 0

        async def not_validated(tenant_id: int, ids: list[int]) -> None:
            nonlocal queued
            queued += len(ids)

        start = time.perf_counter()
        await imports.run_import(pool, created.id, on_batch=not_validated)
        elapsed = time.perf_counter() - start
        assert queued == rows, queued
        return rows / elapsed
    finally:
        await pool.close()


async def bench_up(admin_url: str, redis_url: str, n: int, batch: int, clients: int, workers: int,
                   dns_address: str, workdir: Path, profile: Path | None) -> float:
    """Contacts/s from the first POST to the last contact validated, through `up --workers N`."""
    name = f"ee_bench_up_{secrets.token_hex(4)}"
    namespace = f"eebenchup{secrets.token_hex(4)}"
    conn = await asyncpg.connect(admin_url)
    await conn.execute(f'CREATE DATABASE "{name}"')
    await conn.close()
    url = with_database(admin_url, name)
    port = free_port()
    home = workdir / "up-home"
    env = {**os.environ, "EMAIL_ENGINE_DATABASE_URL": url, "EMAIL_ENGINE_REDIS_URL": redis_url,
           "EMAIL_ENGINE_REDIS_NAMESPACE": namespace, "EMAIL_ENGINE_ADMIN_KEY": ADMIN_KEY,
           "EMAIL_ENGINE_SECRET_KEY": SECRET_KEY, "EMAIL_ENGINE_HTTP_PORT": str(port),
           "EMAIL_ENGINE_HOME": str(home), "EMAIL_ENGINE_DNS_SERVERS": dns_address,
           "EMAIL_ENGINE_LOG_LEVEL": "WARNING"}
    env.pop("EMAIL_ENGINE_PMTA_HOST", None)
    up = subprocess.Popen([sys.executable, "-m", "api.cli", "up", "--workers", str(workers)], env=env, cwd=ROOT,  # noqa: ASYNC220
                          stdout=subprocess.DEVNULL, start_new_session=True)
    spy = None
    db = None
    try:
        base = f"http://127.0.0.1:{port}"
        await wait_ready(base, up)
        db = await asyncpg.connect(url)
        spy = start_profile(up.pid, profile / "up.txt" if profile else None, subprocesses=True)
        start = time.perf_counter()
        await bench_api(base, n, batch, clients)
        ingested = time.perf_counter() - start
        while True:
            pending = await db.fetchval("SELECT count(*) FROM contacts WHERE status = 'pending'")
            if pending == 0:
                break
            await asyncio.sleep(0.2)
        elapsed = time.perf_counter() - start
        counts = dict(await db.fetch("SELECT status::text, count(*) FROM contacts GROUP BY 1"))
        assert counts.get("valid") == n, counts
        print(f"up --workers {workers}: {n:,} contacts ingested in {ingested:.1f} s ({n / ingested:,.0f}/s while "
              f"validating), all validated after {elapsed:.1f} s ({counts})")
        return n / elapsed
    finally:
        stop_profile(spy, profile / "up.txt" if profile else None, f"up --workers {workers}")
        if db is not None:
            await db.close()
        os.killpg(up.pid, signal.SIGINT)
        up.wait(timeout=60)
        r = Redis.from_url(redis_url)
        async for key in r.scan_iter(match=f"{namespace}:*", count=1000):
            await r.delete(key)
        await r.aclose()
        conn = await asyncpg.connect(admin_url)
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.close()


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--contacts", type=int, default=100_000)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--csv-rows", type=int, default=1_000_000)
    ap.add_argument("--csv-workers", type=int, default=1)
    ap.add_argument("--csv-alone-rows", type=int, default=0,
                    help="also import this many rows in this process without validation running")
    ap.add_argument("--up-contacts", type=int, default=100_000)
    ap.add_argument("--up-workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--profile", type=Path, default=None)
    args = ap.parse_args()
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)

    admin_url = os.environ.get("EMAIL_ENGINE_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    redis_url = os.environ.get("EMAIL_ENGINE_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
    name = f"ee_bench_{secrets.token_hex(4)}"
    namespace = f"eebench{secrets.token_hex(4)}"
    conn = await asyncpg.connect(admin_url)
    await conn.execute(f'CREATE DATABASE "{name}"')
    await conn.close()
    url = with_database(admin_url, name)
    server = None
    try:
        await dbm.migrate(url)
        c = await dbm.connect(url)
        await seed(c)
        await c.close()
        async with DnsServer({d: {"MX": [(10, f"mx.{d}")]} for d in DOMAINS}) as dns:
            port = free_port()
            with tempfile.TemporaryDirectory(prefix="ee-bench-") as tmp:
                env = {**os.environ, "EMAIL_ENGINE_DATABASE_URL": url, "EMAIL_ENGINE_REDIS_URL": redis_url,
                       "EMAIL_ENGINE_REDIS_NAMESPACE": namespace, "EMAIL_ENGINE_ADMIN_KEY": ADMIN_KEY,
                       "EMAIL_ENGINE_SECRET_KEY": SECRET_KEY, "EMAIL_ENGINE_HTTP_PORT": str(port),
                       "EMAIL_ENGINE_HOME": tmp, "EMAIL_ENGINE_DNS_SERVERS": dns.address,
                       "EMAIL_ENGINE_LOG_LEVEL": "WARNING"}
                server = subprocess.Popen([sys.executable, "-m", "api.cli", "serve"], env=env, cwd=ROOT,  # noqa: ASYNC220
                                          start_new_session=True)
                base = f"http://127.0.0.1:{port}"
                await wait_ready(base, server)
                api_rate = await bench_api(base, args.contacts, args.batch, args.clients)
                copy_rate = await bench_copy(url, args.contacts)
                print(f"API ingest : {api_rate:10,.0f} contacts/s  ({args.contacts:,} contacts, batches of "
                      f"{args.batch:,}, {args.clients} clients)")
                print(f"COPY       : {copy_rate:10,.0f} contacts/s  (asyncpg copy_records_to_table, same rows, "
                      "median of 3)")
                print(f"ratio      : {api_rate / copy_rate:.2f} x COPY  (goal >= 0.25)")
                # the API part's validation jobs are not what the CSV figure measures
                r = Redis.from_url(redis_url)
                await r.delete(f"{namespace}:queue")
                await r.aclose()
                if args.csv_rows:
                    rate, rss = await bench_csv(base, env, args.csv_rows, Path(tmp), args.profile,
                                                args.csv_workers)
                    print(f"CSV import : {rate:10,.0f} rows/s with {args.csv_workers} worker process(es), "
                          f"peak RSS {rss / 1024:.0f} MB")
                    print(f"ratio      : {rate / copy_rate:.2f} x COPY  (goal >= 0.25, RSS <= 100 MB)")
                if args.csv_alone_rows:
                    rate = await bench_csv_alone(url, args.csv_alone_rows, Path(tmp))
                    print(f"CSV import, validation not running: {rate:10,.0f} rows/s ({args.csv_alone_rows:,} rows)")
                    print(f"ratio      : {rate / copy_rate:.2f} x COPY")
                os.killpg(server.pid, 15)
                server.wait(timeout=30)
                server = None
                if args.up_contacts:
                    rate = await bench_up(admin_url, redis_url, args.up_contacts, args.batch, args.clients,
                                          args.up_workers, dns.address, Path(tmp), args.profile)
                    print(f"up, ingested and validated: {rate:10,.0f} contacts/s")
                    print(f"ratio      : {rate / copy_rate:.2f} x COPY  (goal >= 0.15)")
    finally:
        if server is not None:
            os.killpg(server.pid, 15)
            server.wait(timeout=30)
        r = Redis.from_url(redis_url)
        async for key in r.scan_iter(match=f"{namespace}:*", count=1000):
            await r.delete(key)
        await r.aclose()
        conn = await asyncpg.connect(admin_url)
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.close()


if __name__ == "__main__":
    asyncio.run(main())
