"""Reply mailboxes: a tenant's IMAP inboxes, read for replies (IDLE where the server offers it, else polled).

aioimaplib is the IMAP client: asyncio-native (the engine's loop, no thread per mailbox), IDLE support, a
deadline on every command, maintained. The password is encrypted with the engine's secret key
(engine.secrets) and never returned. Each message read goes through engine.replies (classify, match, store)
in its own transaction, and the mailbox's last UID moves with it: a worker killed mid-read reads on from
there, and a message stored twice is impossible (one row per Message-ID).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import re
import ssl
from typing import Annotated

import aioimaplib
import asyncpg
import msgspec

from engine import replies, secrets
from engine.errors import NotFound
from sql import q

log = logging.getLogger(__name__)

TIMEOUT = 30.0          # seconds for the connection, the greeting and every command
FETCH_BATCH = 50        # messages fetched per pass
IDLE_FOR = 300.0        # an IDLE is renewed this often (RFC 2177 asks for less than 29 minutes)
POLL_EVERY = 60.0       # without IDLE: how often the mailbox is polled
_UIDVALIDITY = re.compile(rb"UIDVALIDITY (\d+)")
_FETCHED_UID = re.compile(rb"UID (\d+)")


class MailboxDraft(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The body of POST /replies/{tenant}/mailboxes."""

    host: Annotated[str, msgspec.Meta(min_length=1, max_length=253, pattern=r"^[A-Za-z0-9.-]+$",
                                      examples=["imap.sos-expat.example"])]
    port: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 993
    tls: bool = True
    username: Annotated[str, msgspec.Meta(min_length=1, max_length=320, pattern=r"^[^\r\n]*$")]
    password: Annotated[str, msgspec.Meta(min_length=1, max_length=1000, pattern=r"^[^\r\n]*$")]
    folder: Annotated[str, msgspec.Meta(min_length=1, max_length=200, pattern=r"^[^\r\n\"]*$")] = "INBOX"
    address: Annotated[str, msgspec.Meta(pattern=r"^[^@\s+]{1,64}@[^@\s]{1,253}$")] | None = None
    plus_addressing: bool = False


class Mailbox(msgspec.Struct, frozen=True, kw_only=True):
    """A mailbox as the API shows it: never its password."""

    id: int
    tenant_id: int
    host: str
    port: int
    tls: bool
    username: str
    folder: str
    address: str | None
    plus_addressing: bool
    last_uid: int
    last_error: str | None
    checked_at: dt.datetime | None
    created_at: dt.datetime


class Stored(msgspec.Struct, kw_only=True):
    """A mailbox as the reader needs it."""

    id: int
    tenant_id: int
    host: str
    port: int
    tls: bool
    username: str
    password_enc: bytes
    folder: str
    last_uid: int
    uid_validity: int | None


class Pass(msgspec.Struct, kw_only=True):
    """What one read of a mailbox did."""

    read: int = 0
    stored: dict[str, int] = msgspec.field(default_factory=dict)
    error: str | None = None


async def save_mailbox(db: asyncpg.Connection, secret_key: str, tenant_id: int, draft: MailboxDraft) -> Mailbox:
    row = await db.fetchrow(q("upsert-mailbox"), tenant_id, draft.host, draft.port, draft.tls, draft.username,
                            secrets.encrypt(secret_key, draft.password), draft.folder, draft.address,
                            draft.plus_addressing)
    return Mailbox(**row)


async def list_mailboxes(db: asyncpg.Connection, tenant_id: int) -> list[Mailbox]:
    return [Mailbox(**r) for r in await db.fetch(q("list-mailboxes"), tenant_id)]


async def delete_mailbox(db: asyncpg.Connection, tenant_id: int, mailbox_id: int) -> None:
    if await db.fetchval(q("delete-mailbox"), tenant_id, mailbox_id) is None:
        raise NotFound(f"mailbox {mailbox_id} not found")


async def stored_mailboxes(db: asyncpg.Connection | asyncpg.Pool) -> list[Stored]:
    return [Stored(**r) for r in await db.fetch(q("all-mailboxes"))]


async def connect(box: Stored, secret_key: str, *, deadline: float = TIMEOUT) -> aioimaplib.IMAP4:
    """Logged in and the folder selected; raises OSError/TimeoutError/aioimaplib.Abort or RuntimeError."""
    if box.tls:
        client = aioimaplib.IMAP4_SSL(host=box.host, port=box.port, timeout=deadline,
                                      ssl_context=ssl.create_default_context())
    else:
        client = aioimaplib.IMAP4(host=box.host, port=box.port, timeout=deadline)
    await client.wait_hello_from_server()
    answer = await client.login(box.username, secrets.decrypt(secret_key, box.password_enc))
    if answer.result != "OK":
        await _close(client)
        raise RuntimeError(f"login refused: {_text(answer)}")
    return client


async def _close(client: aioimaplib.IMAP4) -> None:
    try:
        await asyncio.wait_for(client.logout(), 5)
    except Exception:  # already gone: nothing to close
        pass


def _text(answer: object) -> str:
    lines = getattr(answer, "lines", []) or []
    return " ".join(x.decode(errors="replace") if isinstance(x, bytes | bytearray) else str(x) for x in lines)[:300]


async def read_new(pool: asyncpg.Pool, client: aioimaplib.IMAP4, box: Stored, secret_key: str,
                   now: dt.datetime | None = None) -> Pass:
    """Select the folder, fetch what came after the last UID read, and store each reply it matches."""
    out = Pass()
    answer = await client.select(box.folder)
    if answer.result != "OK":
        out.error = f"select {box.folder!r} refused: {_text(answer)}"
        return out
    validity = None
    for line in answer.lines:
        if isinstance(line, bytes | bytearray) and (found := _UIDVALIDITY.search(bytes(line))):
            validity = int(found.group(1))
    if validity is not None and box.uid_validity is not None and validity != box.uid_validity:
        box.last_uid = 0   # the folder was rebuilt: its UIDs start again (replies are stored once per Message-ID)
    box.uid_validity = validity
    answer = await client.uid_search(f"UID {box.last_uid + 1}:*", charset=None)
    if answer.result != "OK":
        out.error = f"search refused: {_text(answer)}"
        return out
    uids = sorted({int(u) for line in answer.lines[:1] for u in bytes(line).split() if u.isdigit()})
    uids = [u for u in uids if u > box.last_uid][:FETCH_BATCH]
    for uid in uids:
        answer = await client.uid("fetch", str(uid), "(BODY.PEEK[])")
        raw = next((bytes(x) for x in answer.lines if isinstance(x, bytearray)), None)
        if answer.result != "OK" or raw is None:
            out.error = f"fetch of UID {uid} refused: {_text(answer)}"
            return out
        parsed = replies.parse(raw, now=now or dt.datetime.now(dt.UTC))
        async with pool.acquire() as db, db.transaction():
            kind = await replies.record(db, box.tenant_id, box.id, parsed, secret_key) if parsed else None
            await db.execute(q("mailbox-progress"), box.id, uid, validity, None)
        box.last_uid = uid
        out.read += 1
        if kind is not None:
            out.stored[kind] = out.stored.get(kind, 0) + 1
    if not uids:
        await pool.execute(q("mailbox-progress"), box.id, box.last_uid, validity, None)
    return out


async def read_once(pool: asyncpg.Pool, box: Stored, secret_key: str, *, deadline: float = TIMEOUT) -> Pass:
    """Connect, read what is new, log out. Every failure is a result (stored as last_error), never raised."""
    try:
        client = await connect(box, secret_key, deadline=deadline)
    except Exception as exc:  # unreachable, refused, TLS, a greeting that is not IMAP
        return await _failed(pool, box, f"connect: {str(exc) or type(exc).__name__}")
    try:
        result = await read_new(pool, client, box, secret_key)
    except Exception as exc:  # a reply the client cannot parse, a cut connection, a deadline passed
        return await _failed(pool, box, f"read: {str(exc) or type(exc).__name__}")
    finally:
        await _close(client)
    if result.error:
        await _failed(pool, box, result.error)
    return result


async def _failed(pool: asyncpg.Pool, box: Stored, error: str) -> Pass:
    log.warning("reply mailbox %s (%s@%s): %s", box.id, box.username, box.host, error)
    try:
        await pool.execute(q("mailbox-progress"), box.id, box.last_uid, box.uid_validity, error[:500])
    except Exception as exc:  # PostgreSQL away too: the next pass records it
        log.warning("reply mailbox %s: could not record the error: %s", box.id, exc)
    return Pass(error=error)


async def watch(pool: asyncpg.Pool, box: Stored, secret_key: str, stop: asyncio.Event, *,
                poll_every: float = POLL_EVERY, idle_for: float = IDLE_FOR) -> None:
    """Read a mailbox until `stop`: with IDLE the server says when mail arrives, else it is polled."""
    while not stop.is_set():
        client = None
        try:
            client = await connect(box, secret_key)
            idle = "IDLE" in (client.protocol.capabilities or set())
            while not stop.is_set():
                result = await read_new(pool, client, box, secret_key)
                if result.error:
                    await _failed(pool, box, result.error)
                    break
                if not idle:
                    await _wait(stop, poll_every)
                    continue
                waiting = await client.idle_start(timeout=idle_for)
                pushed = asyncio.ensure_future(client.wait_server_push(timeout=idle_for + TIMEOUT))
                stopped = asyncio.ensure_future(stop.wait())
                await asyncio.wait({pushed, stopped}, return_when=asyncio.FIRST_COMPLETED)
                stopped.cancel()
                pushed.cancel()
                client.idle_done()
                await asyncio.wait_for(waiting, TIMEOUT)
        except Exception as exc:  # every failure is recorded and the mailbox is tried again
            await _failed(pool, box, f"watch: {str(exc) or type(exc).__name__}")
            await _wait(stop, poll_every)
        finally:
            if client is not None:
                await _close(client)


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        pass
