"""Template cache upkeep in each worker: drop compiled versions as soon as an edit is announced.

Correctness does not depend on this: compiled templates are cached by (id, version, fingerprint) and the
dispatcher reloads its TemplateBook every batch, so an old version is never chosen again once the row changed.
The listener only frees the old entries at once instead of waiting for the LRU.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from engine.templates import follow_invalidations

log = logging.getLogger(__name__)

FUNCTIONS: list = []


async def on_startup(ctx: dict) -> None:
    ready = asyncio.Event()
    task = asyncio.create_task(follow_invalidations(ctx["redis_client"], ctx["settings"].redis_namespace,
                                                    ready=ready))
    ctx["template_invalidations"] = task
    # Subscribed before the worker takes jobs; a Redis that is down must not stop the worker from starting.
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(ready.wait()), 5)
    task.add_done_callback(_report)


def _report(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("template invalidation listener stopped: %r", task.exception())


async def on_shutdown(ctx: dict) -> None:
    task = ctx.pop("template_invalidations", None)
    if task is not None:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
