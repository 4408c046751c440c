"""`email-engine`: the command line, and the composition root that wires API, worker and stores together."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
import sys
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import msgspec

from api import ops_cli, progress_cli
from api.supervisor import ChildSpec, Supervisor
from engine import db as dbm
from engine import embedded, logs, secrets
from engine.settings import Settings, SettingsError, load_settings, public_url_warning

log = logging.getLogger("email-engine")

STANDIN_PORT = 2525

HELP = {
    "up": "Run everything on this machine: the stores (embedded PostgreSQL and Redis unless "
          "EMAIL_ENGINE_DATABASE_URL / EMAIL_ENGINE_REDIS_URL are set), migrations, the seed on first run, the API, "
          "arq workers in their own processes (--workers N, default one per core; restarted if one dies) and, "
          "unless EMAIL_ENGINE_PMTA_HOST is set, a local SMTP server standing in for PowerMTA that keeps every "
          "message under the state directory. Ctrl-C stops it all.",
    "serve": "Run the HTTP API only (the stores must be reachable; migrations are applied first).",
    "worker": "Run an arq worker only: background jobs (validation, imports, sending) and the daily warmup cron.",
    "migrate": "Apply pending schema migrations and exit. Safe to run from several processes at once.",
    "seed": "Create the seed's tenants, IPs, domains, tags, data sources and starter templates. Idempotent.",
}


class Runtime(msgspec.Struct, kw_only=True):
    """What a command runs with: settings whose store URLs are resolved, and the keys."""

    settings: Settings
    admin_key: str
    secret_key: str
    admin_key_created: bool = False


@contextlib.contextmanager
def stores(settings: Settings) -> Iterator[Settings]:
    """Settings with both store URLs set, starting embedded servers for the missing ones."""
    if settings.database_url and settings.redis_url:
        yield settings
        return
    started = embedded.start(settings.home, database_url=settings.database_url, redis_url=settings.redis_url)
    try:
        yield msgspec.structs.replace(settings, database_url=started.database_url, redis_url=started.redis_url)
    finally:
        started.stop()
        log.info("embedded stores stopped")


def runtime(settings: Settings) -> Runtime:
    """Read (or create once, mode 0600) the admin and secret keys kept in the state directory."""
    created = False
    admin = settings.admin_key
    if admin is None:
        admin, created = secrets.load_or_create(settings.home / "admin_key", generate=secrets.new_api_key)
    secret = settings.secret_key or secrets.load_or_create(settings.home / "secret_key")[0]
    return Runtime(settings=settings, admin_key=admin, secret_key=secret, admin_key_created=created)


async def migrate_and_seed(settings: Settings, *, seed_if_empty: bool) -> None:
    from engine.seed import seed

    applied = await dbm.migrate(settings.database_url)
    if applied:
        log.info("schema migrated: %s", ", ".join(f"{v:04d}" for v in applied))
    if seed_if_empty:
        conn = await dbm.connect(settings.database_url)
        try:
            if not await conn.fetchval("SELECT EXISTS (SELECT 1 FROM tenants)"):
                ids = await seed(conn)
                log.info("seeded tenants %s", ids)
        finally:
            await conn.close()


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
            return True
        except OSError:
            return False


class _Server:
    """uvicorn without its own signal handling: the command decides when everything stops."""

    def __init__(self, app, settings: Settings) -> None:
        import uvicorn

        class Quiet(uvicorn.Server):
            @contextlib.contextmanager
            def capture_signals(self):
                yield

        config = uvicorn.Config(app, host=settings.http_host, port=settings.http_port, log_level="warning",
                                loop="none", lifespan="on", access_log=False)
        self.server = Quiet(config)

    async def run(self) -> None:
        await self.server.serve()

    def stop(self) -> None:
        self.server.should_exit = True


async def _until_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


def _free_standin_port() -> int:
    if _port_free("127.0.0.1", STANDIN_PORT):
        return STANDIN_PORT
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _StandInAt(msgspec.Struct, frozen=True):
    """Where the stand-in that runs as `up`'s child listens and keeps mail."""

    port: int
    directory: Path


def _children(settings: Settings, *, workers: int, standin: bool) -> tuple[list[ChildSpec], _StandInAt | None]:
    """`up`'s child processes: N workers (and the stand-in), sharing the stores this process resolved."""
    env = {**os.environ, "EMAIL_ENGINE_DATABASE_URL": settings.database_url,
           "EMAIL_ENGINE_REDIS_URL": settings.redis_url, "EMAIL_ENGINE_HOME": str(settings.home.resolve())}
    specs: list[ChildSpec] = []
    stand = None
    if standin:
        stand = _StandInAt(_free_standin_port(), (settings.home / "outbox").resolve())
        specs.append(ChildSpec(name="pmta-standin", env=env, argv=(
            sys.executable, "-m", "pmta.standin", str(stand.directory), "--port", str(stand.port))))
        env = {**env, "EMAIL_ENGINE_PMTA_HOST": "127.0.0.1", "EMAIL_ENGINE_PMTA_PORT": str(stand.port)}
    specs += [ChildSpec(name=f"worker-{i}", env={**env, **_worker_metrics_env(settings, i)},
                        argv=(sys.executable, "-m", "api.cli", "worker"))
              for i in range(1, workers + 1)]
    return specs, stand


def _worker_metrics_env(settings: Settings, i: int) -> dict[str, str]:
    """Worker i's own metrics port: EMAIL_ENGINE_WORKER_METRICS_PORT + i - 1 (none when it is unset)."""
    if settings.worker_metrics_port is None:
        return {}
    return {"EMAIL_ENGINE_WORKER_METRICS_PORT": str(settings.worker_metrics_port + i - 1)}


async def _run(rt: Runtime, *, api: bool, worker: bool, standin: bool, children: Sequence[ChildSpec] = (),
               stand: _StandInAt | None = None) -> None:
    from pmta.standin import StandIn, start_standin
    from workers.main import create_worker

    settings = rt.settings
    tasks: list[asyncio.Task] = []
    supervisor = Supervisor(children) if children else None
    if stand is not None:
        settings = msgspec.structs.replace(settings, pmta_host="127.0.0.1", pmta_port=stand.port)
    if standin:
        port = STANDIN_PORT if _port_free("127.0.0.1", STANDIN_PORT) else 0
        stand = await start_standin(settings.home / "outbox", host="127.0.0.1", port=port)
        settings = msgspec.structs.replace(settings, pmta_host="127.0.0.1", pmta_port=stand.port)
    server = None
    if api:  # imported only here: a worker process has no use for the web framework's memory
        from api.app import create_app

        server = _Server(create_app(settings, admin_key=rt.admin_key, secret_key=rt.secret_key), settings)
    arq_worker = create_worker(settings, secret_key=rt.secret_key, handle_signals=False) if worker else None
    # What is imported and built by now lives as long as the process: frozen, the full collections that a
    # sending loop's allocations trigger no longer walk it.
    gc.collect()
    gc.freeze()
    try:
        if supervisor:
            await supervisor.start()
        if server:
            tasks.append(asyncio.create_task(server.run(), name="api"))
        if arq_worker:
            tasks.append(asyncio.create_task(arq_worker.async_run(), name="worker"))
        if server:
            _announce(rt, settings, stand)
        waiter = asyncio.create_task(_until_signal())
        done, _ = await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task is not waiter and task.exception():
                raise task.exception()
    finally:
        log.info("stopping")
        if server:
            server.stop()
        if arq_worker:
            await arq_worker.close()
        if supervisor:
            await supervisor.stop()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(task, 10)
        if isinstance(stand, StandIn):
            await stand.stop()


def _announce(rt: Runtime, settings: Settings, stand) -> None:
    base = f"http://{settings.http_host}:{settings.http_port}"
    lines = [
        f"email-engine is up: API {base}/api/v2  ready probe {base}/ready",
        f"  OpenAPI docs: {base}/schema/swagger  {base}/schema/redoc  {base}/schema/scalar  ({base}/schema/openapi.json)",
        f"  dashboard: {base}/dashboard",
    ]
    if rt.settings.admin_key:
        lines.append("  admin key: from EMAIL_ENGINE_ADMIN_KEY")
    else:
        lines.append(f"  admin key: {settings.home.resolve() / 'admin_key'}")
        if rt.admin_key_created:
            lines.append(f"  new admin key (shown once): {rt.admin_key}")
    if stand:
        lines.append(f"  PowerMTA stand-in: smtp://127.0.0.1:{stand.port}, messages kept in {stand.directory}")
    elif settings.pmta_host is not None:
        lines.append(f"  PowerMTA: smtp://{settings.pmta_host}:{settings.pmta_port}")
    lines.append("  Ctrl-C stops everything.")
    print("\n".join(lines), flush=True)
    warning = public_url_warning(settings)
    if warning:
        log.warning(warning)   # a log line: plain or JSON as the logs are


def _setup_logging(settings: Settings) -> None:
    logs.configure(settings.log_level, settings.log_format)
    logging.getLogger("arq").setLevel(max(logging.WARNING, logging.getLevelName(settings.log_level)))
    # pgserver narrates initdb and pg_ctl at INFO; one line from engine.embedded says the same.
    logging.getLogger("pgserver").setLevel(logging.WARNING)
    # The PowerMTA stand-in (aiosmtpd) logs every SMTP command at INFO; the outbox already keeps each message.
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", module="platformdirs")


def _event_loop() -> None:
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def cmd_up(settings: Settings, workers: int | None = None) -> None:
    settings.home.mkdir(parents=True, exist_ok=True)
    workers = (os.cpu_count() or 1) if workers is None else workers
    with stores(settings) as resolved:
        rt = runtime(resolved)
        asyncio.run(migrate_and_seed(resolved, seed_if_empty=True))
        standin = resolved.pmta_host is None
        if workers == 0:  # everything in this one process, for a machine short of memory
            asyncio.run(_run(rt, api=True, worker=True, standin=standin))
            return
        children, stand = _children(resolved, workers=workers, standin=standin)
        asyncio.run(_run(rt, api=True, worker=False, standin=False, children=children, stand=stand))


def cmd_serve(settings: Settings) -> None:
    with stores(settings) as resolved:
        asyncio.run(migrate_and_seed(resolved, seed_if_empty=False))
        asyncio.run(_run(runtime(resolved), api=True, worker=False, standin=False))


def cmd_worker(settings: Settings) -> None:
    from engine.metrics import worker_server

    with stores(settings) as resolved, worker_server(settings.worker_metrics_port, settings.http_host):
        asyncio.run(_run(runtime(resolved), api=False, worker=True, standin=False))


def cmd_migrate(settings: Settings) -> None:
    with stores(settings) as resolved:
        applied = asyncio.run(dbm.migrate(resolved.database_url))
        print(f"applied {len(applied)} migration(s)" + (f": {', '.join(map(str, applied))}" if applied else ""))


def cmd_seed(settings: Settings) -> None:
    from engine.seed import seed

    async def go(url: str) -> list[int]:
        await dbm.migrate(url)
        conn = await dbm.connect(url)
        try:
            return await seed(conn)
        finally:
            await conn.close()

    with stores(settings) as resolved:
        print(f"seeded tenants {asyncio.run(go(resolved.database_url))}")


COMMANDS = {"up": cmd_up, "serve": cmd_serve, "worker": cmd_worker, "migrate": cmd_migrate, "seed": cmd_seed}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="email-engine",
        description="Multi-tenant cold-email engine. Configuration comes from EMAIL_ENGINE_* environment "
                    "variables (see README).",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, text in HELP.items():
        sub.add_parser(name, help=text.split(". ")[0] + ".", description=text)
    sub.choices["up"].add_argument(
        "--workers", type=_worker_count, default=None, metavar="N",
        help="worker processes (default: one per core; 0 runs the worker inside the API's process)")
    ops_cli.add_commands(sub)
    progress_cli.add_commands(sub)
    return p


def _worker_count(text: str) -> int:
    if not text.isdigit() or int(text) > 256:
        raise argparse.ArgumentTypeError("expected a whole number from 0 to 256")
    return int(text)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"email-engine: {exc}", file=sys.stderr)
        return 2
    _setup_logging(settings)
    _event_loop()
    if args.command in ops_cli.COMMANDS:
        return ops_cli.run(args, settings)
    if args.command in progress_cli.COMMANDS:
        return progress_cli.run(args, settings)
    try:
        if args.command == "up":
            cmd_up(settings, args.workers)
        else:
            COMMANDS[args.command](settings)
    except embedded.EmbeddedError as exc:
        print(f"email-engine: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
