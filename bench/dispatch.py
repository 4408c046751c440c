"""Dispatch benchmarks against Postfix's smtp-sink standing in for PowerMTA.

    .venv/bin/python bench/dispatch.py injector [--messages 50000] [--size 4096] [--connections 8]
    .venv/bin/python bench/dispatch.py campaign [--contacts 50000] [--connections 8]

Part 2 (`campaign`): a real worker process sends a whole campaign (50,000 contacts in nine languages over
50 IPs) from `start` until every send row is final, against a throwaway database on
EMAIL_ENGINE_BENCH_DATABASE_URL (default: the local PostgreSQL); smtp-source against the same sink is the
baseline. It reports the worker's CPU per message and its peak RSS.

In one run, against one smtp-sink: (a) Postfix's smtp-source (C, the ceiling), (b) pmta.inject.Injector,
(c) plain aiosmtplib with the same number of persistent connections. Client and sink share the machine's
cores, so only ratios taken in the same run mean anything (MACHINE-NOTES.md).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import uvloop

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.sending.transport import Outcome, OutgoingMessage  # noqa: E402
from pmta.inject import Injector  # noqa: E402

SMTP_SINK = Path("/usr/sbin/smtp-sink")
SMTP_SOURCE = Path("/usr/sbin/smtp-source")
TARGET_RATIO = 0.6


def ensure_postfix_tools() -> None:
    """Install Postfix's smtp-sink/smtp-source through tests/system-deps.sh when missing and we are root."""
    if SMTP_SINK.exists() and SMTP_SOURCE.exists():
        return
    if os.geteuid() != 0:
        sys.exit("smtp-sink missing: run `sudo bash tests/system-deps.sh` first")
    subprocess.run(["bash", str(ROOT / "tests" / "system-deps.sh")], check=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_sink(port: int, *, pipelining: bool = True) -> subprocess.Popen:
    """Start smtp-sink on 127.0.0.1:port (backlog 1024) and wait until it accepts connections."""
    command = ([str(SMTP_SINK)] + (["-u", "nobody"] if os.geteuid() == 0 else []) + ([] if pipelining else ["-P"])
               + [f"127.0.0.1:{port}", "1024"])
    sink = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return sink
        except OSError:
            time.sleep(0.05)
    sink.kill()
    sys.exit("smtp-sink did not start")


def stop_sink(sink: subprocess.Popen) -> None:
    sink.terminate()
    try:
        sink.wait(5)
    except subprocess.TimeoutExpired:
        sink.kill()
        sink.wait()


def bench_smtp_source(port: int, messages: int, size: int, sessions: int) -> float:
    """Postfix smtp-source: persistent sessions, one recipient each; returns messages per second."""
    command = [str(SMTP_SOURCE), "-l", str(size), "-r", "1", "-N", "-d", "-s", str(sessions),
               "-m", str(messages), f"127.0.0.1:{port}"]
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return messages / (time.perf_counter() - started)


def prepare_messages(count: int, size: int) -> list[OutgoingMessage]:
    """`count` distinct messages of about `size` bytes each, built before any clock starts."""
    line = b"x" * 76 + b"\r\n"
    messages = []
    for i in range(count):
        head = (b"From: Sender <sender@bounce.example>\r\nTo: <user%d@inbox.example>\r\n"
                b"Subject: bench %d\r\nMessage-ID: <%d@bench.example>\r\n\r\n" % (i, i, i))
        body = line * max(1, (size - len(head)) // len(line))
        messages.append(OutgoingMessage(
            envelope_id=f"bench-{i}", mail_from="bounce@bounce.example", rcpt_to=f"user{i}@inbox.example",
            data=head + body, vmta=f"vmta{i % 4}"))
    return messages


async def bench_injector(port: int, messages: list[OutgoingMessage], connections: int) -> tuple[float, float]:
    """The Injector over `connections` connections; returns (messages/s, client CPU µs per message)."""
    async with Injector("127.0.0.1", port, pool_size=connections) as injector:
        await injector.send_many(messages[:connections * 10])  # open the connections before timing
        cpu, wall = time.process_time(), time.perf_counter()
        results = await injector.send_many(messages)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    sent = sum(1 for r in results if r.outcome is Outcome.SENT)
    if sent != len(messages):
        print(f"  warning: injector sent {sent} of {len(messages)}: {results[0]}")
    return len(messages) / wall, cpu / len(messages) * 1e6


async def bench_aiosmtplib(port: int, messages: list[OutgoingMessage], connections: int) -> tuple[float, float]:
    """Plain aiosmtplib, one persistent client per connection sending its share in turn."""
    import aiosmtplib

    clients = [aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False, local_hostname="localhost")
               for _ in range(connections)]
    await asyncio.gather(*(client.connect() for client in clients))

    async def run(client: aiosmtplib.SMTP, share: list[OutgoingMessage]) -> None:
        for msg in share:
            await client.sendmail(msg.mail_from, [msg.rcpt_to], msg.data)

    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(run(c, messages[i::connections]) for i, c in enumerate(clients)))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    await asyncio.gather(*(client.quit() for client in clients), return_exceptions=True)
    return len(messages) / wall, cpu / len(messages) * 1e6


def injector_bench(args: argparse.Namespace) -> None:
    """Part 1: smtp-source vs Injector vs aiosmtplib against one smtp-sink, in one run."""
    ensure_postfix_tools()
    port = free_port()
    sink = start_sink(port)
    try:
        print(f"smtp-sink on 127.0.0.1:{port}; {args.messages} messages of {args.size} bytes, "
              f"{args.connections} connections, uvloop {uvloop.__version__}")
        source_rate = bench_smtp_source(port, args.messages, args.size, args.connections)
        print(f"(a) smtp-source (C):  {source_rate:9,.0f} msgs/s")
        messages = prepare_messages(args.messages, args.size)
        rate, cpu_us = uvloop.run(bench_injector(port, messages, args.connections))
        print(f"(b) Injector:         {rate:9,.0f} msgs/s   {cpu_us:6.1f} µs client CPU/msg   "
              f"ratio to smtp-source {rate / source_rate:.2f} (target >= {TARGET_RATIO})")
        if not args.skip_aiosmtplib:
            ref_rate, ref_cpu = uvloop.run(bench_aiosmtplib(port, messages, args.connections))
            print(f"(c) aiosmtplib:       {ref_rate:9,.0f} msgs/s   {ref_cpu:6.1f} µs client CPU/msg   "
                  f"ratio to smtp-source {ref_rate / source_rate:.2f}; Injector/aiosmtplib "
                  f"{rate / ref_rate:.2f}x")
    finally:
        stop_sink(sink)
    # smtp-source never pipelines, so (b) gains from pipelining; the same protocol as (a) is measured
    # against a second sink that does not offer PIPELINING, which makes the Injector fall back to lock-step.
    port = free_port()
    sink = start_sink(port, pipelining=False)
    try:
        step_rate, step_cpu = uvloop.run(bench_injector(port, messages, args.connections))
        print(f"(d) Injector lock-step (sink -P, no PIPELINING): {step_rate:9,.0f} msgs/s   {step_cpu:6.1f} µs "
              f"client CPU/msg   ratio to smtp-source {step_rate / source_rate:.2f}")
    finally:
        stop_sink(sink)


# part 2: whole campaign ---------------------------------------------------------------------------------
BENCH_DB = os.environ.get("EMAIL_ENGINE_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
BENCH_REDIS = os.environ.get("EMAIL_ENGINE_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
CAMPAIGN_TARGET = 0.35
CPU_TARGET_US = 90


def _with_db(url: str, name: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    return urlunsplit(urlsplit(url)._replace(path="/" + name))


async def _prepare_campaign(url: str, contacts: int) -> int:
    """Migrate, seed, make tenant 1's 50 IPs active with ample quota, load contacts in nine languages."""
    import hashlib

    from engine import campaigns
    from engine import db as dbm
    from engine.languages import Language
    from engine.seed import seed

    await dbm.migrate(url)
    conn = await dbm.connect(url)
    try:
        await seed(conn)
        await conn.execute("UPDATE ips SET status = 'active', weight = 1 + (id % 5), daily_cap = 10000000 "
                           "WHERE tenant_id = 1")
        langs = [lang.value for lang in Language]
        step = 100_000
        for start in range(0, contacts, step):
            rows = []
            for i in range(start, min(contacts, start + step)):
                email = f"reader{i}@inbox{i % 500}.example"
                rows.append((1, 1, email, hashlib.sha256(email.encode()).digest(), f"Name{i}", f"Company {i}",
                             langs[i % len(langs)], "valid"))
            await conn.copy_records_to_table(
                "contacts", records=rows,
                columns=["tenant_id", "data_source_id", "email", "email_hash", "first_name", "company", "language",
                         "status"])
        draft = campaigns.CampaignDraft(tenant_id=1, name="bench", from_name="SOS-Expat",
                                        from_email="hello@sos-expat-mail-01.example")
        campaign = await campaigns.create_campaign(conn, draft)
        return campaign.id
    finally:
        await conn.close()


def _proc_stats(pid: int) -> tuple[float, int]:
    """(CPU seconds used, peak RSS in KiB) of a running process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    hwm = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
               if line.startswith("VmHWM"))
    return cpu, hwm


async def _run_campaign(url: str, campaign_id: int, port: int, namespace: str, contacts: int,
                        pool_size: int) -> dict[str, float]:
    from engine import campaigns
    from engine import db as dbm

    env = {**os.environ, "EMAIL_ENGINE_DATABASE_URL": url, "EMAIL_ENGINE_REDIS_URL": BENCH_REDIS,
           "EMAIL_ENGINE_REDIS_NAMESPACE": namespace, "EMAIL_ENGINE_PMTA_HOST": "127.0.0.1",
           "EMAIL_ENGINE_PMTA_PORT": str(port), "EMAIL_ENGINE_PMTA_POOL_SIZE": str(pool_size),
           "EMAIL_ENGINE_ADMIN_KEY": "bench-admin-key-0123456789", "EMAIL_ENGINE_SECRET_KEY": "bench-secret-0123456789",
           "EMAIL_ENGINE_HOME": f"/tmp/ee-bench-{namespace}", "EMAIL_ENGINE_LOG_LEVEL": "WARNING"}
    worker = subprocess.Popen([sys.executable, "-m", "api.cli", "worker"], env=env, cwd=ROOT,  # noqa: ASYNC220
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    conn = await dbm.connect(url)   # the engine's jsonb codecs: `start` writes an event
    try:
        await asyncio.sleep(2.0)  # the worker connects and its supervisor starts polling
        cpu0, _ = _proc_stats(worker.pid)
        started = time.perf_counter()
        await campaigns.transition(conn, 1, campaign_id, "start")
        peak = 0
        while True:
            status = await conn.fetchval("SELECT status::text FROM campaigns WHERE id = $1", campaign_id)
            cpu, hwm = _proc_stats(worker.pid)
            peak = max(peak, hwm)
            if status == "completed":
                break
            if worker.poll() is not None:
                raise SystemExit("the worker exited during the campaign")
            await asyncio.sleep(0.05)
        elapsed = time.perf_counter() - started
        injected = await conn.fetchval("SELECT count(*) FROM sends WHERE campaign_id = $1 AND status = 'injected'",
                                       campaign_id)
        if injected != contacts:
            raise SystemExit(f"only {injected} of {contacts} sends were injected")
        return {"rate": contacts / elapsed, "cpu_us": (cpu - cpu0) / contacts * 1e6, "rss_mb": peak / 1024,
                "seconds": elapsed}
    finally:
        await conn.close()
        os.killpg(worker.pid, 15)
        worker.wait(30)


async def _campaign(args: argparse.Namespace, port: int) -> dict[str, float]:
    import asyncpg
    from redis.asyncio import Redis

    name = f"ee_bench_campaign_{os.getpid()}"
    namespace = f"eebench{os.getpid()}"
    admin = await asyncpg.connect(BENCH_DB)
    await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        url = _with_db(BENCH_DB, name)
        campaign_id = await _prepare_campaign(url, args.contacts)
        return await _run_campaign(url, campaign_id, port, namespace, args.contacts, args.connections)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
        redis = Redis.from_url(BENCH_REDIS)
        async for key in redis.scan_iter(match=f"{namespace}:*"):
            await redis.delete(key)
        await redis.aclose()


def campaign_bench(args: argparse.Namespace) -> None:
    """50,000 contacts in nine languages over 50 IPs, from start until every send row is final."""
    ensure_postfix_tools()
    port = free_port()
    sink = start_sink(port)
    try:
        # the baseline on both sides of the campaign: a machine whose load changes during the run moves both
        baseline = min(args.contacts, 50_000)
        before = bench_smtp_source(port, baseline, args.size, args.connections)
        result = asyncio.run(_campaign(args, port))
        after = bench_smtp_source(port, baseline, args.size, args.connections)
    finally:
        stop_sink(sink)
    source = (before + after) / 2
    ratio = result["rate"] / source
    print(f"whole campaign: {args.contacts:,} contacts, 9 languages, 50 IPs, {args.connections} connections")
    print(f"(a) smtp-source (C):   {source:10,.0f} msgs/s   (mean of {before:,.0f} before and {after:,.0f} after)")
    print(f"(b) campaign:          {result['rate']:10,.0f} msgs/s   {result['seconds']:.1f} s start->final"
          f"   {result['cpu_us']:.0f} µs worker CPU/msg   worker peak RSS {result['rss_mb']:.0f} MB")
    print(f"ratio campaign / smtp-source = {ratio:.2f} (target >= {CAMPAIGN_TARGET}); "
          f"worker CPU {result['cpu_us']:.0f} µs/msg (target <= {CPU_TARGET_US})")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command")
    injector = commands.add_parser("injector", help="the SMTP injector alone against smtp-sink")
    injector.add_argument("--messages", type=int, default=50_000)
    injector.add_argument("--size", type=int, default=4096)
    injector.add_argument("--connections", type=int, default=8)
    injector.add_argument("--skip-aiosmtplib", action="store_true")
    injector.set_defaults(run=injector_bench)
    campaign = commands.add_parser("campaign", help="a whole campaign end to end (part 2)")
    campaign.add_argument("--contacts", type=int, default=50_000)
    campaign.add_argument("--size", type=int, default=4096, help="smtp-source message size (baseline)")
    campaign.add_argument("--connections", type=int, default=8)
    campaign.set_defaults(run=campaign_bench)
    args = parser.parse_args(argv if argv is not None else (sys.argv[1:] or ["injector"]))
    args.run(args)


if __name__ == "__main__":
    main()
