"""The load test: 50 locust clients ingesting, listing and reading against `email-engine up`, twice.

The first run is steady; in the second a worker is SIGKILLed a third of the way in and `up` restarts it.
Each run prints p50/p99 latency and the error rate per operation, and checks that every contact the API
accepted is in the database afterwards (none lost to the kill). Uses its own state directory with the
embedded PostgreSQL and Redis (or EMAIL_ENGINE_DATABASE_URL / EMAIL_ENGINE_REDIS_URL when set, which must
then point at stores of its own: the seed is loaded there).

    .venv/bin/pip install -e '.[reliability]'   # locust
    .venv/bin/python loadtest/run.py [--users 50] [--seconds 60] [--workers 2]
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
ADMIN_KEY = "ee_loadtest-admin-key-0123456789abcdef"
DEADLINE = 120.0  # seconds `up` may take to be ready, or a killed worker to be replaced, on a loaded machine


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def children_of(pid: int) -> dict[int, str]:
    """Live child processes of `pid` with their command lines."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found[int(entry.name)] = cmdline
    return found


def workers(up: subprocess.Popen) -> set[int]:
    return {pid for pid, cmd in children_of(up.pid).items() if cmd.endswith("api.cli worker")}


def until(condition, what: str):
    started = time.monotonic()
    while time.monotonic() - started < DEADLINE:
        if value := condition():
            return value
        time.sleep(0.2)
    raise RuntimeError(f"timed out waiting for {what}")


def start_up(home: Path, port: int, n_workers: int) -> subprocess.Popen:
    env = {**os.environ, "EMAIL_ENGINE_HOME": str(home), "EMAIL_ENGINE_HTTP_PORT": str(port),
           "EMAIL_ENGINE_ADMIN_KEY": ADMIN_KEY, "EMAIL_ENGINE_LOG_LEVEL": "WARNING"}
    env.pop("EMAIL_ENGINE_PMTA_HOST", None)
    log = (home / "up.log").open("wb")
    return subprocess.Popen([sys.executable, "-m", "api.cli", "up", "--workers", str(n_workers)], env=env,
                            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def ready(base: str, up: subprocess.Popen) -> bool:
    if up.poll() is not None:
        raise RuntimeError("email-engine up exited; see up.log in its state directory")
    try:
        return httpx.get(f"{base}/ready", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def counted(base: str, key: str, tag: str) -> int:
    """Contacts of tenant 1 carrying the run's tag, whatever their validation status."""
    r = httpx.post(f"{base}/api/v2/campaigns/audience-preview", headers={"Authorization": f"Bearer {key}"},
                   json={"tenant_id": 1, "audience": {"tags": [tag], "statuses": [
                       "pending", "valid", "risky", "invalid"]}}, timeout=60)
    r.raise_for_status()
    return r.json()["count"]


def locust(base: str, key: str, tag: str, users: int, seconds: int, out: Path, kill=None) -> dict:
    """One headless run; `kill` is called a third of the way in. Returns the stats per operation."""
    accepted = out.with_suffix(".accepted")
    env = {**os.environ, "EE_KEY": key, "EE_TENANT": "1", "EE_TAG": tag, "EE_ACCEPTED": str(accepted)}
    run = subprocess.Popen([sys.executable, "-m", "locust", "-f", str(ROOT / "loadtest" / "locustfile.py"),
                            "--headless", "-u", str(users), "-r", str(users), "-t", f"{seconds}s",
                            "--host", base, "--csv", str(out), "--only-summary", "--stop-timeout", "10",
                            "--loglevel", "WARNING"], env=env, cwd=ROOT,
                           stdout=out.with_suffix(".log").open("wb"), stderr=subprocess.STDOUT)
    event = None
    if kill is not None:
        time.sleep(seconds / 3)
        event = kill()
    run.wait(timeout=seconds + DEADLINE)
    if not Path(f"{out}_stats.csv").exists():
        raise SystemExit(f"locust wrote no figures (exit {run.returncode}): see {out.with_suffix('.log')}")
    rows = {}
    with open(f"{out}_stats.csv", newline="") as f:
        for row in csv.DictReader(f):
            rows[row["Name"]] = {"requests": int(row["Request Count"]), "failures": int(row["Failure Count"]),
                                 "p50": row["50%"], "p99": row["99%"], "rps": float(row["Requests/s"])}
    return {"ops": rows, "accepted": int(accepted.read_text()) if accepted.exists() else 0, "event": event}


def report(title: str, result: dict, in_db: int) -> None:
    print(f"\n{title}")
    print("| operation | requests | req/s | p50 ms | p99 ms | errors |\n|---|---:|---:|---:|---:|---:|")
    for name, s in result["ops"].items():
        rate = 100 * s["failures"] / max(s["requests"], 1)
        print(f"| {name} | {s['requests']:,} | {s['rps']:.1f} | {s['p50']} | {s['p99']} | {rate:.2f}% |")
    lost = result["accepted"] - in_db
    print(f"contacts accepted {result['accepted']:,}, in the database {in_db:,}, lost {max(lost, 0):,}")
    if result["event"]:
        print(result["event"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--workers", type=int, default=2)
    if importlib.util.find_spec("locust") is None:
        raise SystemExit("locust is not installed: .venv/bin/pip install -e '.[reliability]'")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ee-loadtest-") as d:
        home = Path(d)
        os.chmod(home, 0o755)  # the embedded PostgreSQL runs as its own system user when started by root
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        up = start_up(home, port, args.workers)
        try:
            until(lambda: ready(base, up), "email-engine up to be ready")
            until(lambda: len(workers(up)) == args.workers, "the workers")
            r = httpx.post(f"{base}/api/v2/tenants/1/api-keys", json={"name": "loadtest"},
                           headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=60)
            r.raise_for_status()
            key = r.json()["key"]
            failed = False
            for title, tag, kill in (("steady", "lt-steady", None), ("worker SIGKILLed", "lt-kill", "kill")):
                def kill_one() -> str:
                    before = workers(up)
                    victim = min(before)
                    os.kill(victim, signal.SIGKILL)
                    started = time.monotonic()
                    replaced = until(lambda: (now := workers(up)) and len(now) == args.workers
                                     and victim not in now and now, "the killed worker to be replaced")
                    return (f"worker {victim} SIGKILLed at {args.seconds // 3} s; replaced by "
                            f"{sorted(replaced - before)} {time.monotonic() - started:.1f} s later")

                result = locust(base, key, tag, args.users, args.seconds, home / tag,
                                kill_one if kill else None)
                in_db = counted(base, key, tag)
                report(f"{title}: {args.users} clients, {args.seconds} s, {args.workers} workers", result, in_db)
                failed |= in_db < result["accepted"]
            return 1 if failed else 0
        finally:
            up.send_signal(signal.SIGINT)
            try:
                up.wait(timeout=DEADLINE)
            except subprocess.TimeoutExpired:
                os.killpg(up.pid, signal.SIGKILL)
                up.wait()


if __name__ == "__main__":
    sys.exit(main())
