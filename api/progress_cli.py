"""The commands people wait on: `email-engine import FILE` and `email-engine campaign watch TENANT ID`.

Both talk to a running engine over its HTTP API (EMAIL_ENGINE_URL, else the configured host and port) with
EMAIL_ENGINE_API_KEY, else the admin key of the state directory, and follow the background work: a progress
bar on stderr (rows, rejects, rate, ETA; one line per update when stderr is not a terminal), a summary at the
end. With `--json` nothing but the final figures is printed, as one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

import httpx
import msgspec

from engine.settings import Settings

HELP = {
    "import": "Import a CSV file into a tenant's contacts: uploads it, then follows the background job with a "
              "progress bar (rows, rejects, rate, ETA) and ends with the job's figures.",
    "campaign": "Campaigns: `watch` follows a sending campaign with live counts until it is no longer sending, "
                "then prints its figures.",
}
COMMANDS = frozenset(HELP)

# How often the job is polled, and how long one HTTP exchange may take (an upload streams for longer).
POLL_SECONDS = 0.5
HTTP_TIMEOUT = httpx.Timeout(30.0, write=600.0)
CHUNK = 1024 * 1024
BAR_WIDTH = 30
# Without a terminal the bar is a log: a line at most this often.
LOG_EVERY_SECONDS = 2.0

IMPORT_DONE = ("done", "failed")
CAMPAIGN_RUNNING = ("scheduled", "sending")


def add_commands(sub: Any) -> None:
    """Register the subcommands on the main parser's subparsers."""
    imp = sub.add_parser("import", help=HELP["import"].split(": ")[0] + ".", description=HELP["import"])
    imp.add_argument("file", type=Path, help="the CSV file")
    imp.add_argument("--tenant", type=int, required=True, help="the tenant the contacts are for")
    imp.add_argument("--tags", help="comma-separated tags given to every row")
    imp.add_argument("--language", help="language of rows that say none")
    imp.add_argument("--category", help="category of rows that say none")
    imp.add_argument("--data-source", type=int, help="the data source id recorded on the contacts")
    imp.add_argument("--encoding", help="the file's encoding (default: detected)")
    imp.add_argument("--delimiter", help="the separator: , ; | or tab (default: detected)")
    camp = sub.add_parser("campaign", help=HELP["campaign"].split(": ")[0] + ".", description=HELP["campaign"])
    camp_sub = camp.add_subparsers(dest="action", required=True, metavar="ACTION")
    watch = camp_sub.add_parser("watch", help="follow a campaign until it stops sending")
    watch.add_argument("tenant", type=int, help="tenant id")
    watch.add_argument("campaign", type=int, help="campaign id")
    for p in (imp, watch):
        p.add_argument("--json", action="store_true", help="print only the final figures, as JSON on stdout")
        p.add_argument("--url", help="the engine's API (default: EMAIL_ENGINE_URL, else the configured host/port)")


class Failed(Exception):
    """The engine refused, or cannot be reached: the message is for the person at the terminal."""


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Run one progress command; the exit status (0 done, 1 failed job or refused request)."""
    logging.getLogger("httpx").setLevel(logging.WARNING)   # a line per poll would drown the bar
    base = args.url or os.environ.get("EMAIL_ENGINE_URL") or f"http://{settings.http_host}:{settings.http_port}"
    try:
        with httpx.Client(base_url=base.rstrip("/"), timeout=HTTP_TIMEOUT,
                          headers={"Authorization": f"Bearer {_key(settings)}"}) as http:
            if args.command == "import":
                return import_file(http, args, sys.stderr)
            return watch_campaign(http, args, sys.stderr)
    except Failed as exc:
        print(f"email-engine: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130


def _key(settings: Settings) -> str:
    key = os.environ.get("EMAIL_ENGINE_API_KEY") or settings.admin_key
    if key:
        return key
    path = settings.home / "admin_key"
    try:
        return path.read_text().strip()
    except OSError as exc:
        raise Failed(f"no API key: set EMAIL_ENGINE_API_KEY or run `email-engine up` once ({path}: "
                     f"{exc.strerror})") from exc


def _answer(response_or_call: Any) -> dict:
    try:
        r = response_or_call()
    except httpx.HTTPError as exc:
        raise Failed(f"the engine cannot be reached: {exc}") from exc
    try:
        body = r.json()
    except ValueError:
        body = {}
    if r.status_code >= 400:
        detail = body.get("detail") if isinstance(body, dict) else None
        raise Failed(f"{r.status_code}: {detail or r.text[:200]}")
    return body


def _chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            yield chunk


def count_lines(path: Path) -> int:
    """Lines in the file: the bar's estimate of its rows (quoted fields may hold newlines)."""
    lines, last = 0, b"\n"
    for chunk in _chunks(path):
        lines += chunk.count(b"\n")
        last = chunk[-1:]
    return lines + (last != b"\n")


def import_file(http: httpx.Client, args: argparse.Namespace, out: TextIO) -> int:
    path: Path = args.file
    if not path.is_file():
        raise Failed(f"{path}: no such file")
    expected = max(count_lines(path) - 1, 0)   # less the header line
    params = {k: v for k, v in {"tenant_id": args.tenant, "tags": args.tags, "language": args.language,
                                "category": args.category, "data_source_id": args.data_source,
                                "encoding": args.encoding, "delimiter": args.delimiter}.items() if v is not None}
    bar = None if args.json else Bar(out, "rows", expected)
    if bar:
        bar.note(f"uploading {path.name} ({path.stat().st_size:,} bytes)")
    created = _answer(lambda: http.post("/api/v2/contacts/import", params=params, content=_chunks(path),
                                        headers={"Content-Type": "text/csv"}))
    import_id = created["id"]
    while True:
        job = _answer(lambda: http.get(f"/api/v2/imports/{import_id}"))["progress"]
        if bar:
            bar.update(job["rows_read"], f"{job['rejected']:,} rejects")
        if job["status"] in IMPORT_DONE:
            break
        time.sleep(POLL_SECONDS)
    figures = {k: job[k] for k in ("id", "tenant_id", "status", "rows_read", "created", "updated", "unchanged",
                                   "rejected", "error", "started_at", "finished_at")}
    if bar:
        bar.finish(job["rows_read"])
        out.write(f"import {import_id} {job['status']}: {job['rows_read']:,} rows read, {job['created']:,} created, "
                  f"{job['updated']:,} updated, {job['unchanged']:,} unchanged, {job['rejected']:,} rejected"
                  + (f" ({job['error']})" if job["error"] else "") + "\n")
        if job["rejected"]:
            out.write(f"rejected lines: GET /api/v2/imports/{import_id}\n")
    else:
        print(msgspec.json.encode(figures).decode())
    return 0 if job["status"] == "done" else 1


def watch_campaign(http: httpx.Client, args: argparse.Namespace, out: TextIO) -> int:
    url = f"/api/v2/campaigns/{args.tenant}/{args.campaign}"
    campaign = _answer(lambda: http.get(url))
    stats = _answer(lambda: http.get(f"{url}/stats"))
    bar = None if args.json else Bar(out, "messages", stats["total"])
    while True:
        by = stats["by_status"]
        done = sum(by.get(s, 0) for s in ("injected", "delivered", "bounced", "failed", "skipped", "deferred"))
        if bar:
            bar.total = stats["total"]
            wait = f" waiting: {campaign['wait_reason']}" if campaign.get("wait_reason") else ""
            bar.update(done, f"{campaign['status']} injected {by.get('injected', 0) + by.get('delivered', 0):,} "
                             f"failed {by.get('failed', 0):,} skipped {by.get('skipped', 0):,}{wait}")
        if campaign["status"] not in CAMPAIGN_RUNNING:
            break
        time.sleep(POLL_SECONDS)
        campaign = _answer(lambda: http.get(url))
        stats = _answer(lambda: http.get(f"{url}/stats"))
    figures = {"id": campaign["id"], "tenant_id": campaign["tenant_id"], "status": campaign["status"],
               "total": stats["total"], "by_status": stats["by_status"], "by_ip": stats["by_ip"],
               "by_language": stats["by_language"]}
    if bar:
        bar.finish(done)
        counts = ", ".join(f"{n:,} {s}" for s, n in sorted(stats["by_status"].items()) if n)
        out.write(f"campaign {campaign['id']} {campaign['status']}: {stats['total']:,} recipients"
                  + (f" ({counts})" if counts else "") + "\n")
    else:
        print(msgspec.json.encode(figures).decode())
    return 0


class Bar:
    """A one-line progress bar: count of total, rate, ETA; redrawn in place on a terminal, logged otherwise."""

    def __init__(self, out: TextIO, unit: str, total: int, *, clock=time.monotonic) -> None:
        self.out, self.unit, self.total, self.clock = out, unit, total, clock
        self.first: tuple[float, int] | None = None
        self.tty = out.isatty()
        self.last_line = self.logged = self.extra = ""
        self.last_logged = -LOG_EVERY_SECONDS

    def note(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def render(self, done: int, extra: str) -> str:
        # the rate counts from the first figures seen: work done before the command started is not its speed
        if self.first is None:
            self.first = (self.clock(), done)
        elapsed = self.clock() - self.first[0]
        rate = (done - self.first[1]) / elapsed if elapsed > 0 else 0.0
        total = max(self.total, done)
        share = done / total if total else 1.0
        filled = round(BAR_WIDTH * share)
        eta = (total - done) / rate if rate > 0 else None
        return (f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {share:4.0%} {done:,}/{total:,} {self.unit}"
                f"  {extra}  {rate:,.0f} {self.unit}/s  ETA {_clock(eta)}")

    def update(self, done: int, extra: str = "") -> None:
        self.extra = extra
        line = self.render(done, extra)
        if self.tty:
            self.out.write("\r" + line.ljust(len(self.last_line)))
        elif line != self.logged and self.clock() - self.last_logged >= LOG_EVERY_SECONDS:
            self.out.write(line + "\n")
            self.logged, self.last_logged = line, self.clock()
        self.last_line = line
        self.out.flush()

    def finish(self, done: int) -> None:
        """The last state at 100%: the job's own count is the total once it is over."""
        self.total = done
        line = self.render(done, self.extra)
        self.out.write(("\r" + line.ljust(len(self.last_line)) if self.tty else line) + "\n")
        self.out.flush()


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    seconds = int(seconds + 0.5)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else \
        f"{seconds // 60}:{seconds % 60:02d}"
