"""The SMTP injector: a pool of persistent, pipelined connections into PowerMTA that returns SendResults."""

from __future__ import annotations

import asyncio
import logging
import ssl

from engine.sending.transport import Outcome, OutgoingMessage, SendResult
from pmta.smtp import (
    CRLF,
    Session,
    SmtpReplyError,
    accepted,
    dot_stuff,
    failure,
    lost,
    open_session,
    read_reply,
    xtext,
)

log = logging.getLogger(__name__)

# What a broken or timed-out connection raises from the stream calls (TimeoutError and ConnectionError are
# OSErrors, IncompleteReadError an EOFError).
_IO_ERRORS = (OSError, EOFError, asyncio.LimitOverrunError)
_END_OF_DATA = b".\r\n"
# A connection idle longer than this is checked with NOOP before use: PowerMTA and most servers drop idle
# sessions after a few minutes, and a message written into a dead socket would come back SOFT for nothing.
_IDLE_CHECK_SECONDS = 10.0
# After a failed connect a worker fails what it takes for this long instead of trying again per message,
# so a batch sent to a dead listener returns SOFT at once rather than after one timeout per message.
_CONNECT_BACKOFF_SECONDS = 2.0


class _Batch:
    """Results of one send/send_many call, filled in by whichever workers carry its messages."""

    __slots__ = ("results", "remaining", "done")

    def __init__(self, size: int, done: asyncio.Future[None]) -> None:
        self.results: list[SendResult | None] = [None] * size
        self.remaining = size
        self.done = done


# A queued message: (message, its batch, its index in the batch).
_Item = tuple[OutgoingMessage, _Batch, int]


def _finish(item: _Item, result: SendResult) -> None:
    batch = item[1]
    batch.results[item[2]] = result
    batch.remaining -= 1
    if not batch.remaining and not batch.done.done():
        batch.done.set_result(None)


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
    """A pool of persistent SMTP connections into one PowerMTA listener; send() never raises for a reply."""

    def __init__(self, host: str, port: int, *, pool_size: int = 8, helo: str = "localhost",
                 timeout: float = 30.0, data_timeout: float | None = None, starttls: bool = False,
                 tls_context: ssl.SSLContext | None = None, username: str | None = None,
                 password: str | None = None, max_messages_per_connection: int = 1000) -> None:
        if pool_size < 1:
            raise ValueError("pool_size must be at least 1")
        self.host = host
        self.port = port
        self.pool_size = pool_size
        self._helo = helo
        self._timeout = timeout
        # RFC 5321 §4.5.3.2.6 allows the server 10 minutes after the final dot; default to the command one.
        self._data_timeout = data_timeout if data_timeout is not None else timeout
        self._starttls = starttls
        self._tls_context = tls_context
        self._username = username
        self._password = password
        # Reconnecting every thousand messages costs two round trips per thousand and bounds what one
        # long-lived session can accumulate on either side.
        self._max_per_connection = max_messages_per_connection if max_messages_per_connection > 0 else 2**62
        self._queue: asyncio.Queue[_Item | None] = asyncio.Queue()
        self._workers: list[asyncio.Task[None]] = []
        self._sessions: set[Session] = set()
        self._watchdog: asyncio.Task[None] | None = None
        self._closed = False

    async def __aenter__(self) -> Injector:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def send(self, msg: OutgoingMessage) -> SendResult:
        """Inject one message and return how the server answered."""
        return (await self.send_many([msg]))[0]

    async def send_many(self, msgs: list[OutgoingMessage]) -> list[SendResult]:
        """Inject messages over the whole pool; results come back in input order."""
        if self._closed:
            raise RuntimeError("Injector is closed")
        if not msgs:
            return []
        if not self._workers:
            self._start()
        batch = _Batch(len(msgs), asyncio.get_running_loop().create_future())
        put = self._queue.put_nowait
        for index, msg in enumerate(msgs):
            put((msg, batch, index))
        await batch.done
        return batch.results  # type: ignore[return-value]  # every slot is filled before `done`

    async def close(self) -> None:
        """Let queued messages finish, then QUIT every connection."""
        if self._closed:
            return
        self._closed = True
        for _ in self._workers:
            self._queue.put_nowait(None)
        await asyncio.gather(*self._workers, return_exceptions=True)
        if self._watchdog is not None:
            self._watchdog.cancel()
            await asyncio.gather(self._watchdog, return_exceptions=True)

    def _start(self) -> None:
        self._workers = [asyncio.create_task(self._worker(), name=f"injector-{i}")
                         for i in range(self.pool_size)]
        self._watchdog = asyncio.create_task(self._watch(), name="injector-watchdog")

    async def _watch(self) -> None:
        """Abort connections whose awaited reply is overdue: cheaper than a timeout scope per message."""
        loop = asyncio.get_running_loop()
        tick = min(1.0, self._timeout / 4)
        while True:
            await asyncio.sleep(tick)
            now = loop.time()
            for session in list(self._sessions):
                if session.deadline and now > session.deadline:
                    log.warning("SMTP reply from %s:%s overdue, dropping the connection", self.host, self.port)
                    session.abort()

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        session: Session | None = None
        down_until, down_reason = 0.0, ""
        try:
            while True:
                item = await self._queue.get()
                if item is None:
                    break
                if session is not None and not await self._usable(session, loop.time()):
                    await self._drop(session)
                    session = None
                if session is None:
                    if loop.time() < down_until:
                        _finish(item, SendResult(outcome=Outcome.SOFT, text=down_reason))
                        continue
                    session, down_reason = await self._connect()
                    if session is None:
                        down_until = loop.time() + _CONNECT_BACKOFF_SECONDS
                        _finish(item, SendResult(outcome=Outcome.SOFT, text=down_reason))
                        continue
                try:
                    if session.pipelining:
                        stop = await self._pipeline(session, item)
                    else:
                        stop = await self._lockstep(session, item)
                except Exception:  # a bug, not an SMTP event: the items were failed; keep serving
                    log.exception("injector worker error")
                    stop = False
                session.deadline = 0.0
                session.idle_since = loop.time()
                if not session.alive() or session.messages >= self._max_per_connection:
                    await self._drop(session)
                    session = None
                if stop:
                    break
        finally:
            if session is not None:
                await self._drop(session)

    async def _connect(self) -> tuple[Session | None, str]:
        try:
            session = await open_session(
                self.host, self.port, helo=self._helo, setup_timeout=self._timeout, starttls=self._starttls,
                tls_context=self._tls_context, username=self._username, password=self._password)
        except SmtpReplyError as exc:
            return None, f"cannot open SMTP session: {exc}"
        except (*_IO_ERRORS, ssl.SSLError) as exc:
            return None, f"cannot connect to {self.host}:{self.port}: {exc!r}"
        self._sessions.add(session)
        return session, ""

    async def _drop(self, session: Session) -> None:
        self._sessions.discard(session)
        await session.quit()

    async def _usable(self, session: Session, now: float) -> bool:
        """Whether an idle connection can carry the next message (NOOP after a long idle)."""
        if not session.alive():
            return False
        if now - session.idle_since < _IDLE_CHECK_SECONDS:
            return True
        try:
            async with asyncio.timeout(self._timeout):
                return (await session.command(b"NOOP\r\n"))[:1] == b"2"
        except (*_IO_ERRORS, TimeoutError):
            return False

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
        try:
            while True:
                parts = _payload(pending[0]) if pending is not None else []
                rset = s.needs_rset
                if rset:
                    parts.append(b"RSET\r\n")
                if item is not None:
                    parts.append(_envelope(s, item[0]))
                    s.messages += 1
                write(b"".join(parts))
                s.deadline = clock() + (self._data_timeout if pending is not None else self._timeout)
                if pending is not None:
                    line = await read_reply(reader)
                    _finish(pending, accepted(line) if line[:1] == b"2" else failure(line))
                    pending = None
                    if line[:3] == b"421":  # the server is closing: nothing more will be answered
                        return self._closing(s, item, line, stop)
                if rset:
                    line = await read_reply(reader)
                    s.needs_rset = False
                    if line[:3] == b"421":
                        return self._closing(s, item, line, stop)
                if item is not None:
                    pending = await self._envelope_replies(s, item)
                    item = None
                if stop or s.broken or s.messages >= limit or queue.empty():
                    if pending is None:
                        return stop
                    continue  # flush the last data on its own
                item = queue.get_nowait()
                if item is None:
                    stop = True
        except BaseException as exc:
            reason = "reply timed out" if s.deadline and clock() > s.deadline else repr(exc)
            for unfinished in (pending, item):
                if unfinished is not None:
                    _finish(unfinished, lost(reason))
            s.abort()
            if isinstance(exc, _IO_ERRORS):
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
            await read_reply(reader)
        _finish(item, failure(mail if mail[:1] != b"2" else rcpt if rcpt[:1] != b"2" else data))
        s.needs_rset = True
        if data[:3] == b"421":
            s.broken = True
        return None

    def _closing(self, s: Session, item: _Item | None, line: bytes, stop: bool) -> bool:
        """A 421 arrived: the in-flight envelope gets it as a SOFT failure and the connection is done."""
        if item is not None:
            _finish(item, failure(line))
        s.broken = True
        return stop

    async def _lockstep(self, s: Session, item: _Item) -> bool:
        """One message without PIPELINING: each command waits for its reply."""
        clock = asyncio.get_running_loop().time
        try:
            if s.needs_rset:
                s.deadline = clock() + self._timeout
                await s.command(b"RSET\r\n")
                s.needs_rset = False
            s.messages += 1
            for command in _envelope(s, item[0]).split(CRLF)[:3]:
                s.deadline = clock() + self._timeout
                line = await s.command(command + CRLF)
                if line[:3] != b"354" and line[:1] != b"2":
                    _finish(item, failure(line))
                    s.needs_rset = True
                    s.broken = line[:3] == b"421"
                    return False
            s.deadline = clock() + self._data_timeout
            s.writer.write(b"".join(_payload(item[0])))
            line = await read_reply(s.reader)
            _finish(item, accepted(line) if line[:1] == b"2" else failure(line))
            s.broken = line[:3] == b"421"
            return False
        except BaseException as exc:
            reason = "reply timed out" if s.deadline and clock() > s.deadline else repr(exc)
            _finish(item, lost(reason))
            s.abort()
            if isinstance(exc, _IO_ERRORS):
                return False
            raise
