"""The Litestar application factory."""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
from arq.connections import ArqRedis
from litestar import Litestar, Request, Router
from litestar.datastructures import State
from litestar.di import Provide
from litestar.logging.config import LoggingConfig
from litestar.middleware.base import DefineMiddleware
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import RedocRenderPlugin, ScalarRenderPlugin, SwaggerRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme
from redis.asyncio import ConnectionPool

from api import (
    alerts,
    audit,
    campaigns,
    contacts,
    data_sources,
    dns,
    domains,
    event_webhooks,
    feedback,
    health,
    identities,
    imports,
    ips,
    mailwizz,
    metrics,
    pmta,
    replies,
    reputation,
    sequences,
    suppressions,
    templates,
    tenants,
    unsubscribe,
    warmup,
)
from api.auth import PUBLIC_PATHS, BearerAuth, principal
from api.dashboard import ROUTER as DASHBOARD
from api.errors import HANDLERS, document_errors
from api.inputs import refuse_hostile_input
from api.openapi import ClosedStructSchemaPlugin, document_links
from api.request_ids import request_id_middleware
from engine import db as dbm
from engine.settings import Settings

log = logging.getLogger(__name__)

# Largest request body: a 10,000-contact batch with custom fields fits comfortably; a CSV upload streams.
MAX_BODY = 32 * 1024 * 1024

DESCRIPTION = """Multi-tenant engine for cold-email campaigns.

Authenticate every call with `Authorization: Bearer <key>`: the admin key acts on every tenant, a tenant's key
only on its own tenant (another tenant's ids answer 404). Errors are JSON: `{status_code, detail, field?, extra?}`.
"""


async def provide_db(state: State, request: Request) -> AsyncGenerator[asyncpg.Connection, None]:
    """A pooled connection inside a transaction: committed when the handler returns, rolled back if it raises.

    A change's audit row is written here, in the same transaction, just before the commit.
    """
    async with state.pool.acquire() as conn, conn.transaction():
        yield conn
        await audit.record_request(conn, request.scope)


def provide_redis(state: State) -> ArqRedis:
    return state.redis


def provide_settings(state: State) -> Settings:
    return state.settings


def controllers() -> Sequence[Any]:
    """Every route of the API; each noun's module exposes `ROUTES`."""
    return [*tenants.ROUTES, *contacts.ROUTES, *data_sources.ROUTES, *imports.ROUTES, *campaigns.ROUTES,
            *suppressions.ROUTES, *templates.ROUTES, *ips.ROUTES, *domains.ROUTES, *warmup.ROUTES,
            *mailwizz.ROUTES, *feedback.ROUTES, *dns.ROUTES,
            *pmta.ROUTES, *audit.ROUTES, *reputation.ROUTES, *sequences.ROUTES, *replies.ROUTES, *alerts.ROUTES,
            *event_webhooks.ROUTES,
            *identities.ROUTES]


def create_app(settings: Settings, *, admin_key: str, secret_key: str, extra_routes: Sequence[Any] = (),
               debug: bool = False) -> Litestar:
    """Build the app; the lifespan owns the PostgreSQL pool, the Redis client and the arq pool."""

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncGenerator[None, None]:
        # Neither store is contacted here: the API starts while one is down and /ready says which.
        app.state.pool = await dbm.create_pool(settings.database_url, min_size=0)
        # One client serves both plain commands and arq's enqueue_job.
        app.state.redis = ArqRedis(ConnectionPool.from_url(settings.redis_url), default_queue_name=settings.queue_name)
        try:
            yield
        finally:
            await app.state.redis.aclose()
            await app.state.pool.close()

    # Only /api/v2 asks for a key; /health, /ready and the unsubscribe pages are public.
    api = Router(path="/api/v2", route_handlers=[*controllers(), *extra_routes], security=[{"bearer": []}])
    app = Litestar(
        route_handlers=[health.health, health.ready, *metrics.ROUTES, *unsubscribe.ROUTES, api, DASHBOARD],
        lifespan=[lifespan],
        state=State({"settings": settings, "admin_key": admin_key, "secret_key": secret_key}),
        dependencies={
            "db": Provide(provide_db),
            "redis": Provide(provide_redis, sync_to_thread=False),
            "settings": Provide(provide_settings, sync_to_thread=False),
            "caller": Provide(principal, sync_to_thread=False),
        },
        middleware=[request_id_middleware, DefineMiddleware(BearerAuth, exclude=[f"^{p}" for p in PUBLIC_PATHS]),
                    audit.AuditMiddleware()],
        exception_handlers=HANDLERS,
        before_request=refuse_hostile_input,
        # The process (email-engine's CLI, or the host application) owns the root logger and its format.
        logging_config=LoggingConfig(configure_root_logger=False),
        request_max_body_size=MAX_BODY,
        openapi_config=OpenAPIConfig(
            title="email-engine",
            version="2.0.0",
            description=DESCRIPTION,
            path="/schema",
            create_examples=True,
            render_plugins=[SwaggerRenderPlugin(), RedocRenderPlugin(), ScalarRenderPlugin()],
            components=Components(security_schemes={
                "bearer": SecurityScheme(type="http", scheme="bearer", description="admin or tenant API key"),
            }),
        ),
        plugins=[ClosedStructSchemaPlugin()],
        debug=debug,
    )
    document_errors(app)
    document_errors(app, prefix="/metrics")
    document_links(app)
    return app
