"""Reply mailboxes in the worker: one watcher per mailbox (IMAP IDLE, or polling), kept in step with the table.

Every worker process watches every mailbox; what it reads is stored once per Message-ID and each mailbox's
last UID moves in the same transaction, so two workers reading one mailbox store each reply once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from engine import mailboxes

log = logging.getLogger(__name__)

REFRESH_EVERY = 60.0     # how often the list of mailboxes is read again (added, removed, password changed)


async def on_startup(ctx: dict) -> None:
    stop = asyncio.Event()
    ctx["reply_watch"] = {"stop": stop, "task": asyncio.create_task(_supervise(ctx, stop), name="reply-mailboxes")}


async def on_shutdown(ctx: dict) -> None:
    state = ctx.get("reply_watch")
    if not state:
        return
    state["stop"].set()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await asyncio.wait_for(state["task"], 30)


async def _supervise(ctx: dict, stop: asyncio.Event) -> None:
    watchers: dict[tuple, tuple[asyncio.Task, asyncio.Event]] = {}
    poll_every = ctx.get("reply_poll_every", mailboxes.POLL_EVERY)
    while not stop.is_set():
        try:
            boxes = await mailboxes.stored_mailboxes(ctx["pool"])
            wanted = {(b.id, b.host, b.port, b.username, bytes(b.password_enc), b.folder): b for b in boxes}
            for key in [k for k in watchers if k not in wanted]:
                task, own = watchers.pop(key)
                own.set()
            for key, box in wanted.items():
                if key not in watchers or watchers[key][0].done():
                    own = asyncio.Event()
                    task = asyncio.create_task(mailboxes.watch(ctx["pool"], box, ctx["secret_key"], own,
                                                               poll_every=poll_every), name=f"mailbox-{box.id}")
                    watchers[key] = (task, own)
        except Exception:
            log.exception("reply mailboxes: will retry")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), ctx.get("reply_refresh_every", REFRESH_EVERY))
    for _, own in watchers.values():
        own.set()
    await asyncio.gather(*(t for t, _ in watchers.values()), return_exceptions=True)


FUNCTIONS: list = []
