"""`email-engine up --workers 2` with EMAIL_ENGINE_WORKER_METRICS_PORT: each worker serves its own metrics on
port + N - 1, the API its /metrics, and with EMAIL_ENGINE_LOG_FORMAT=json every line is one JSON object."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys

import httpx
from arq.connections import ArqRedis
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import ConnectionPool

from tests.conftest import ADMIN_KEY, SECRET_KEY
from tests.test_up import DEADLINE, ROOT, alive, children_of, free_port, until


def two_free_ports() -> int:
    """A port whose next one is free too (the workers' base port)."""
    for _ in range(50):
        base = free_port()
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", base + 1))
                return base
            except OSError:
                continue
    raise AssertionError("no two consecutive free ports")


def samples(text: str, name: str) -> dict[tuple, float]:
    return {tuple(sorted(s.labels.items())): s.value for f in text_string_to_metric_families(text)
            for s in f.samples if s.name == name}


async def test_up_serves_each_workers_metrics_and_logs_json(database_url, redis_url, namespace, tmp_path) -> None:
    port, base = free_port(), two_free_ports()
    env = {**os.environ, "EMAIL_ENGINE_DATABASE_URL": database_url, "EMAIL_ENGINE_REDIS_URL": redis_url,
           "EMAIL_ENGINE_REDIS_NAMESPACE": namespace, "EMAIL_ENGINE_HOME": str(tmp_path),
           "EMAIL_ENGINE_ADMIN_KEY": ADMIN_KEY, "EMAIL_ENGINE_SECRET_KEY": SECRET_KEY,
           "EMAIL_ENGINE_HTTP_PORT": str(port), "EMAIL_ENGINE_LOG_LEVEL": "INFO",
           "EMAIL_ENGINE_LOG_FORMAT": "json", "EMAIL_ENGINE_WORKER_METRICS_PORT": str(base)}
    env.pop("EMAIL_ENGINE_PMTA_HOST", None)
    log = (tmp_path / "up.log").open("wb")
    up = subprocess.Popen([sys.executable, "-m", "api.cli", "up", "--workers", "2"], env=env, cwd=ROOT,  # noqa: ASYNC220
                          stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    arq = ArqRedis(ConnectionPool.from_url(redis_url), default_queue_name=f"{namespace}:queue")
    seen: set[int] = set()
    try:
        async with httpx.AsyncClient(timeout=5) as http:
            async def answers(url: str, **kw):
                assert up.poll() is None, (tmp_path / "up.log").read_text()
                try:
                    r = await http.get(url, **kw)
                except httpx.TransportError:
                    return None
                return r if r.status_code == 200 else None

            await until(lambda: answers(f"http://127.0.0.1:{port}/ready"), "the API")
            seen |= set(children_of(up.pid))
            for _ in range(4):  # jobs spread over both workers; each counts its own
                job = await arq.enqueue_job("ping", _queue_name=f"{namespace}:queue")
                assert await job.result(timeout=DEADLINE) == "pong"
            pings = 0.0
            for n in (0, 1):
                r = await until(lambda n=n: answers(f"http://127.0.0.1:{base + n}/metrics"), f"worker {n + 1}")
                pings += samples(r.text, "email_engine_jobs_total").get((("job", "ping"), ("outcome", "ok")), 0)
            assert pings == 4
            api = await http.get(f"http://127.0.0.1:{port}/metrics", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
            assert api.status_code == 200 and samples(api.text, "email_engine_tenant_info")
        up.send_signal(signal.SIGINT)
        assert await asyncio.to_thread(up.wait, DEADLINE) == 0
    finally:
        await arq.aclose()
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGKILL)
            up.wait()
        for pid in seen:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        log.close()
    lines = [line for line in (tmp_path / "up.log").read_text().splitlines() if line.strip()]
    parsed = [json.loads(line) for line in lines if line.startswith("{")]
    # `up`'s own announcement is printed for people; every log line is JSON
    assert parsed and all(set(p) >= {"time", "level", "logger", "message"} for p in parsed)
    assert [line for line in lines if not line.startswith(("{", "email-engine is up", "  "))] == []
    assert any(p["logger"] == "api.requests" and "getMetrics 200" in p["message"] and p.get("request_id")
               for p in parsed)
