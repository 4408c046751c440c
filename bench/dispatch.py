"""Dispatch benchmarks. Part 1 (`injector`): the SMTP injector alone against Postfix's smtp-sink.

    .venv/bin/python bench/dispatch.py injector [--messages 50000] [--size 4096] [--connections 8]

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

from engine.transport import Outcome, OutgoingMessage  # noqa: E402
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


# part 2: whole campaign -- add `campaign_bench(args)` here (contacts -> render -> rotation -> quota ->
# Injector -> sends rows) and register it below as the `campaign` subcommand.
def campaign_bench(args: argparse.Namespace) -> None:
    sys.exit("campaign benchmark (part 2) is not written yet")


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
    campaign.set_defaults(run=campaign_bench)
    args = parser.parse_args(argv if argv is not None else (sys.argv[1:] or ["injector"]))
    args.run(args)


if __name__ == "__main__":
    main()
