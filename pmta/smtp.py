"""One client SMTP session over raw asyncio streams: greeting, EHLO, STARTTLS, AUTH and reply parsing."""

from __future__ import annotations

import asyncio
import base64
import ssl

from engine.sending.transport import Outcome, SendResult

CRLF = b"\r\n"
# RFC 5321 §4.5.3.1.5 caps a reply line at 512 octets; allow servers some slack, but a line this long, or a
# reply of this many lines, is not a server talking SMTP.
MAX_LINE = 2048
MAX_LINES = 256
# Every valid reply code (RFC 5321 §4.2: first digit 2-5) as bytes → int, and every "ddd " start of a final
# line: set and dict lookups keep validation on the hot path as cheap as the slice compare it replaced.
_CODES = {b"%d" % code: code for code in range(200, 600)}
_FINAL_HEADS = frozenset(code + b" " for code in _CODES)
_DSN_XTEXT_SAFE = frozenset(range(33, 127)) - {ord("+"), ord("=")}


class SmtpReplyError(Exception):
    """A setup step (greeting, EHLO, STARTTLS, AUTH) got a reply it cannot continue after."""

    def __init__(self, step: str, code: int, text: str) -> None:
        super().__init__(f"{step}: {code} {text}")
        self.step = step
        self.code = code
        self.text = text


class NotSmtp(Exception):
    """The peer sent bytes that are not an SMTP reply (an HTTP page, garbage, a broken multi-line reply)."""


def line_problem(line: bytes, code: bytes = b"") -> str:
    """Why one reply line (CRLF included) is not SMTP, "" when it is; `code` is the first line's code."""
    head = line[:3]
    if len(line) > MAX_LINE:
        return f"over-long reply line ({len(line)} bytes)"
    if head not in _CODES:
        return f"not an SMTP reply: {line[:60]!r}"
    if line[3:4] not in (b" ", b"-") and line[3:] != CRLF:
        return f"not an SMTP reply line: {line[:60]!r}"
    if code and head != code:
        return f"multi-line reply changed its code from {code.decode()} to {head.decode()}"
    return ""


def reply_code(reply: bytes) -> int:
    """The code of a reply as an int, 0 when it does not start with a valid one (never raises)."""
    return _CODES.get(reply[:3], 0)


def parse_reply(data: bytes) -> tuple[int, str]:
    """A complete reply's (code, text); for anything that is not one, (0, why) — for any bytes at all."""
    lines = data.split(CRLF)
    if lines[-1]:
        return 0, f"reply not ended by CRLF: {data[-60:]!r}"
    lines = [line + CRLF for line in lines[:-1]]
    if not lines:
        return 0, "empty reply"
    if len(lines) > MAX_LINES:
        return 0, f"reply of more than {MAX_LINES} lines"
    code = lines[0][:3]
    for n, line in enumerate(lines, 1):
        problem = line_problem(line, code)
        if problem:
            return 0, problem
        last = line[3:4] != b"-"
        if last != (n == len(lines)):
            return 0, "truncated multi-line reply" if n == len(lines) else "reply continues after its last line"
    return reply_code(data), reply_text(data)


def dot_stuff(data: bytes) -> bytes:
    """Escape leading dots (RFC 5321 §4.5.2) and make sure the data ends with CRLF."""
    if not data.endswith(CRLF):
        data += CRLF
    # bytes.replace returns the same object when nothing matches, so clean mail costs one scan.
    data = data.replace(b"\r\n.", b"\r\n..")
    if data[:1] == b".":
        data = b"." + data
    return data


def xtext(value: str) -> str:
    """Encode a DSN ENVID as RFC 3461 xtext."""
    raw = value.encode()
    if all(b in _DSN_XTEXT_SAFE for b in raw):
        return value
    return "".join(chr(b) if b in _DSN_XTEXT_SAFE else f"+{b:02X}" for b in raw)


def parse_enhanced(text: str) -> str:
    """The RFC 3463 enhanced status at the start of a reply text ("5.1.1 User unknown" -> "5.1.1")."""
    token = text.split(" ", 1)[0]
    parts = token.split(".")
    if len(parts) == 3 and token[:1] in "245" and all(p.isdigit() and len(p) <= 3 for p in parts):
        return token
    return ""


def reply_text(line: bytes) -> str:
    """The text of a reply (all lines of a multi-line one joined by spaces), without code and CRLF."""
    return " ".join(part[4:].decode("utf-8", "replace") for part in line.split(CRLF) if part)


def failure(line: bytes, *, transmitted: bool = True) -> SendResult:
    """The result for a non-2xx reply: 5xx is HARD, anything else SOFT."""
    text = reply_text(line)
    outcome = Outcome.HARD if line[:1] == b"5" else Outcome.SOFT
    return SendResult(outcome=outcome, code=reply_code(line), enhanced=parse_enhanced(text), text=text,
                      transmitted=transmitted)


def accepted(line: bytes) -> SendResult:
    """The result for a 2xx reply to the final dot; the queue id is kept when the server names one."""
    text = reply_text(line)
    queue_id = ""
    if "queued as " in text:  # Postfix style: "2.0.0 Ok: queued as 4Xyz"
        queue_id = text.rsplit("queued as ", 1)[1].split(" ", 1)[0]
    elif "id=" in text:  # Exim/PowerMTA style: "ok id=1abc-..."
        queue_id = text.split("id=", 1)[1].split(" ", 1)[0]
    return SendResult(outcome=Outcome.SENT, code=reply_code(line), enhanced=parse_enhanced(text),
                      text=text, transport_id=queue_id)


def lost(reason: str) -> SendResult:
    """The result for a message whose acceptance was never confirmed because the connection failed."""
    return SendResult(outcome=Outcome.SOFT, text=f"connection lost before acceptance: {reason}")


def unsent(reason: str) -> SendResult:
    """The result for a message none of whose envelope was written: retrying it costs no attempt."""
    return SendResult(outcome=Outcome.SOFT, text=reason, transmitted=False)


async def read_reply(reader: asyncio.StreamReader) -> bytes:
    """Read one reply, every line of a multi-line one included, as raw bytes ending in CRLF.

    Raises NotSmtp for anything that is not an SMTP reply, and what the stream raises (EOF, over-limit).
    """
    line = await reader.readuntil(CRLF)
    # The common case, a one-line reply, costs a set lookup; everything else goes through line_problem.
    if line[:4] in _FINAL_HEADS and len(line) <= MAX_LINE:
        return line
    code = line[:3]
    lines = [line]
    while True:
        problem = line_problem(line, code)
        if problem:
            raise NotSmtp(problem)
        if line[3:4] != b"-":
            return b"".join(lines)
        if len(lines) >= MAX_LINES:
            raise NotSmtp(f"reply of more than {MAX_LINES} lines")
        try:
            line = await reader.readuntil(CRLF)
        except asyncio.IncompleteReadError:
            raise NotSmtp(f"truncated multi-line reply: connection closed after {len(lines)} lines") from None
        lines.append(line)


class Session:
    """An open SMTP connection after greeting, EHLO, optional STARTTLS and AUTH, ready for MAIL FROM."""

    __slots__ = ("reader", "writer", "extensions", "pipelining", "dsn", "smtputf8", "eightbit",
                 "messages", "completed", "deadline", "idle_since", "broken", "needs_rset", "error")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 extensions: dict[str, str]) -> None:
        self.reader = reader
        self.writer = writer
        self.extensions = extensions
        self.pipelining = "PIPELINING" in extensions
        self.dsn = "DSN" in extensions
        self.smtputf8 = "SMTPUTF8" in extensions
        self.eightbit = "8BITMIME" in extensions
        self.messages = 0          # transactions started on this connection
        self.completed = 0         # transactions the server answered to the end (any code): it speaks SMTP
        self.deadline = 0.0        # loop time by which the awaited reply must arrive; 0 when idle
        self.idle_since = 0.0
        self.broken = False
        self.needs_rset = False    # a failed transaction must be reset before the next MAIL FROM
        self.error = ""            # why the connection was given up, once it was

    def alive(self) -> bool:
        """False once the peer closed or we gave up on the connection."""
        return not (self.broken or self.reader.at_eof() or self.writer.is_closing())

    async def command(self, line: bytes) -> bytes:
        """Send one command line and return its reply (setup and lock-step paths only)."""
        self.writer.write(line)
        return await read_reply(self.reader)

    async def quit(self, within: float = 2.0) -> None:
        """Say QUIT politely when possible, then close; never raises for anything the peer does."""
        try:
            if self.alive():
                async with asyncio.timeout(within):
                    await self.command(b"QUIT\r\n")
        except (OSError, EOFError, asyncio.LimitOverrunError, NotSmtp):  # TimeoutError is an OSError
            pass
        self.abort("closed")

    def abort(self, reason: str = "aborted") -> None:
        """Drop the connection at once; the first reason given is kept."""
        self.broken = True
        self.error = self.error or reason
        self.writer.transport.abort()


def _extensions(ehlo_reply: bytes) -> dict[str, str]:
    """EHLO keywords (upper case) mapped to their parameters."""
    found: dict[str, str] = {}
    for line in ehlo_reply.split(CRLF)[1:]:
        if line:
            keyword, _, params = line[4:].decode("ascii", "replace").partition(" ")
            found[keyword.upper()] = params
    return found


async def _ehlo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, helo: str) -> dict[str, str]:
    writer.write(b"EHLO %s\r\n" % helo.encode())
    reply = await read_reply(reader)
    if reply[:1] == b"2":
        return _extensions(reply)
    if reply[:3] == b"421":  # the server is closing the connection: no point in HELO
        raise SmtpReplyError("EHLO", 421, reply_text(reply))
    # A server without ESMTP: plain HELO, no extensions, so no pipelining.
    writer.write(b"HELO %s\r\n" % helo.encode())
    reply = await read_reply(reader)
    if reply[:1] != b"2":
        raise SmtpReplyError("HELO", reply_code(reply), reply_text(reply))
    return {}


async def _authenticate(session: Session, username: str, password: str) -> None:
    methods = session.extensions.get("AUTH", "").upper().split()
    if "PLAIN" in methods or "LOGIN" not in methods:
        token = base64.b64encode(f"\0{username}\0{password}".encode()).decode()
        reply = await session.command(f"AUTH PLAIN {token}\r\n".encode())
    else:
        reply = await session.command(b"AUTH LOGIN\r\n")
        for secret in (username, password):
            if reply[:3] != b"334":
                break
            reply = await session.command(base64.b64encode(secret.encode()) + CRLF)
    if reply[:3] != b"235":
        raise SmtpReplyError("AUTH", reply_code(reply), reply_text(reply))


async def open_session(host: str, port: int, *, helo: str, setup_timeout: float, starttls: bool = False,
                       tls_context: ssl.SSLContext | None = None, username: str | None = None,
                       password: str | None = None) -> Session:
    """Connect, read the greeting, EHLO, then STARTTLS and AUTH when asked, all within `setup_timeout`.

    Raises SmtpReplyError for a refusal, NotSmtp for a peer that does not speak SMTP, OSError (TimeoutError,
    ssl.SSLError included) or EOFError for the connection itself.
    """
    async with asyncio.timeout(setup_timeout):
        reader, writer = await asyncio.open_connection(host, port)
        try:
            greeting = await read_reply(reader)
            if greeting[:1] != b"2":
                raise SmtpReplyError("greeting", reply_code(greeting), reply_text(greeting))
            extensions = await _ehlo(reader, writer, helo)
            if starttls:
                if "STARTTLS" not in extensions:
                    raise SmtpReplyError("STARTTLS", 0, "not offered by the server")
                writer.write(b"STARTTLS\r\n")
                reply = await read_reply(reader)
                if reply[:3] != b"220":
                    raise SmtpReplyError("STARTTLS", reply_code(reply), reply_text(reply))
                context = tls_context or ssl.create_default_context()
                try:
                    await writer.start_tls(context, server_hostname=host)
                except (OSError, EOFError) as exc:  # ssl.SSLError is an OSError
                    raise SmtpReplyError("STARTTLS", 0, f"TLS handshake failed: {exc!r}") from exc
                extensions = await _ehlo(reader, writer, helo)
            session = Session(reader, writer, extensions)
            if username is not None:
                await _authenticate(session, username, password or "")
        except BaseException:
            writer.transport.abort()
            raise
    return session
