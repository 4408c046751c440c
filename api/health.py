"""Liveness and readiness probes."""

from __future__ import annotations

import asyncio

from litestar import get
from litestar.datastructures import State
from litestar.response import Response

PROBE_TIMEOUT = 2.0


@get("/health", operation_id="health", summary="Liveness", description="Answers 200 while the process runs.",
     tags=["probes"], security=[])
async def health() -> dict[str, str]:
    return {"status": "ok"}


@get("/ready", operation_id="ready", summary="Readiness",
     description="200 when PostgreSQL and Redis both answer; 503 naming the store that does not.",
     tags=["probes"], security=[])
async def ready(state: State) -> Response[dict]:
    problems = {}
    try:
        async with asyncio.timeout(PROBE_TIMEOUT):
            await state.pool.fetchval("SELECT 1")
    except Exception as exc:
        problems["postgresql"] = f"unreachable: {type(exc).__name__}"
    try:
        async with asyncio.timeout(PROBE_TIMEOUT):
            await state.redis.ping()
    except Exception as exc:
        problems["redis"] = f"unreachable: {type(exc).__name__}"
    if problems:
        names = " and ".join(problems)
        return Response({"status": "unavailable", "detail": f"{names} not reachable", "stores": problems},
                        status_code=503)
    return Response({"status": "ready", "stores": {"postgresql": "ok", "redis": "ok"}})
