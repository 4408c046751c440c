"""Faults between the engine and its PowerMTA stand-in: a TCP front that lies about being SMTP, or goes away.

`Front` listens on its own port and, per connection, either answers like something that is not an SMTP
server (an HTTP error page, say) or relays the bytes to the real test server behind it. `down()` stops
listening and cuts every relayed connection, `up()` listens again on the same port: PowerMTA restarting.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from pathlib import Path

NOT_SMTP = b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/html\r\nContent-Length: 11\r\n\r\nBad Request"
ROOT = Path(__file__).resolve().parent.parent


class Front:
    """A listener in front of 127.0.0.1:`target_port`; its first `not_smtp` connections get `greeting`."""

    def __init__(self, target_port: int, *, not_smtp: int = 0, greeting: bytes = NOT_SMTP) -> None:
        self.target_port = target_port
        self.not_smtp = not_smtp
        self.greeting = greeting
        self.port = 0
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()

    async def __aenter__(self) -> Front:
        await self.up()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.down()

    async def up(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def down(self) -> None:
        """Refuse new connections and cut the open ones, as a stopped PowerMTA would."""
        if self._server is not None:
            self._server.close()
            for writer in list(self._open):
                writer.transport.abort()
            await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._open.add(writer)
        try:
            if self.connections <= self.not_smtp:
                writer.write(self.greeting)
                await writer.drain()
                await asyncio.sleep(0.05)
                return
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
            self._open.add(up_writer)
            try:
                await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
            finally:
                self._open.discard(up_writer)
                up_writer.transport.abort()
        except OSError:
            pass
        finally:
            self._open.discard(writer)
            writer.transport.abort()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.transport.abort()


def worker_env(settings, *, pmta_port: int, home: Path, redis_url: str | None = None,
               worker_timeout: int = 10) -> dict[str, str]:
    """The environment of an `email-engine worker` process sending into the test's SMTP server."""
    from tests.conftest import ADMIN_KEY, SECRET_KEY

    return {**os.environ,
            "EMAIL_ENGINE_DATABASE_URL": settings.database_url,
            "EMAIL_ENGINE_REDIS_URL": redis_url or settings.redis_url,
            "EMAIL_ENGINE_REDIS_NAMESPACE": settings.redis_namespace, "EMAIL_ENGINE_HOME": str(home),
            "EMAIL_ENGINE_ADMIN_KEY": ADMIN_KEY, "EMAIL_ENGINE_SECRET_KEY": SECRET_KEY,
            "EMAIL_ENGINE_PUBLIC_URL": settings.public_url, "EMAIL_ENGINE_LOG_LEVEL": "WARNING",
            "EMAIL_ENGINE_PMTA_HOST": "127.0.0.1", "EMAIL_ENGINE_PMTA_PORT": str(pmta_port),
            "EMAIL_ENGINE_PMTA_POOL_SIZE": "4", "EMAIL_ENGINE_WORKER_TIMEOUT": str(worker_timeout)}


def _start(env: dict[str, str], log: Path) -> subprocess.Popen:
    with log.open("wb") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen([sys.executable, "-m", "api.cli", "worker"], env=env, cwd=ROOT, stdout=out,
                                stderr=subprocess.STDOUT)


@contextlib.asynccontextmanager
async def worker_processes(n: int, env: dict[str, str], log_dir: Path):
    """`n` worker processes (`python -m api.cli worker`, output in log_dir), terminated on exit."""
    procs: list[subprocess.Popen] = []
    try:
        for i in range(n):
            procs.append(await asyncio.to_thread(_start, env, log_dir / f"worker-{i}.log"))
        yield procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                await asyncio.to_thread(proc.wait, 20)
            except subprocess.TimeoutExpired:
                proc.kill()
                await asyncio.to_thread(proc.wait)
