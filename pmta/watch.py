"""The PowerMTA watch: every minute the worker opens an SMTP session to the injection listener (greeting and
EHLO, then QUIT); unreachable for more than `minutes` raises one engine-wide `pmta_unreachable` alert per
outage. Probing on its own, rather than reading the injector's backoff, also sees an outage while no campaign
is sending, before the next one starts.

The outage's start lives in Redis: losing it only restarts the count.
"""

from __future__ import annotations

import logging

import asyncpg
from redis.asyncio import Redis

from engine import alert_events
from pmta.smtp import SmtpReplyError, open_session

log = logging.getLogger(__name__)

PROBE_TIMEOUT = 10.0    # seconds for connect + greeting + EHLO


async def probe(host: str, port: int, *, within: float = PROBE_TIMEOUT) -> str | None:
    """None when PowerMTA greets and answers EHLO; otherwise why not."""
    try:
        session = await open_session(host, port, helo="email-engine-watch", setup_timeout=within)
    except SmtpReplyError as exc:
        return f"refused: {exc}"
    except TimeoutError:
        return f"no greeting and EHLO answer within {within} s"
    except Exception as exc:  # OSError, EOF, NotSmtp: all mean it cannot take mail now
        return f"{type(exc).__name__}: {exc}"
    await session.quit()
    return None


async def watch(db: asyncpg.Connection | asyncpg.Pool, redis: Redis, namespace: str, host: str, port: int, *,
                minutes: int, now: float, within: float = PROBE_TIMEOUT) -> str:
    """One probe; returns up | down | alerted (this call raised the alert)."""
    key = f"{namespace}:pmta-watch:{host}:{port}"
    reason = await probe(host, port, within=within)
    if reason is None:
        if await redis.delete(key):
            log.info("PowerMTA %s:%s reachable again", host, port)
        return "up"
    await redis.hsetnx(key, "since", now)
    since = float(await redis.hget(key, "since"))
    if now - since < minutes * 60 or not await redis.hsetnx(key, "alerted", now):
        return "down"
    log.error("PowerMTA %s:%s unreachable for %.0f min: %s", host, port, (now - since) / 60, reason)
    await alert_events.raise_alert(db, None, "pmta_unreachable", f"pmta:{host}:{port}",
                                   {"minutes": round((now - since) / 60), "reason": reason})
    return "alerted"
