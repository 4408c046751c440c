"""`email-engine up --workers 2`: workers in their own processes, restarted when killed, all gone after Ctrl-C."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
from arq.connections import ArqRedis
from redis.asyncio import ConnectionPool

from tests.conftest import ADMIN_KEY, SECRET_KEY

ROOT = Path(__file__).resolve().parent.parent
DEADLINE = 60.0  # seconds any one step may take on a loaded machine before the test gives up


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def children_of(pid: int) -> dict[int, str]:
    """Live child processes of `pid` with their command lines (zombies left out)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            found[int(entry.name)] = cmdline
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


async def until(condition, what: str):
    """Poll `condition` until it returns something truthy; fail naming `what` after DEADLINE."""
    loop = asyncio.get_running_loop()
    end = loop.time() + DEADLINE
    while loop.time() < end:
        value = await condition()
        if value:
            return value
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


async def test_up_with_two_workers_restarts_a_killed_one_and_stops_cleanly(database_url, redis_url, namespace,
                                                                         tmp_path) -> None:
    port = free_port()
    env = {**os.environ, "EMAIL_ENGINE_DATABASE_URL": database_url, "EMAIL_ENGINE_REDIS_URL": redis_url,
           "EMAIL_ENGINE_REDIS_NAMESPACE": namespace, "EMAIL_ENGINE_HOME": str(tmp_path),
           "EMAIL_ENGINE_ADMIN_KEY": ADMIN_KEY, "EMAIL_ENGINE_SECRET_KEY": SECRET_KEY,
           "EMAIL_ENGINE_HTTP_PORT": str(port), "EMAIL_ENGINE_LOG_LEVEL": "WARNING"}
    env.pop("EMAIL_ENGINE_PMTA_HOST", None)
    up = subprocess.Popen([sys.executable, "-m", "api.cli", "up", "--workers", "2"], env=env, cwd=ROOT,  # noqa: ASYNC220
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    seen: set[int] = set()
    arq = ArqRedis(ConnectionPool.from_url(redis_url), default_queue_name=f"{namespace}:queue")
    try:
        async def ready():
            assert up.poll() is None, up.stdout.read().decode()
            try:
                async with httpx.AsyncClient() as c:
                    return (await c.get(f"http://127.0.0.1:{port}/ready", timeout=2)).status_code == 200
            except httpx.TransportError:
                return False

        await until(ready, "the API to answer")

        def workers() -> dict[int, str]:
            return {pid: cmd for pid, cmd in children_of(up.pid).items() if cmd.endswith("api.cli worker")}

        async def two_workers_and_the_standin():
            kids = children_of(up.pid)
            ok = len(workers()) == 2 and any("pmta.standin" in cmd for cmd in kids.values())
            return kids if ok else None

        first = await until(two_workers_and_the_standin, "two workers and the stand-in")
        seen |= set(first)
        # the workers consume the queue: a job comes back done
        job = await arq.enqueue_job("ping", _queue_name=f"{namespace}:queue")
        assert await job.result(timeout=DEADLINE) == "pong"

        victim = next(iter(workers()))
        os.kill(victim, signal.SIGKILL)

        async def replaced():
            now = workers()
            return len(now) == 2 and victim not in now and now

        seen |= set(await until(replaced, "the killed worker to be replaced"))
        assert up.poll() is None  # the API kept running through it

        up.send_signal(signal.SIGINT)  # what Ctrl-C sends
        assert await asyncio.to_thread(up.wait, DEADLINE) == 0
        assert [pid for pid in seen if alive(pid)] == []
    finally:
        await arq.aclose()
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGKILL)
            up.wait()
        for pid in seen:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
