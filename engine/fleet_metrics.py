"""The fleet's figures for /metrics, read from PostgreSQL and Redis at scrape time.

Messages injected and their final results come from the send log itself, so they equal it whatever number of
workers ran and however often they restarted; quotas from the quota ledger, warmup from the plans, DNS and
blocklist status from what the checks stored, queue depth from the arq queue. Every query is bounded by the
fleet (tenants, IPs, domains) or by the campaigns still in view (CAMPAIGN_DAYS), and one reading serves
every scrape for two seconds, or ten times as long as it took. A store that does not answer within the deadline leaves its
families out and says so in `email_engine_store_up`; the scrape itself never fails.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections import defaultdict
from collections.abc import Iterable
from functools import cache

import asyncpg
from prometheus_client import generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import CollectorRegistry
from redis.asyncio import Redis

from engine import alert_events
from engine.providers import provider_for_mx
from engine.sending import policy, sends
from engine.warmup import today_in_timezone
from sql import q

log = logging.getLogger(__name__)

# Finished campaigns stay in the series this many days: deliveries, bounces and complaints come back for days.
CAMPAIGN_DAYS = 7
# A scrape waits this long for each store; Prometheus' own scrape timeout is 10 s by default.
STORE_TIMEOUT = 5.0
CACHE_SECONDS = 2.0
# A reading is reused for at least this many times as long as it took: counting a large send log (about a
# second per million rows in view, bench/metrics.py) then costs PostgreSQL at most a tenth of one core.
COST_FACTOR = 10

# Alert event kinds whose counters start at zero for every tenant, so that `increase()` sees the first event
# of a kind (a series that appears at 1 has no increase). Other kinds appear with their first event.
ENGINE_ALERT_KINDS = alert_events.ENGINE_KINDS   # tenant "" : about the engine as a whole
ALERT_KINDS = tuple(k for k in alert_events.KINDS if k not in ENGINE_ALERT_KINDS)

# The label sets of the send-log series (`class` is added for bounced and failed rows).
SEND_LABELS = ["tenant", "campaign", "vmta", "provider"]


@cache
def bounce_class(category: str) -> str:
    """The bounce table's class of a PowerMTA category (engine.sending.policy), "unclassified" without one."""
    return policy.classify(category=category).bounce_class.value if category else "unclassified"


class _Families:
    """A collector that yields families read beforehand (prometheus-client collectors are synchronous)."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self.families = list(families)

    def collect(self) -> Iterable[Metric]:
        return iter(self.families)


def exposition(families: Iterable[Metric]) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(families))
    return generate_latest(registry)


async def _sends(db: asyncpg.Connection, campaigns: list[asyncpg.Record]) -> list[Metric]:
    injected = CounterMetricFamily("email_engine_messages_injected", "Messages PowerMTA (or MailWizz) accepted, "
                                   "from the send log", labels=SEND_LABELS)
    delivered = CounterMetricFamily("email_engine_messages_delivered", "Messages the accounting reported "
                                    "delivered", labels=SEND_LABELS)
    bounced = CounterMetricFamily("email_engine_messages_bounced", "Messages bounced after injection, by the "
                                  "bounce table's class", labels=[*SEND_LABELS, "class"])
    complained = CounterMetricFamily("email_engine_messages_complained", "Messages a feedback-loop report "
                                     "complained about", labels=SEND_LABELS)
    failed = CounterMetricFamily("email_engine_messages_failed", "Messages refused at injection (5xx) or out of "
                                 "retries, by class", labels=[*SEND_LABELS, "class"])
    skipped = CounterMetricFamily("email_engine_messages_skipped", "Send rows skipped by the send policy "
                                  "(suppressed, not validated, no template...)", labels=SEND_LABELS)
    deferred = GaugeMetricFamily("email_engine_messages_deferred", "Send rows waiting for a retry after a "
                                 "temporary refusal", labels=SEND_LABELS)
    progress = GaugeMetricFamily("email_engine_campaign_messages", "Send rows of a campaign by status",
                                 labels=["tenant", "campaign", "status"])
    state = GaugeMetricFamily("email_engine_campaign_info", "A campaign in view: its status and transport (1)",
                              labels=["tenant", "campaign", "status", "transport"])
    for c in campaigns:
        state.add_metric([str(c["tenant_id"]), str(c["id"]), c["status"], c["transport"]], 1)
    rows = await db.fetch(q("metrics-sends"), [c["id"] for c in campaigns]) if campaigns else []
    counts: dict[tuple[str, ...], defaultdict[tuple[str, ...], int]] = defaultdict(lambda: defaultdict(int))
    for r in rows:
        n = r["n"]
        key = (str(r["tenant_id"]), str(r["campaign_id"]), r["vmta"], provider_for_mx(r["mx_host"]))
        status = r["status"]
        counts["progress"][(key[0], key[1], status)] += n
        if r["injected"]:
            counts["injected"][key] += n
        if r["complained"]:
            counts["complained"][key] += n
        if status == "delivered":
            counts["delivered"][key] += n
        elif status == "bounced":
            counts["bounced"][(*key, bounce_class(r["bounce_category"]))] += n
        elif status == "failed":
            counts["failed"][(*key, bounce_class(r["bounce_category"]))] += n
        elif status == "skipped":
            counts["skipped"][key] += n
        elif status == "deferred":
            counts["deferred"][key] += n
    for family, name in ((injected, "injected"), (delivered, "delivered"), (bounced, "bounced"),
                         (complained, "complained"), (failed, "failed"), (skipped, "skipped"),
                         (deferred, "deferred"), (progress, "progress")):
        for labels, value in sorted(counts[name].items()):
            family.add_metric(list(labels), value)
    return [injected, delivered, bounced, complained, failed, skipped, deferred, progress, state]


async def _ips(db: asyncpg.Connection, tenants: list[asyncpg.Record],
               now: dt.datetime) -> tuple[list[Metric], defaultdict[tuple[str, ...], int]]:
    ids = [t["id"] for t in tenants]
    days = [today_in_timezone(t["timezone"], now) for t in tenants]
    labels = ["tenant", "vmta"]
    quota = GaugeMetricFamily("email_engine_ip_quota", "Messages the IP may send today (warmup plan or daily "
                              "cap)", labels=labels)
    used = GaugeMetricFamily("email_engine_ip_quota_used", "Quota tokens the IP was granted today (the quota "
                             "ledger)", labels=labels)
    day = GaugeMetricFamily("email_engine_ip_warmup_day", "Day of the IP's warmup plan (0 = first)", labels=labels)
    status = GaugeMetricFamily("email_engine_ip_status", "The IP's status (1 for the one it has)",
                               labels=[*labels, "status"])
    ptr = GaugeMetricFamily("email_engine_ip_ptr_status", "The IP's forward-confirmed reverse DNS check (1 for "
                            "its result)", labels=[*labels, "status"])
    listings: defaultdict[tuple[str, ...], int] = defaultdict(int)
    for r in await db.fetch(q("metrics-ips"), ids, days):
        key = [str(r["tenant_id"]), r["vmta_name"]]
        quota.add_metric(key, r["daily_quota"] or 0)
        used.add_metric(key, r["used_today"])
        if r["warmup_day"] is not None:
            day.add_metric(key, r["warmup_day"])
        status.add_metric([*key, r["status"]], 1)
        ptr.add_metric([*key, r["ptr_status"]], 1)
        for name, verdict in (r["blocklist_report"] or {}).items():
            listings[(key[0], "ip", name, str(verdict.get("status", "")))] += 1
    return [quota, used, day, status, ptr], listings


async def _domains(db: asyncpg.Connection, listings: defaultdict[tuple[str, ...], int]) -> list[Metric]:
    dns = GaugeMetricFamily("email_engine_domain_dns_status", "The last DNS check of each record of a sending "
                            "domain (1 for its result: ok, missing, wrong, error)",
                            labels=["tenant", "domain", "record", "status"])
    held = GaugeMetricFamily("email_engine_domain_held", "1 while a domain is held (DNS or blocklist) and its "
                             "campaigns wait", labels=["tenant", "domain"])
    for r in await db.fetch(q("metrics-domains")):
        tenant = str(r["tenant_id"])
        for record, finding in sorted((r["dns_report"] or {}).items()):
            dns.add_metric([tenant, r["name"], record, str(finding.get("status", ""))], 1)
        held.add_metric([tenant, r["name"]], int(r["held"]))
        for name, verdict in (r["blocklist_report"] or {}).items():
            listings[(tenant, "domain", name, str(verdict.get("status", "")))] += 1
    checks = GaugeMetricFamily("email_engine_blocklist_checks", "IPs and domains by the last answer of each "
                               "blocklist (listed, clear, error)", labels=["tenant", "kind", "list", "status"])
    for labels, n in sorted(listings.items()):
        checks.add_metric(list(labels), n)
    return [dns, held, checks]


async def read_postgres(db: asyncpg.Connection, *, worker_timeout: float,
                        campaign_days: int = CAMPAIGN_DAYS) -> list[Metric]:
    """Every family read from PostgreSQL, in one repeatable-read snapshot so the series agree."""
    async with db.transaction(isolation="repeatable_read", readonly=True):
        now = await db.fetchval("SELECT now()")
        tenants = await db.fetch(q("metrics-tenants"))
        info = GaugeMetricFamily("email_engine_tenant_info", "A tenant's name (1)", labels=["tenant", "name"])
        for t in tenants:
            info.add_metric([str(t["id"]), t["name"]], 1)
        families: list[Metric] = [info]
        families += await _sends(db, await db.fetch(q("metrics-campaigns"), campaign_days))
        ip_families, listings = await _ips(db, tenants, now)
        families += ip_families
        families += await _domains(db, listings)
        alerts = CounterMetricFamily("email_engine_alert_events", "Alert events raised (pauses, blocklist "
                                     "listings, failed reloads...) by kind", labels=["tenant", "kind"])
        raised = {(str(t["id"]), kind): 0 for t in tenants for kind in ALERT_KINDS}
        raised |= {("", kind): 0 for kind in ENGINE_ALERT_KINDS}
        for r in await db.fetch(q("metrics-alert-events")):
            raised[(r["tenant"], r["kind"])] = r["n"]
        for (tenant, kind), n in sorted(raised.items()):
            alerts.add_metric([tenant, kind], n)
        workers = GaugeMetricFamily("email_engine_workers_alive", "Sending workers whose heartbeat is fresh")
        workers.add_metric([], len(await sends.live_workers(db, worker_timeout)))
        families += [alerts, workers]
    return families


async def read_redis(redis: Redis, queue_name: str) -> list[Metric]:
    """The arq queue: jobs waiting (due or deferred), and how long the oldest due one has waited."""
    depth = GaugeMetricFamily("email_engine_queue_jobs", "Jobs in the arq queue (due and deferred)")
    oldest = GaugeMetricFamily("email_engine_queue_oldest_due_seconds", "How long the oldest due job has waited "
                               "(0 when none is due)")
    async with redis.pipeline(transaction=False) as pipe:
        pipe.zcard(queue_name)
        pipe.zrange(queue_name, 0, 0, withscores=True)
        pipe.time()
        size, first, (seconds, micros) = await pipe.execute()
    depth.add_metric([], size)
    now_ms = seconds * 1000 + micros / 1000
    # arq scores a job by when it is due, in milliseconds; validations moved to the front sort a day early.
    waited = max(0.0, (now_ms - first[0][1]) / 1000) if first else 0.0
    oldest.add_metric([], waited)
    return [depth, oldest]


class FleetMetrics:
    """The stores' figures as Prometheus text, read at most once per `ttl` seconds."""

    def __init__(self, pool: asyncpg.Pool, redis: Redis, *, queue_name: str, worker_timeout: float,
                 ttl: float = CACHE_SECONDS, cost_factor: float = COST_FACTOR,
                 campaign_days: int = CAMPAIGN_DAYS) -> None:
        self.pool = pool
        self.redis = redis
        self.queue_name = queue_name
        self.worker_timeout = worker_timeout
        self.ttl = ttl
        self.cost_factor = cost_factor
        self.campaign_days = campaign_days
        self._text = b""
        self._read_at = -float("inf")
        self._fresh_for = ttl
        self._lock = asyncio.Lock()

    async def exposition(self) -> bytes:
        async with self._lock:  # concurrent scrapes share one reading
            if time.monotonic() - self._read_at >= self._fresh_for:
                started = time.monotonic()
                self._text = exposition(await self._read())
                self._read_at = time.monotonic()
                self._fresh_for = max(self.ttl, self.cost_factor * (self._read_at - started))
            return self._text

    async def _read(self) -> list[Metric]:
        started = time.perf_counter()
        up = GaugeMetricFamily("email_engine_store_up", "1 when the store answered this scrape's reading",
                               labels=["store"])
        families: list[Metric] = []
        try:
            async with asyncio.timeout(STORE_TIMEOUT), self.pool.acquire() as db:
                families += await read_postgres(db, worker_timeout=self.worker_timeout,
                                                campaign_days=self.campaign_days)
            up.add_metric(["postgresql"], 1)
        except Exception as exc:
            log.warning("metrics: PostgreSQL not read (%s)", type(exc).__name__)
            families.clear()
            up.add_metric(["postgresql"], 0)
        try:
            async with asyncio.timeout(STORE_TIMEOUT):
                families += await read_redis(self.redis, self.queue_name)
            up.add_metric(["redis"], 1)
        except Exception as exc:
            log.warning("metrics: Redis not read (%s)", type(exc).__name__)
            up.add_metric(["redis"], 0)
        took = GaugeMetricFamily("email_engine_metrics_read_seconds", "Time the last reading of the stores took")
        took.add_metric([], time.perf_counter() - started)
        return [*families, up, took]
