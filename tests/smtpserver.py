"""A scriptable SMTP server (aiosmtpd, in the test's own event loop) standing in for PowerMTA in tests.

    async with SmtpTestServer(rcpt_replies={"a@x.test": ["451 4.3.0 later"]}) as server:
        injector = Injector(server.host, server.port)
        ...
        assert server.messages[0].rcpt_tos == [...]
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import Message
from email.parser import BytesHeaderParser

from aiosmtpd.smtp import AuthResult, LoginPassword

from pmta.standin import DsnSMTP, advertise

HARD_BOUNCE = "550 5.1.1 <{address}>: Recipient address rejected: User unknown"


@dataclass(frozen=True)
class Received:
    """One message the server accepted with 250 after the final dot."""

    mail_from: str
    rcpt_tos: list[str]
    data: bytes                     # as delivered: dot-stuffing undone
    headers: Message                # the parsed header block
    mail_params: str                # the MAIL FROM parameters as sent, e.g. "RET=HDRS ENVID=s-1"
    connection: int                 # which connection (1-based) carried it


@dataclass
class _Replies:
    """Scripted answers: per address a list consumed in order, then the fixed ones, then the default."""

    per_address: dict[str, list[str]] = field(default_factory=dict)
    rule: Callable[[str], str | None] | None = None
    fixed: str | None = None

    def next(self, address: str) -> str | None:
        queue = self.per_address.get(address)
        if queue:
            return queue.pop(0)
        if self.rule is not None:
            reply = self.rule(address)
            if reply is not None:
                return reply
        return self.fixed


class _ScriptedSMTP(DsnSMTP):
    """One server-side session; counts what it accepted so `drop_after` can act per connection."""

    def __init__(self, handler: SmtpTestServer, **kwargs) -> None:
        super().__init__(handler, **kwargs)
        handler.connections += 1
        self.connection_number = handler.connections
        self.accepted_here = 0
        handler._open.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.event_handler._open.discard(self)
        super().connection_lost(exc)

    def client_pipelined(self) -> bool:
        """Whether more commands were already waiting when this one was read (the client pipelined)."""
        return bool(self._reader._buffer)


class SmtpTestServer:
    """Records every accepted message; replies, refusals and connection drops are scripted per test."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, pipelining: bool = True, dsn: bool = True,
                 rcpt_replies: dict[str, list[str]] | None = None,
                 rcpt_rule: Callable[[str], str | None] | None = None,
                 hard_bounce: set[str] | frozenset[str] = frozenset(),
                 data_replies: dict[str, list[str]] | None = None,
                 mail_reply: str | None = None, rcpt_reply: str | None = None, data_reply: str | None = None,
                 drop_after: int | None = None, tls_context: ssl.SSLContext | None = None,
                 users: dict[str, str] | None = None) -> None:
        self.host = host
        self.port = port
        self.pipelining = pipelining
        self.dsn = dsn
        hard = set(hard_bounce)

        def rcpt_script(address: str) -> str | None:
            if address in hard:
                return HARD_BOUNCE.format(address=address)
            return rcpt_rule(address) if rcpt_rule is not None else None

        self._rcpt = _Replies(dict(rcpt_replies or {}), rcpt_script, rcpt_reply)
        self._data = _Replies(dict(data_replies or {}), None, data_reply)
        self.mail_reply = mail_reply
        self.drop_after = drop_after          # per connection: accept this many, then drop at the next dot
        self.tls_context = tls_context
        self.users = users
        self.messages: list[Received] = []
        self.connections = 0
        self.pipelined_mail = 0               # MAIL commands that arrived with later commands behind them
        self.dropped = 0                      # messages whose data arrived but the connection was dropped
        self._server: asyncio.Server | None = None
        self._open: set[_ScriptedSMTP] = set()

    async def __aenter__(self) -> SmtpTestServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Listen on host:port (port 0 picks a free one, stored back in `port`)."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._protocol, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening and drop open connections."""
        if self._server is not None:
            self._server.close()
            for protocol in list(self._open):
                if protocol.transport is not None:
                    protocol.transport.abort()
            await self._server.wait_closed()
            self._server = None
            await asyncio.sleep(0)  # let aborted connections run their connection_lost

    def _protocol(self) -> _ScriptedSMTP:
        kwargs: dict = {"hostname": "smtp.test", "tls_context": self.tls_context}
        if self.users is not None:
            kwargs.update(authenticator=self._authenticate, auth_require_tls=False)
        return _ScriptedSMTP(self, **kwargs)

    def _authenticate(self, server, session, envelope, mechanism, auth_data) -> AuthResult:
        ok = (isinstance(auth_data, LoginPassword) and self.users is not None
              and self.users.get(auth_data.login.decode()) == auth_data.password.decode())
        return AuthResult(success=ok, handled=False)

    # aiosmtpd handler hooks

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        return advertise(responses, pipelining=self.pipelining, dsn=self.dsn)

    async def handle_MAIL(self, server: _ScriptedSMTP, session, envelope, address, mail_options):
        self.pipelined_mail += server.client_pipelined()
        if self.mail_reply is not None:
            return self.mail_reply
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 Ok"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        reply = self._rcpt.next(address)
        if reply is not None and not reply.startswith("2"):
            return reply
        envelope.rcpt_tos.append(address)
        return reply or "250 2.1.5 Ok"

    async def handle_DATA(self, server: _ScriptedSMTP, session, envelope):
        if self.drop_after is not None and server.accepted_here >= self.drop_after:
            self.dropped += 1
            server.transport.abort()
            return "421 4.4.2 dropped by the test script"  # never reaches the client
        reply = None
        for address in envelope.rcpt_tos:
            reply = self._data.next(address) or reply
        if reply is not None and not reply.startswith("2"):
            return reply
        raw = bytes(envelope.original_content)
        server.accepted_here += 1
        self.messages.append(Received(
            mail_from=envelope.mail_from, rcpt_tos=list(envelope.rcpt_tos), data=raw,
            headers=BytesHeaderParser().parsebytes(raw), mail_params=server.mail_params,
            connection=server.connection_number))
        return reply or f"250 2.0.0 Ok: queued as Q{len(self.messages)}"
