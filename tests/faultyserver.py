"""A listener that misbehaves on its first connections and then relays to a healthy SmtpTestServer.

    fault = Fault("rcpt", b"421 4.3.2 going away\\r\\n", then="close")
    async with SmtpTestServer() as backend, FaultyListener(backend, fault, faulty=2) as listener:
        injector = Injector(listener.host, listener.port, ...)

The first `faulty` connections talk to a small hand-written SMTP server that speaks normally (PIPELINING,
STARTTLS when asked) up to the step named in the fault, answers that step with the fault's raw bytes, then
closes or goes silent. Later connections are relayed byte for byte to the backend, so a test can count what
was accepted over both: `listener.accepted` (by the hand-written server) plus the backend's messages.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

# Steps a fault can replace: the server's greeting, its reply to EHLO / STARTTLS / MAIL / RCPT / DATA /
# RSET / NOOP, the middle of the message data ("middata": after its first line), and the reply to the dot.
STEPS = ("greeting", "ehlo", "starttls", "mail", "rcpt", "data", "middata", "dot", "rset", "noop")


@dataclass(frozen=True)
class Fault:
    step: str
    reply: bytes = b""              # written instead of the normal reply (nothing when empty)
    then: str = "close"             # "close" the connection, or "hang": keep it open and never answer again
    after: bytes = b""              # written once the client sends anything more (a TLS ClientHello)

    def __post_init__(self) -> None:
        assert self.step in STEPS and self.then in ("close", "hang"), self


class FaultyListener:
    """Connections 1..faulty run the fault; the others are relayed to `backend`."""

    def __init__(self, backend, fault: Fault, *, faulty: int = 1, starttls: bool = False,
                 pipelining: bool = True, host: str = "127.0.0.1") -> None:
        self.backend = backend
        self.fault = fault
        self.faulty = faulty
        self.starttls = starttls        # advertise STARTTLS (the relayed backend must offer it too)
        self.pipelining = pipelining    # advertise PIPELINING (likewise)
        self.host = host
        self.port = 0
        self.connections = 0
        self.fired = 0                  # how many times the fault was played
        self.accepted: list[str] = []   # recipients the hand-written server answered 250 after the dot
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def __aenter__(self) -> FaultyListener:
        self._server = await asyncio.start_server(self._handle, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        self.connections += 1
        try:
            if self.connections <= self.faulty:
                await self._speak(reader, writer)
            else:
                await self._relay(reader, writer)
        except (OSError, EOFError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.transport.abort()
            self._writers.discard(writer)
            self._tasks.discard(task)

    async def _play(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Play the fault: its bytes, then close (return) or hang until the listener stops."""
        self.fired += 1
        if self.fault.reply:
            writer.write(self.fault.reply)
            await writer.drain()
        if self.fault.after:
            await reader.read(1)
            writer.write(self.fault.after)
            await writer.drain()
        if self.fault.then == "hang":
            await asyncio.Event().wait()

    async def _speak(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """A minimal SMTP server, faithful enough for a pipelining client, that fails at one step."""
        step = self.fault.step
        if step == "greeting":
            return await self._play(reader, writer)
        writer.write(b"220 faulty.test ESMTP\r\n")
        rcpts: list[str] = []
        while line := await reader.readline():
            verb = line[:4].upper()
            if verb in (b"EHLO", b"HELO"):
                if step == "ehlo":
                    return await self._play(reader, writer)
                tls = b"250-STARTTLS\r\n" if self.starttls else b""
                pipelining = b"250-PIPELINING\r\n" if self.pipelining else b""
                writer.write(b"250-faulty.test\r\n" + pipelining + tls + b"250 8BITMIME\r\n")
            elif verb == b"STAR":
                if step == "starttls":
                    return await self._play(reader, writer)
                writer.write(b"454 4.7.0 no TLS here\r\n")
            elif verb == b"MAIL":
                if step == "mail":
                    return await self._play(reader, writer)
                rcpts = []
                writer.write(b"250 2.1.0 Ok\r\n")
            elif verb == b"RCPT":
                if step == "rcpt":
                    return await self._play(reader, writer)
                address = line[8:].strip().strip(b"<>").decode()
                if address.startswith("refuse"):
                    writer.write(b"550 5.1.1 no such user\r\n")
                else:
                    rcpts.append(address)
                    writer.write(b"250 2.1.5 Ok\r\n")
            elif verb == b"DATA":
                if step == "data":
                    return await self._play(reader, writer)
                if not rcpts:
                    writer.write(b"554 5.5.1 no valid recipients\r\n")
                    continue
                writer.write(b"354 go ahead\r\n")
                first = True
                while (data := await reader.readline()) != b".\r\n":
                    if not data:
                        return
                    if first and step == "middata":
                        return await self._play(reader, writer)
                    first = False
                if step == "dot":
                    return await self._play(reader, writer)
                self.accepted.extend(rcpts)
                writer.write(b"250 2.0.0 Ok: queued as F%d\r\n" % len(self.accepted))
            elif verb == b"RSET":
                if step == "rset":
                    return await self._play(reader, writer)
                rcpts = []
                writer.write(b"250 2.0.0 Ok\r\n")
            elif verb == b"NOOP":
                if step == "noop":
                    return await self._play(reader, writer)
                writer.write(b"250 2.0.0 Ok\r\n")
            elif verb == b"QUIT":
                writer.write(b"221 2.0.0 Bye\r\n")
                return
            else:
                writer.write(b"500 5.5.2 what?\r\n")

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Pass bytes both ways between the client and the backend until either side closes."""
        up_reader, up_writer = await asyncio.open_connection(self.backend.host, self.backend.port)
        self._writers.add(up_writer)

        async def pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, EOFError):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            sink.transport.abort()

        try:
            await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))
        finally:
            up_writer.transport.abort()
            self._writers.discard(up_writer)
