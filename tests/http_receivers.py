"""Local HTTP servers the notification tests deliver to: a Telegram Bot API (`/bot<token>/sendMessage`, as the
Bot API documents it) and a webhook receiver that verifies every signature the way an integrator would.

A small asyncio HTTP/1.1 server (one request per connection) is enough for both; `stop()` closes the listening
socket, so a receiver that is "down" refuses connections like a real one, and `start()` brings it back on the
same port.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from engine.data_sources import verify_signature
from engine.errors import Unauthorized

Handler = Callable[[str, str, dict[str, str], bytes], Awaitable[tuple[int, bytes]]]
READ_TIMEOUT = 5.0


class HttpServer:
    """Serves from its own thread and event loop: the API test client blocks the tests' loop while a request
    runs, and a request may call out to this server (the test alert endpoint)."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.port = 0
        self._server: asyncio.Server | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _in_thread(self, coro: Awaitable[Any]) -> Any:
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self._loop))

    async def start(self) -> HttpServer:
        async def listen() -> None:
            self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port, reuse_address=True)
            self.port = self._server.sockets[0].getsockname()[1]

        await self._in_thread(listen())
        return self

    async def stop(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()
                await self._server.wait_closed()
                self._server = None

        await self._in_thread(close())

    async def shutdown(self) -> None:
        await self.stop()
        self._loop.call_soon_threadsafe(self._loop.stop)
        await asyncio.to_thread(self._thread.join, 5)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(READ_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:] if x)}
                body = await reader.readexactly(int(headers.get("content-length", "0")))
            status, reply = await self.handler(method, path, headers, body)
            writer.write(f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {len(reply)}\r\n"
                         f"Connection: close\r\n\r\n".encode() + reply)
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, ValueError, ConnectionError):
            pass
        finally:
            writer.close()


class BotApi:
    """Telegram's Bot API for one bot: sendMessage with a JSON body; 401 for another token, as Telegram does."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.messages: list[dict[str, Any]] = []
        self.refused: list[str] = []
        self.server = HttpServer(self._handle)

    async def _handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
        if method != "POST" or path != f"/bot{self.token}/sendMessage":
            self.refused.append(path)
            return 401, b'{"ok":false,"error_code":401,"description":"Unauthorized"}'
        payload = json.loads(body)
        if not payload.get("chat_id") or not payload.get("text"):
            return 400, b'{"ok":false,"error_code":400,"description":"Bad Request: message text is empty"}'
        self.messages.append(payload)
        result = {"message_id": len(self.messages), "chat": {"id": payload["chat_id"]}, "text": payload["text"]}
        return 200, json.dumps({"ok": True, "result": result}).encode()


class SignedReceiver:
    """An integrator's endpoint: every request's signature is checked; bad ones are answered 401 and counted."""

    def __init__(self, secret: str = "") -> None:
        self.secret = secret
        self.bodies: list[Any] = []
        self.bad_signatures = 0
        self.status = 200              # what a good request is answered (a receiver that errors: 500)
        self.clock: Callable[[], float] = time.time   # the replay window's clock (a test's controllable one)
        self.server = HttpServer(self._handle)

    async def _handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
        try:
            verify_signature(self.secret, headers.get("x-timestamp"), headers.get("x-signature"), body, self.clock())
        except Unauthorized:
            self.bad_signatures += 1
            return 401, b'{"error":"bad signature"}'
        if self.status == 200:
            self.bodies.append(json.loads(body))
        return self.status, b'{"received":true}'

    @property
    def events(self) -> list[dict[str, Any]]:
        return [e for body in self.bodies for e in body.get("events", [])]
