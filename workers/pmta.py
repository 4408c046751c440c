"""The PowerMTA config job: every minute, the generated file follows the database (and PowerMTA reloads)."""

from __future__ import annotations

import logging
from typing import Any

import msgspec
from arq import cron

from pmta import generate

log = logging.getLogger(__name__)


async def sync_pmta_config(ctx: dict) -> dict[str, Any]:
    """Rewrite EMAIL_ENGINE_PMTA_CONFIG (and its DKIM key files) if IPs, domains, keys or quotas changed."""
    settings = ctx["settings"]
    if settings.pmta_config_file is None:
        return {"changed": False}
    outcome = await generate.sync(ctx["pool"], settings, ctx["secret_key"], path=settings.pmta_config_file)
    if outcome.changed:
        log.info("PowerMTA config: %s", outcome.summary())
    return msgspec.to_builtins(outcome)


def cron_jobs(settings: Any) -> list:
    # Every minute: comparing the rendered text with the file is cheap (one read of the IPs and keys), and
    # a new IP or a paused one reaches PowerMTA within a minute. unique: one writer at a time.
    if settings.pmta_config_file is None:
        return []
    return [cron(sync_pmta_config, unique=True, run_at_startup=True)]


FUNCTIONS = [sync_pmta_config]
