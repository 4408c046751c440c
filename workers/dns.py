"""DNS jobs: the hourly check of every sending domain's records and every IP's reverse DNS."""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

from arq import cron

from engine import dns_checks
from engine.dns_lookup import Resolver

log = logging.getLogger(__name__)


async def check_dns(ctx: dict, tenant_id: int | None = None) -> dict[str, int]:
    """Check and store every domain's SPF, DKIM, DMARC and PTR; counts of `record:status`."""
    async with Resolver(ctx["settings"].dns_servers) as resolver:
        reports = await dns_checks.run_checks(ctx["pool"], resolver, tenant_id)
    counts = Counter(f"{record}:{finding.status}" for report in reports.values() for record, finding in report.items())
    held = [name for name, report in reports.items()
            if any(report[r].status in dns_checks.HOLDING for r in ("spf", "dkim"))]
    if held:
        log.warning("DNS check: %d domain(s) held from sending (SPF or DKIM wrong): %s", len(held),
                    ", ".join(held[:20]))
    return dict(counts)


def cron_jobs(settings: Any) -> list:
    # Hourly, at minute 17 so it does not pile onto the warmup cron's minute 0. DNS changes propagate within
    # the records' TTL (an hour here), so checking more often would mostly re-read caches.
    return [cron(check_dns, minute=17, unique=True, run_at_startup=False)]


FUNCTIONS = [check_dns]
