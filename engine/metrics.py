"""What only a process knows, as Prometheus instruments: injection latency, SMTP connection errors, token
waits, jobs, ingested contacts, validation outcomes and import rows.

Counts that must equal the send log (messages injected and their final results, quotas, warmup, campaign
progress, queue depth, DNS and blocklist status) are read from PostgreSQL and Redis at scrape time instead
(engine.fleet_metrics), so they are right across restarts and however many workers run.

The instruments live in prometheus-client's default registry, the one place every part of a process reports
to: the API serves it at /metrics next to the stores' figures, a worker on its own port
(EMAIL_ENGINE_WORKER_METRICS_PORT). Labels are bounded: tenant ids, VMTA names, job names, outcomes - never a
contact or an address.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.registry import CollectorRegistry

log = logging.getLogger(__name__)

# No `_created` series next to every counter and histogram: Prometheus' text format does not use them and
# they would double the series count.
disable_created_metrics()

CONTENT_TYPE = CONTENT_TYPE_LATEST

# One message from the moment it is handed to the SMTP pool to PowerMTA's final answer (queueing behind
# other messages included): milliseconds on a healthy local listener, up to the reply timeouts otherwise.
INJECTION_SECONDS = Histogram(
    "email_engine_injection_seconds", "Time from handing a message to the SMTP pool to the server's answer",
    ["outcome"], buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
SMTP_CONNECTION_ERRORS = Counter(
    "email_engine_smtp_connection_errors_total",
    "SMTP connections into PowerMTA that could not be opened (connect) or broke before completing (lost)",
    ["kind"])
TOKEN_WAITS = Counter(
    "email_engine_token_waits_total",
    "Send rows that found no quota token (IP quota, provider cap, rate or campaign daily cap) and wait",
    ["tenant"])
JOBS = Counter("email_engine_jobs_total", "Worker jobs run, by job and outcome (ok, failed, retried)",
               ["job", "outcome"])
JOB_SECONDS = Histogram("email_engine_job_seconds", "Worker job run time", ["job"],
                        buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600))
CONTACTS_INGESTED = Counter(
    "email_engine_contacts_ingested_total",
    "Contacts received (API, webhooks, CSV imports) by tenant, data source and outcome (created, updated, ...)",
    ["tenant", "source", "outcome"])
VALIDATIONS = Counter("email_engine_validations_total", "Contact validation outcomes (valid, risky, invalid, ...)",
                      ["tenant", "outcome"])
IMPORT_ROWS = Counter("email_engine_import_rows_total", "CSV import rows read, by outcome (accepted, rejected)",
                      ["tenant", "outcome"])


def exposition(registry: CollectorRegistry = REGISTRY) -> bytes:
    """The registry in Prometheus' text format."""
    return generate_latest(registry)


@contextlib.contextmanager
def worker_server(port: int | None, host: str) -> Iterator[Any]:
    """Serve this process's instruments on host:port for as long as the block runs (nothing when None)."""
    if port is None:
        yield None
        return
    from prometheus_client import start_http_server

    try:
        server, thread = start_http_server(port, addr=host)
    except OSError as exc:  # the port is taken: the worker works on, unobserved, and says why
        log.error("worker metrics not served on %s:%d: %s", host, port, exc)
        yield None
        return
    log.info("worker metrics on http://%s:%d/metrics", host, port)
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
