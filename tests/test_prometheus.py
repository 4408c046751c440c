"""A live Prometheus (Debian's package, tests/system-deps.sh) scrapes the engine after a campaign; every PromQL
expression of the Grafana dashboard and of the alert rules evaluates, and promtool accepts the files."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import msgspec
import yaml
from prometheus_client.parser import text_string_to_metric_families

from engine import metrics
from engine.warmup import Thresholds
from tests.campaign_helpers import (
    add_contacts,
    create_and_start,
    mark_valid,
    running_worker,
    use_ips,
    wait_for_status,
)
from tests.conftest import ADMIN_KEY, SECRET_KEY
from tests.smtpserver import SmtpTestServer
from tests.test_campaign_send import FAST

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy/grafana/dashboards/email-engine.json"
RULES = ROOT / "deploy/prometheus/rules.yml"
PROMETHEUS_CONFIG = ROOT / "deploy/prometheus/prometheus.yml"
# What Grafana puts in place of the dashboard's variables before it sends a query.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$tenant": ".*", "$vmta": ".*"}
METRIC = re.compile(r"\b(email_engine_[a-z_]+)\b")
WAIT = 90.0


def tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is missing: tests/system-deps.sh installs Debian's prometheus package"
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def until(check, what: str, within: float = WAIT):
    deadline = time.monotonic() + within
    last = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


def dashboard_expressions() -> list[str]:
    def walk(panels):
        for panel in panels:
            yield from (t["expr"] for t in panel.get("targets", []))
            yield from walk(panel.get("panels", []))

    return list(walk(json.loads(DASHBOARD.read_text())["panels"]))


def rule_expressions() -> dict[str, str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {rule["alert"]: " ".join(rule["expr"].split()) for group in groups for rule in group["rules"]}


def grafana(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    return expr


def exposed_names(text: str) -> set[str]:
    """Every series name the exposition declares, including families that have no sample right now."""
    names = set()
    for family in text_string_to_metric_families(text):
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}.get(family.type, [""])
        names |= {family.name + s for s in suffixes} | {s.name for s in family.samples}
    return names


@contextlib.asynccontextmanager
async def serving(app, port: int) -> AsyncIterator[None]:
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on",
                                           loop="none", access_log=False))
    task = asyncio.create_task(server.serve())
    try:
        await until(lambda: asyncio.sleep(0, server.started), "the API to listen", within=30)
        yield
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 30)


@contextlib.contextmanager
def prometheus(tmp: Path, api_port: int, worker_port: int, port: int):
    (tmp / "admin_key").write_text(ADMIN_KEY)
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [
            {"job_name": "email-engine-api", "metrics_path": "/metrics",
             "authorization": {"type": "Bearer", "credentials_file": str(tmp / "admin_key")},
             "static_configs": [{"targets": [f"127.0.0.1:{api_port}"]}]},
            {"job_name": "email-engine-worker", "static_configs": [{"targets": [f"127.0.0.1:{worker_port}"]}]},
        ],
    }
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    log = (tmp / "prometheus.log").open("wb")
    proc = subprocess.Popen([tool("prometheus"), f"--config.file={tmp / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
                             "--log.level=warn"], stdout=log, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


async def test_a_live_prometheus_scrapes_the_engine_and_evaluates_every_expression(
        client, admin, seeded, db, settings, tmp_path) -> None:
    from api.app import create_app

    await add_contacts(client, admin, 30)
    await mark_valid(db)
    await use_ips(db, 1, [1, 1])
    api_port, worker_port, prom_port = free_port(), free_port(), free_port()
    base = f"http://127.0.0.1:{prom_port}"
    async with SmtpTestServer() as smtp:
        tuned = msgspec.structs.replace(settings, pmta_host=smtp.host, pmta_port=smtp.port, pmta_pool_size=2)
        async with running_worker(tuned, dispatch_tuning=FAST):
            campaign_id = await create_and_start(client, admin)
            await wait_for_status(db, campaign_id, "completed")

    app = create_app(settings, admin_key=ADMIN_KEY, secret_key=SECRET_KEY)
    with metrics.worker_server(worker_port, "127.0.0.1"), prometheus(tmp_path, api_port, worker_port, prom_port):
        async with serving(app, api_port), httpx.AsyncClient(timeout=10) as http:
            text = (await http.get(f"http://127.0.0.1:{api_port}/metrics", headers=admin)).text
            names = exposed_names(text)

            async def ready():
                with contextlib.suppress(httpx.TransportError):
                    return (await http.get(f"{base}/-/ready")).status_code == 200
                return False

            await until(ready, "Prometheus to start")

            async def both_targets_up():
                targets = (await http.get(f"{base}/api/v1/targets")).json()["data"]["activeTargets"]
                health = {t["labels"]["job"]: t["health"] for t in targets}
                return health if health == {"email-engine-api": "up", "email-engine-worker": "up"} else None

            await until(both_targets_up, "both targets scraped")

            async def query(expr: str) -> dict:
                r = await http.get(f"{base}/api/v1/query", params={"query": expr})
                body = r.json()
                assert r.status_code == 200 and body["status"] == "success", (expr, body)
                return body["data"]

            async def injected_scraped():
                data = await query(f'sum(email_engine_messages_injected_total{{campaign="{campaign_id}"}})')
                return data["result"] and float(data["result"][0]["value"][1]) == 30

            await until(injected_scraped, "the campaign's 30 injected messages in Prometheus")
            # the engine pauses a campaign by itself: the alert event's counter goes from 0 to 1
            await db.execute("INSERT INTO alert_events (tenant_id, kind, subject) "
                             "VALUES (1, 'campaign_auto_paused', 'campaign paused')")

            dashboard = dashboard_expressions()
            rules = rule_expressions()
            assert len(dashboard) >= 30 and len(rules) >= 15
            for expr in [*map(grafana, dashboard), *rules.values()]:
                await query(expr)  # asserts the evaluation succeeded
                assert set(METRIC.findall(expr)) <= names, (expr, set(METRIC.findall(expr)) - names)

            async def rules_evaluated():
                groups = (await http.get(f"{base}/api/v1/rules")).json()["data"]["groups"]
                evaluated = [r for g in groups for r in g["rules"] if not g["lastEvaluation"].startswith("0001")]
                return evaluated if len(evaluated) == len(rules) else None

            evaluated = await until(rules_evaluated, "every rule group evaluated")
            assert {r["name"]: r["health"] for r in evaluated} == dict.fromkeys(rules, "ok")
            # the alert event inserted above fires its rule (no `for:`)

            async def auto_paused_firing():
                alerts = (await http.get(f"{base}/api/v1/alerts")).json()["data"]["alerts"]
                return any(a["labels"]["alertname"] == "EmailEngineCampaignAutoPaused" for a in alerts)

            await until(auto_paused_firing, "EmailEngineCampaignAutoPaused to fire")


def test_promtool_accepts_the_rules_and_the_config() -> None:
    rules = subprocess.run([tool("promtool"), "check", "rules", str(RULES)], capture_output=True, text=True)
    assert rules.returncode == 0 and "SUCCESS: 16 rules found" in rules.stdout, rules.stdout + rules.stderr
    # the credentials file exists only in the container (docker-compose writes the admin key there)
    config = subprocess.run([tool("promtool"), "check", "config", "--syntax-only", str(PROMETHEUS_CONFIG)],
                            capture_output=True, text=True)
    assert config.returncode == 0, config.stdout + config.stderr


def test_the_reputation_alerts_fire_past_the_thresholds_and_not_below() -> None:
    unit = subprocess.run([tool("promtool"), "test", "rules", str(RULES.with_name("rules.test.yml"))],
                          capture_output=True, text=True)
    assert unit.returncode == 0 and "SUCCESS" in unit.stdout, unit.stdout + unit.stderr


def test_the_rules_use_the_warmups_thresholds() -> None:
    t = Thresholds()
    rules = rule_expressions()
    assert rules["EmailEngineIpBounceRateHold"].endswith(f"> {t.hold_bounce}")
    assert rules["EmailEngineIpBounceRateStepBack"].endswith(f"> {t.back_bounce}")
    assert rules["EmailEngineIpComplaintRateHold"].endswith(f"> {t.hold_complaint}")
    assert rules["EmailEngineIpComplaintRateStepBack"].endswith(f"> {t.back_complaint}")


def test_the_dashboard_covers_the_fleet_and_is_provisioned() -> None:
    board = json.loads(DASHBOARD.read_text())
    rows = [p["title"] for p in board["panels"] if p["type"] == "row"]
    assert rows == ["Fleet overview", "Per-tenant sending", "Per-IP warmup and health", "Feedback rates",
                    "Queues and jobs"]
    sources = yaml.safe_load((ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text())
    uids = {d["uid"] for d in sources["datasources"]}
    assert {p["datasource"]["uid"] for p in board["panels"] if "datasource" in p} == uids
    provider = yaml.safe_load((ROOT / "deploy/grafana/provisioning/dashboards/email-engine.yml").read_text())
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    mounts = dict(v.split(":")[:2] for v in compose["services"]["grafana"]["volumes"] if v.startswith("./"))
    assert mounts["./deploy/grafana/dashboards"] == provider["providers"][0]["options"]["path"]
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    prom = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    targets = {job["job_name"]: job["static_configs"][0]["targets"] for job in prom["scrape_configs"]}
    assert targets == {"email-engine-api": ["api:8000"],
                       "email-engine-worker": [f"worker:{compose['services']['worker']['environment']['EMAIL_ENGINE_WORKER_METRICS_PORT']}"]}


def test_the_dashboard_uses_only_variables_it_defines() -> None:
    board = json.loads(DASHBOARD.read_text())
    defined = {"$" + v["name"] for v in board["templating"]["list"]} | {"$__rate_interval"}
    used = {m for expr in dashboard_expressions() for m in re.findall(r"\$[_a-z]+", expr)}
    assert used == defined
