"""The automatic pauses' upkeep: IP and domain figures older than their 24-hour window, pruned hourly."""

from __future__ import annotations

from typing import Any

from arq import cron

from engine import health


async def prune_health(ctx: dict) -> None:
    await health.prune(ctx["pool"])


def cron_jobs(settings: Any) -> list:
    return [cron(prune_health, minute=17, second=0, unique=True)]


FUNCTIONS = [prune_health]
