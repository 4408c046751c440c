"""The arq worker: its jobs, its crons, and the resources every job shares through `ctx`."""

from __future__ import annotations

import logging
from typing import Any

from arq import Worker
from redis.asyncio import Redis

from engine import db as dbm
from engine.settings import Settings
from workers.redis import redis_settings

log = logging.getLogger(__name__)

# Job families register here: each module exposes FUNCTIONS (and CRON_JOBS when it has crons).
JOB_MODULES: tuple[str, ...] = ("workers.contacts", "workers.suppression", "workers.templates", "workers.warmup",
                                "workers.mailwizz", "workers.campaigns", "workers.feedback",
                                "workers.dns", "workers.blocklists", "workers.pmta", "workers.reputation",
                                "workers.replies", "workers.notify")


def _families() -> list[Any]:
    import importlib

    return [importlib.import_module(name) for name in JOB_MODULES]


def functions() -> list[Any]:
    return [f for module in _families() for f in getattr(module, "FUNCTIONS", [])]


def cron_jobs(settings: Settings) -> list[Any]:
    jobs = []
    for module in _families():
        make = getattr(module, "cron_jobs", None)
        if make is not None:
            jobs.extend(make(settings))
    return jobs


async def ping(ctx: dict) -> str:
    """A no-op job: proves a worker is consuming the queue."""
    return "pong"


def worker_kwargs(settings: Settings, *, secret_key: str, burst: bool = False, **overrides: Any) -> dict[str, Any]:
    """Everything arq's Worker needs, built from the settings (no module-level globals)."""

    async def startup(ctx: dict) -> None:
        ctx["settings"] = settings
        ctx["secret_key"] = secret_key
        await dbm.wait_for_schema(settings.database_url)
        ctx["pool"] = await dbm.create_pool(settings.database_url, min_size=1, max_size=10)
        ctx["redis_client"] = Redis.from_url(settings.redis_url)
        for module in _families():
            hook = getattr(module, "on_startup", None)
            if hook is not None:
                await hook(ctx)

    async def shutdown(ctx: dict) -> None:
        for module in reversed(_families()):
            hook = getattr(module, "on_shutdown", None)
            if hook is not None:
                await hook(ctx)
        if "redis_client" in ctx:
            await ctx["redis_client"].aclose()
        if "pool" in ctx:
            await ctx["pool"].close()

    kwargs: dict[str, Any] = {
        "functions": [ping, *functions()],
        "cron_jobs": cron_jobs(settings) or None,
        "queue_name": settings.queue_name,
        "redis_settings": redis_settings(settings.redis_url),
        "on_startup": startup,
        "on_shutdown": shutdown,
        "burst": burst,
        "max_jobs": 16,
        "job_timeout": 3600,
        "keep_result": 3600,
        # a killed worker's jobs come back after their timeout; jobs are written to be re-run safely
        "max_tries": 25,
        "health_check_key": f"{settings.redis_namespace}:health-check",
    }
    kwargs.update(overrides)
    return kwargs


def create_worker(settings: Settings, *, secret_key: str, **overrides: Any) -> Worker:
    from workers.instruments import instrument

    return instrument(Worker(**worker_kwargs(settings, secret_key=secret_key, **overrides)))
