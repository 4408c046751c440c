"""The blocklist watch: every few hours, each sending IP and domain against the configured DNS blocklists."""

from __future__ import annotations

import logging
from typing import Any

from arq import cron

from engine import blocklists
from engine.dns_lookup import Resolver

log = logging.getLogger(__name__)


async def watch_blocklists(ctx: dict, tenant_id: int | None = None) -> dict[str, int]:
    """One check cycle; counts of what was listed, newly paused and what could not be checked."""
    policy = blocklists.load_policy(ctx["settings"].blocklists_file)
    async with Resolver(ctx["settings"].dns_servers) as resolver, ctx["pool"].acquire() as db:
        result = await blocklists.watch(db, resolver, policy, tenant_id)
    for line in result.paused:
        log.warning("blocklist watch paused %s", line)
    if result.errors:
        log.warning("blocklist watch: %d lookup(s) failed, first: %s", len(result.errors), result.errors[0])
    return {"listed": len(result.listed), "paused": len(result.paused), "errors": len(result.errors)}


def cron_jobs(settings: Any) -> list:
    # Every four hours: public lists ask for moderate query rates (Spamhaus' free tier, SURBL), and a
    # listing acted on within hours still saves the rest of the day's sending from that IP.
    return [cron(watch_blocklists, hour={1, 5, 9, 13, 17, 21}, minute=41, unique=True, run_at_startup=False)]


FUNCTIONS = [watch_blocklists]
