"""The SMTP injector: a pool of persistent, pipelined connections into PowerMTA that returns SendResults."""

from __future__ import annotations

import asyncio
import logging
import ssl
import time

from engine.metrics import INJECTION_SECONDS, SMTP_CONNECTION_ERRORS
from engine.sending.transport import Outcome, OutgoingMessage, SendResult
from pmta.smtp import (
    CRLF,
    NotSmtp,
    Session,
    SmtpReplyError,
    accepted,
    dot_stuff,
    failure,
    lost,
    open_session,
    read_reply,
    unsent,
    xtext,
)

log = logging.getLogger(__name__)

# What a broken, timed-out or non-SMTP peer raises from the stream calls and the reply reader (TimeoutError
# and ssl.SSLError are OSErrors, IncompleteReadError an EOFError).
_PEER_ERRORS = (OSError, EOFError, asyncio.LimitOverrunError, NotSmtp)
_END_OF_DATA = b".\r\n"
# A connection idle longer than this is checked with NOOP before use: PowerMTA and most servers drop idle
# sessions after a few minutes, and a message written into a dead socket would come back SOFT for nothing.
_IDLE_CHECK_SECONDS = 10.0
# After a connection could not be opened, or died before carrying one transaction to its end, the pool opens
# no new one for this long, doubling up to the cap; a session that completes a transaction resets it. During
# the wait messages come back SOFT at once (transmitted=False), so a batch sent to a dead or wrong listener
# returns quickly instead of after one timeout per message.
_BACKOFF_FIRST_SECONDS = 0.5
_BACKOFF_CAP_SECONDS = 30.0
# What send_many may take beyond its own deadline: timer lateness and filling in the results.
_RETURN_SLACK_SECONDS = 0.25
# The histogram's child per outcome, looked up once (this runs for every message).
_LATENCY = {outcome: INJECTION_SECONDS.labels(outcome.value) for outcome in Outcome}


class _Batch:
    """Results of one send/send_many call, filled in by whichever workers carry its messages.

    `done` resolves when every result is in. `live` turns False then, or when the call gave up (its deadline
    passed, it was cancelled): a batch that is not live takes no more results and its queued messages are
    skipped (an attribute, not `done.done()`, because workers look at it once or twice per message).
    """

    __slots__ = ("results", "written", "remaining", "done", "live", "started")

    def __init__(self, size: int, done: asyncio.Future[None]) -> None:
        self.started = time.perf_counter()  # the injection latency histogram counts from here
        self.results: list[SendResult | None] = [None] * size
        self.written = [False] * size   # some of the message's envelope went out: a retry costs an attempt
        self.remaining = size
        self.done = done
        self.live = True


# A queued message: (message, its batch, its index in the batch).
_Item = tuple[OutgoingMessage, _Batch, int]


def _finish(item: _Item, result: SendResult) -> None:
    """Record an item's result; the first one counts, and a batch that is done (or expired) takes none."""
    batch, index = item[1], item[2]
    if batch.live and batch.results[index] is None:
        batch.results[index] = result
        _LATENCY[result.outcome].observe(time.perf_counter() - batch.started)
        batch.remaining -= 1
        if not batch.remaining:
            batch.live = False
            batch.done.set_result(None)


def _describe(exc: BaseException) -> str:
    """What went wrong with the peer, in words for SendResult.text."""
    if isinstance(exc, asyncio.IncompleteReadError):
        return "connection closed by the server" + (" in the middle of a reply" if exc.partial else "")
    if isinstance(exc, asyncio.LimitOverrunError):
        return "over-long reply line"
    if isinstance(exc, NotSmtp):
        return str(exc)
    if isinstance(exc, ssl.SSLError):
        return f"TLS failed: {exc}"
    return repr(exc)


def _envelope(session: Session, msg: OutgoingMessage) -> bytes:
    """MAIL FROM, RCPT TO and DATA as one block of bytes, ready to pipeline."""
    params = b""
    if session.dsn:
        params = b" RET=HDRS ENVID=" + xtext(msg.envelope_id).encode()
    if session.smtputf8 and not (msg.mail_from.isascii() and msg.rcpt_to.isascii()):
        params += b" SMTPUTF8"
    if session.eightbit and not msg.data.isascii():
        params += b" BODY=8BITMIME"
    return b"MAIL FROM:<%s>%s\r\nRCPT TO:<%s>\r\nDATA\r\n" % (
        msg.mail_from.encode(), params, msg.rcpt_to.encode())


def _payload(msg: OutgoingMessage) -> list[bytes]:
    """The message data as sent after 354: X-Virtual-MTA header, dot-stuffed body, final dot."""
    if msg.vmta:
        return [b"X-Virtual-MTA: " + msg.vmta.encode() + CRLF, dot_stuff(msg.data), _END_OF_DATA]
    return [dot_stuff(msg.data), _END_OF_DATA]


class Injector:
    """A pool of persistent SMTP connections into one PowerMTA listener.

    send_many never raises for anything the peer does and returns within `bound(n)` seconds.
    """

    def __init__(self, host: str, port: int, *, pool_size: int = 8, helo: str = "localhost",
                 timeout: float = 30.0, data_timeout: float | None = None, connect_timeout: float | None = None,
                 starttls: bool = False, tls_context: ssl.SSLContext | None = None, username: str | None = None,
                 password: str | None = None, max_messages_per_connection: int = 1000,
                 idle_check: float = _IDLE_CHECK_SECONDS, backoff: float = _BACKOFF_FIRST_SECONDS,
                 backoff_cap: float = _BACKOFF_CAP_SECONDS) -> None:
        if pool_size < 1:
            raise ValueError("pool_size must be at least 1")
        self.host = host
        self.port = port
        self.pool_size = pool_size
        self._helo = helo
        self._timeout = timeout
        # RFC 5321 §4.5.3.2.6 allows the server 10 minutes after the final dot; default to the command one.
        self._data_timeout = data_timeout if data_timeout is not None else timeout
        # Connect, greeting, EHLO, STARTTLS and AUTH together.
        self._connect_timeout = connect_timeout if connect_timeout is not None else timeout
        self._starttls = starttls
        self._tls_context = tls_context
        self._username = username
        self._password = password
        # Reconnecting every thousand messages costs two round trips per thousand and bounds what one
        # long-lived session can accumulate on either side.
        self._max_per_connection = max_messages_per_connection if max_messages_per_connection > 0 else 2**62
        self._idle_check = idle_check
        self._backoff_first = backoff
        self._backoff_cap = backoff_cap
        self._backoff = backoff          # the next wait after a failure
        self._down_until = 0.0           # loop time before which no connection is opened
        self._down_reason = ""
        # How late the watchdog may notice an overdue reply.
        self._tick = min(1.0, self._timeout / 4, self._data_timeout / 4)
        self._queue: asyncio.Queue[_Item | None] = asyncio.Queue()
        self._workers: list[asyncio.Task[None]] = []
        self._started = 0
        self._sessions: set[Session] = set()
        self._watchdog: asyncio.Task[None] | None = None
        self._closed = False

    async def __aenter__(self) -> Injector:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def bound(self, n: int) -> float:
        """The most seconds send_many(n messages) takes, whatever the server does."""
        return self._deadline(n) + _RETURN_SLACK_SECONDS if n > 0 else _RETURN_SLACK_SECONDS

    def _deadline(self, n: int) -> float:
        """The call's own deadline: one session set-up, then for each message a connection carries one
        command and one data timeout, each noticed up to a watchdog tick late. Messages still unanswered
        then (a server slower than that, messages queued behind other calls) come back SOFT."""
        rounds = -(-n // self.pool_size)
        return self._connect_timeout + rounds * (self._timeout + self._data_timeout + 2 * self._tick)

    async def send(self, msg: OutgoingMessage) -> SendResult:
        """Inject one message and return how the server answered."""
        return (await self.send_many([msg]))[0]

    async def send_many(self, msgs: list[OutgoingMessage]) -> list[SendResult]:
        """Inject messages over the whole pool; results come back in input order, within bound(len(msgs))."""
        if self._closed:
            raise RuntimeError("Injector is closed")
        if not msgs:
            return []
        self._ensure_pool()
        batch = _Batch(len(msgs), asyncio.get_running_loop().create_future())
        put = self._queue.put_nowait
        for index, msg in enumerate(msgs):
            put((msg, batch, index))
        deadline = self._deadline(len(msgs))
        try:
            # One timer per call, not per message.
            async with asyncio.timeout(deadline):
                await batch.done
        except TimeoutError:
            batch.live = False
            log.warning("send_many to %s:%s passed its %.1f s deadline with %d of %d unanswered",
                        self.host, self.port, deadline, batch.remaining, len(msgs))
            reason = f"the call's {deadline:.1f} s deadline passed"
            for i, result in enumerate(batch.results):
                if result is None:
                    batch.results[i] = lost(reason) if batch.written[i] else unsent(reason)
        finally:
            batch.live = False  # cancelled from outside: the workers skip the rest
        return batch.results  # type: ignore[return-value]  # every slot is filled by now

    async def close(self) -> None:
        """Let queued messages finish, then QUIT every connection."""
        if self._closed:
            return
        self._closed = True
        workers = [task for task in self._workers if not task.done()]
        if workers and (self._watchdog is None or self._watchdog.done()):
            self._watchdog = asyncio.create_task(self._watch(), name="injector-watchdog")
        for _ in workers:
            self._queue.put_nowait(None)
        if workers:
            # Workers finish what is queued; one whose sentinel was lost to a bug would wait forever.
            _, stuck = await asyncio.wait(workers, timeout=self.bound(self._queue.qsize()) + 2.0)
            for task in stuck:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
        if self._watchdog is not None:
            self._watchdog.cancel()
            await asyncio.gather(self._watchdog, return_exceptions=True)
        while not self._queue.empty():  # left behind by workers that died: never written
            item = self._queue.get_nowait()
            if item is not None:
                _finish(item, unsent("the injector was closed"))

    def _ensure_pool(self) -> None:
        """Start the pool, or restart whatever part of it died (a bug, a cancelled task)."""
        workers = self._workers
        if len(workers) == self.pool_size and not any(task.done() for task in workers):
            if self._watchdog is not None and not self._watchdog.done():
                return
        alive = []
        for task in workers:
            if not task.done():
                alive.append(task)
            elif task.cancelled():
                log.warning("injector task %s was cancelled, starting another", task.get_name())
            elif task.exception() is not None:
                log.error("injector task %s died, starting another", task.get_name(), exc_info=task.exception())
        while len(alive) < self.pool_size:
            self._started += 1
            alive.append(asyncio.create_task(self._worker(), name=f"injector-{self._started}"))
        self._workers = alive
        if self._watchdog is None or self._watchdog.done():
            self._watchdog = asyncio.create_task(self._watch(), name="injector-watchdog")

    async def _watch(self) -> None:
        """Abort connections whose awaited reply is overdue: cheaper than a timeout scope per message."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self._tick)
            now = loop.time()
            for session in list(self._sessions):
                if session.deadline and now > session.deadline:
                    log.warning("SMTP reply from %s:%s overdue, dropping the connection", self.host, self.port)
                    session.abort("reply timed out")

    async def _worker(self) -> None:
        session: Session | None = None
        item: _Item | None = None
        clean = False                    # ended by the close sentinel, not by an exception
        try:
            while True:
                item = await self._queue.get()
                if item is None:
                    clean = True
                    break
                if not item[1].live:  # its call's deadline passed while it was queued
                    item = None
                    continue
                try:
                    session, stop = await self._carry(session, item)
                except Exception:  # a bug, not an SMTP event: fail what this worker held, keep serving
                    log.exception("injector worker error")
                    _finish(item, unsent("injector error before sending") if not item[1].written[item[2]]
                            else lost("injector error"))
                    if session is not None:
                        self._sessions.discard(session)
                        session.abort("injector error")
                        session = None
                    stop = False
                item = None
                if stop:
                    clean = True
                    break
        finally:
            if item is not None:  # cancelled while holding it (a no-op when it was already answered)
                _finish(item, lost("injector task stopped") if item[1].written[item[2]]
                        else unsent("injector task stopped"))
            if session is not None:
                self._sessions.discard(session)
                if clean:
                    await session.quit(min(2.0, self._timeout))
                else:
                    session.abort("injector task stopped")

    async def _carry(self, session: Session | None, item: _Item) -> tuple[Session | None, bool]:
        """Send `item` (and whatever the pipeline takes along); return the session to keep and whether the
        close sentinel was taken."""
        loop = asyncio.get_running_loop()
        if session is not None and not await self._usable(session, loop.time()):
            self._end(session)
            session = None
        if session is None:
            session = await self._open(loop.time())
            if session is None:
                _finish(item, unsent(self._down_reason))
                return None, False
        if session.pipelining:
            stop = await self._pipeline(session, item)
        else:
            stop = await self._lockstep(session, item)
        session.deadline = 0.0
        session.idle_since = loop.time()
        if not session.alive():
            self._end(session)
            return None, stop
        if session.messages >= self._max_per_connection:
            self._sessions.discard(session)
            await session.quit(min(2.0, self._timeout))
            return None, stop
        return session, stop

    async def _open(self, now: float) -> Session | None:
        """A new session, or None (the reason in `_down_reason`) when backing off or the attempt failed."""
        if now < self._down_until:
            return None
        try:
            session = await open_session(
                self.host, self.port, helo=self._helo, setup_timeout=self._connect_timeout,
                starttls=self._starttls, tls_context=self._tls_context, username=self._username,
                password=self._password)
        except SmtpReplyError as exc:
            self._back_off(f"cannot open SMTP session with {self.host}:{self.port}: {exc}")
        except TimeoutError:
            self._back_off(f"cannot open SMTP session with {self.host}:{self.port}: "
                           f"no complete set-up within {self._connect_timeout} s")
        except Exception as exc:  # NotSmtp, OSError, EOF, TLS; a bug here still means nothing was sent
            self._back_off(f"cannot open SMTP session with {self.host}:{self.port}: {_describe(exc)}")
        else:
            self._sessions.add(session)
            return session
        SMTP_CONNECTION_ERRORS.labels("connect").inc()
        return None

    def _back_off(self, reason: str) -> None:
        """No new connection for a while, doubling per failure; failures during one wait count once."""
        now = asyncio.get_running_loop().time()
        if now >= self._down_until:
            self._down_until = now + self._backoff
            log.warning("SMTP %s:%s: %s; no new connection for %.1f s", self.host, self.port, reason,
                        self._backoff)
            self._backoff = min(self._backoff * 2, self._backoff_cap)
        self._down_reason = reason

    def _end(self, session: Session) -> None:
        """Forget a connection that failed; back off unless it proved the server healthy."""
        self._sessions.discard(session)
        session.abort("closed")
        if session.completed:
            self._backoff = self._backoff_first
        else:
            SMTP_CONNECTION_ERRORS.labels("lost").inc()
            self._back_off(f"connection to {self.host}:{self.port} failed: {session.error}")

    async def _usable(self, session: Session, now: float) -> bool:
        """Whether an idle connection can carry the next message (NOOP after a long idle)."""
        if not session.alive():
            return False
        if now - session.idle_since < self._idle_check:
            return True
        try:
            async with asyncio.timeout(self._timeout):
                reply = await session.command(b"NOOP\r\n")
        except TimeoutError:
            session.abort("NOOP timed out")
            return False
        except _PEER_ERRORS as exc:
            session.abort(f"NOOP: {exc!r}")
            return False
        if reply[:1] != b"2":
            session.abort(f"NOOP: {reply.strip()[:200]!r}")
            return False
        return True

    async def _pipeline(self, s: Session, item: _Item | None) -> bool:
        """Send `item` and whatever else is queued, each message's data written with the next envelope.

        One write per message: `<previous data>.\r\n[RSET\r\n]MAIL..RCPT..DATA`, then its replies in order.
        Returns True when the close sentinel was taken from the queue.
        """
        queue = self._queue
        reader = s.reader
        write = s.writer.write
        clock = asyncio.get_running_loop().time
        limit = self._max_per_connection
        pending: _Item | None = None     # got 354; its data goes out with the next write
        stop = False
        written = False                  # whether `item`'s envelope went out
        try:
            while True:
                if pending is not None and not pending[1].live:
                    # Its call gave up on it: ending the data now could deliver a message already reported
                    # SOFT, so drop the connection and let the server discard the transaction.
                    s.abort("the call's deadline passed during DATA")
                    pending = None
                    raise ConnectionAbortedError("the call's deadline passed during DATA")
                parts = _payload(pending[0]) if pending is not None else []
                rset = s.needs_rset
                if rset:
                    parts.append(b"RSET\r\n")
                if item is not None:
                    parts.append(_envelope(s, item[0]))
                    s.messages += 1
                write(b"".join(parts))
                if item is not None:
                    item[1].written[item[2]] = written = True
                s.deadline = clock() + (self._data_timeout if pending is not None else self._timeout)
                if pending is not None:
                    line = await read_reply(reader)
                    _finish(pending, accepted(line) if line[:1] == b"2" else failure(line))
                    pending = None
                    s.completed += 1
                    if line[:3] == b"421":  # the server is closing: nothing more will be answered
                        return self._closing(s, item, line, stop)
                if rset:
                    line = await read_reply(reader)
                    s.needs_rset = False
                    if line[:3] == b"421":
                        return self._closing(s, item, line, stop)
                if item is not None:
                    pending = await self._envelope_replies(s, item)
                    item, written = None, False
                if stop or s.broken or s.messages >= limit or queue.empty():
                    if pending is None:
                        return stop
                    continue  # flush the last data on its own
                item = queue.get_nowait()
                if item is None:
                    stop = True
                elif not item[1].live:  # its call's deadline passed while it was queued: skip it
                    item = None
        except BaseException as exc:
            reason = s.error or _describe(exc)
            if pending is not None:
                _finish(pending, lost(reason))
            if item is not None:
                _finish(item, lost(reason) if written else unsent(f"connection lost before sending: {reason}"))
            s.abort(reason)
            if isinstance(exc, _PEER_ERRORS):
                return stop
            raise

    async def _envelope_replies(self, s: Session, item: _Item) -> _Item | None:
        """Read the MAIL, RCPT and DATA replies; return the item when its data may follow (354)."""
        reader = s.reader
        mail = await read_reply(reader)
        if mail[:3] == b"421":
            self._closing(s, item, mail, False)
            return None
        rcpt = await read_reply(reader)
        if rcpt[:3] == b"421":
            self._closing(s, item, rcpt, False)
            return None
        data = await read_reply(reader)
        if data[:3] == b"354" and mail[:1] == b"2" and rcpt[:1] == b"2":
            return item
        if data[:3] == b"354":  # RFC 2920 §3.1: a server may open DATA anyway; end it empty
            s.writer.write(_END_OF_DATA)
            if (await read_reply(reader))[:3] == b"421":
                s.broken = True
        _finish(item, failure(mail if mail[:1] != b"2" else rcpt if rcpt[:1] != b"2" else data))
        s.completed += 1
        s.needs_rset = True
        if data[:3] == b"421":
            s.broken = True
        return None

    def _closing(self, s: Session, item: _Item | None, line: bytes, stop: bool) -> bool:
        """A 421 arrived: the in-flight envelope gets it as a SOFT failure and the connection is done."""
        if item is not None:
            _finish(item, failure(line))
        s.broken = True
        s.error = s.error or f"server closing: {line.strip()[:200].decode('utf-8', 'replace')}"
        return stop

    async def _lockstep(self, s: Session, item: _Item) -> bool:
        """One message without PIPELINING: each command waits for its reply."""
        clock = asyncio.get_running_loop().time
        written = False
        try:
            if s.needs_rset:
                s.deadline = clock() + self._timeout
                line = await s.command(b"RSET\r\n")
                s.needs_rset = False
                if line[:1] != b"2":  # 421: the server is closing; the message was not sent
                    _finish(item, failure(line, transmitted=False))
                    s.broken = True
                    s.error = s.error or f"RSET: {line.strip()[:200]!r}"
                    return False
            s.messages += 1
            for command in _envelope(s, item[0]).split(CRLF)[:3]:
                s.deadline = clock() + self._timeout
                s.writer.write(command + CRLF)
                item[1].written[item[2]] = written = True
                line = await read_reply(s.reader)
                if line[:3] != b"354" and line[:1] != b"2":
                    _finish(item, failure(line))
                    s.completed += 1
                    s.needs_rset = True
                    if line[:3] == b"421":
                        self._closing(s, None, line, False)
                    return False
            s.deadline = clock() + self._data_timeout
            s.writer.write(b"".join(_payload(item[0])))
            line = await read_reply(s.reader)
            _finish(item, accepted(line) if line[:1] == b"2" else failure(line))
            s.completed += 1
            if line[:3] == b"421":
                self._closing(s, None, line, False)
            return False
        except BaseException as exc:
            reason = s.error or _describe(exc)
            _finish(item, lost(reason) if written else unsent(f"connection lost before sending: {reason}"))
            s.abort(reason)
            if isinstance(exc, _PEER_ERRORS):
                return False
            raise
