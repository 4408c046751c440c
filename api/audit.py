"""The audit log on the request path: every POST, PUT, PATCH and DELETE that succeeds leaves one row.

No operation records itself. The request's transaction does it before it commits — the `db` dependency
(api/app.py) and `transaction()` below for handlers that commit before enqueuing a job — so the row and the
change commit or roll back together. An operation that commits nothing of its own (a render, a preview, a job
enqueued) is recorded by `AuditMiddleware` once its answer is a success. The row carries the route's
operation id as `action`, its path parameters as `target`, the JSON body (secrets redacted, long lists cut)
as `summary`, the key and tenant from the authentication, and the request id (`X-Request-ID` if the client
sent a sane one, else generated; echoed in the answer).

Public routes carry no key: a signed webhook is recorded with actor `data_source`, an unsubscribe link with
actor `recipient`, both under the tenant they acted on and with the token out of the row.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any
from urllib.parse import parse_qsl

import asyncpg
from litestar import Request, get
from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware
from litestar.params import QueryParameter
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from litestar.utils.empty import value_or_default
from litestar.utils.scope.state import ScopeState

from api.auth import Principal
from api.deps import Caller, Db, TenantId
from engine import audit, logs
from engine.audit import AuditPage
from engine.errors import Invalid

log = logging.getLogger(__name__)

MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# Actors of the public routes, by path prefix; any other route without a key is `public`.
PUBLIC_ACTORS = (("/u/", "recipient"), ("/api/v2/webhooks/", "data_source"))

_ID_KEY = "ee_request_id"
_DONE_KEY = "ee_audited"
_TENANT_KEY = "ee_audit_tenant"


def request_id(scope: Scope) -> str:
    """This request's id, the one api.request_ids gave it (and its log lines carry)."""
    state = scope.setdefault("state", {})
    if _ID_KEY not in state:
        given = next((v.decode("latin-1") for k, v in scope.get("headers", ()) if k == b"x-request-id"), None)
        state[_ID_KEY] = logs.request_id.get() or logs.new_request_id(given)
    return state[_ID_KEY]


def set_tenant(request: Request, tenant_id: int) -> None:
    """Name the tenant a keyless route acted on (a webhook's source, an unsubscribe token's tenant)."""
    request.scope.setdefault("state", {})[_TENANT_KEY] = tenant_id


def _actor(scope: Scope, user: Principal | None) -> str:
    if isinstance(user, Principal):
        return "admin" if user.admin else "key"
    return next((actor for prefix, actor in PUBLIC_ACTORS if scope["path"].startswith(prefix)), "public")


def change_for(scope: Scope) -> audit.Change:
    """What the audit row of this request says."""
    user = scope.get("user")
    user = user if isinstance(user, Principal) else None
    handler = scope.get("route_handler")
    operation = getattr(handler, "operation_id", None)
    action = operation if isinstance(operation, str) else getattr(getattr(handler, "fn", None), "__name__", "?")
    params = dict(scope.get("path_params") or {})
    target = audit.redact(params)
    # an unsubscribe token is a credential: out of the path too
    hidden = {str(v) for k, v in params.items() if audit.is_secret(k)}
    path = "/".join(audit.REDACTED if part in hidden else part for part in scope["path"].split("/"))
    body = value_or_default(ScopeState.from_scope(scope).body, b"")
    summary = audit.summarise_body(body) if _is_json(scope) else ({"body_bytes": len(body)} if body else {})
    query = scope.get("query_string", b"").decode("latin-1")
    if query:
        summary = {**summary, "query": audit.redact(dict(parse_qsl(query)))}
    state = scope.get("state", {})
    tenant_id = _tenant(state.get(_TENANT_KEY), target.get("tenant_id"), summary.get("tenant_id"),
                        user.tenant_id if user else None)
    return audit.Change(tenant_id=tenant_id, actor=_actor(scope, user), key_id=user.key_id if user else None,
                        action=action, method=scope.get("method", ""), path=path[:500], target=target,
                        summary=summary, request_id=request_id(scope))


def _tenant(*candidates: Any) -> int | None:
    for value in candidates:
        if isinstance(value, int) and not isinstance(value, bool) and 0 < value <= 2**62:
            return value
    return None


def _is_json(scope: Scope) -> bool:
    """A JSON body (or none): its fields go in the summary; any other body (a CSV, a form) only by its size."""
    ctype = next((v for k, v in scope.get("headers", ()) if k == b"content-type"), b"")
    return ctype.split(b";")[0].strip().lower().endswith(b"json") or not ctype


async def record_request(db: asyncpg.Connection, scope: Scope) -> None:
    """Write this request's audit row on `db`, once, if the request changes something."""
    state = scope.setdefault("state", {})
    if scope.get("method") not in MUTATING or state.get(_DONE_KEY):
        return
    await audit.record(db, change_for(scope))
    state[_DONE_KEY] = True


@asynccontextmanager
async def transaction(request: Request) -> AsyncIterator[asyncpg.Connection]:
    """A pooled connection inside a transaction whose commit carries this request's audit row."""
    async with request.app.state.pool.acquire() as db, db.transaction():
        yield db
        await record_request(db, request.scope)


class AuditMiddleware(ASGIMiddleware):
    """Records a successful change that no transaction of the request recorded."""

    scopes = (ScopeType.HTTP,)

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        rid = request_id(scope)
        status = 0

        async def send_seen(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        await next_app(scope, receive, send_seen)
        state = scope.get("state", {})
        if scope["method"] in MUTATING and 200 <= status < 400 and not state.get(_DONE_KEY):
            try:
                async with scope["litestar_app"].state.pool.acquire() as db, db.transaction():
                    await record_request(db, scope)
            except (OSError, asyncpg.PostgresError):
                log.exception("audit row of request %s not written", rid)


Limit = Annotated[int, QueryParameter(ge=1, le=audit.PAGE_MAX, description="page size")]
ActionFilter = Annotated[str | None, QueryParameter(max_length=100, description="only this operation id")]
KeyFilter = Annotated[int | None, QueryParameter(gt=0, description="only changes made with this API key")]
ActorFilter = Annotated[str | None, QueryParameter(description=f"only this actor: {', '.join(audit.ACTORS)}")]
Since = Annotated[dt.datetime | None, QueryParameter(description="changes at or after this time")]
Until = Annotated[dt.datetime | None, QueryParameter(description="changes before this time")]
Before = Annotated[int | None, QueryParameter(gt=0, description="`next_cursor` of the previous page")]


def _check_actor(actor: str | None) -> None:
    if actor is not None and actor not in audit.ACTORS:
        raise Invalid(f"actor: expected one of {list(audit.ACTORS)}", field="actor")


@get("/audit", operation_id="listAllAudit", summary="The audit log of every tenant", tags=["audit"],
     description="Newest first, keyset pages (pass `next_cursor` as `before`). The admin sees every tenant's "
                 "changes and its own (tenants created or deleted); a tenant key sees its tenant's.")
async def list_all_audit(db: Db, caller: Caller, action: ActionFilter = None, key_id: KeyFilter = None,
                         actor: ActorFilter = None, since: Since = None, until: Until = None, before: Before = None,
                         limit: Limit = 100) -> AuditPage:
    _check_actor(actor)
    return await audit.list_entries(db, None if caller.admin else caller.tenant_id, action=action, key_id=key_id,
                                    actor=actor, since=since, until=until, before=before, limit=limit)


@get("/audit/{tenant_id:int}", operation_id="listAudit", summary="A tenant's audit log", tags=["audit"],
     description="Every change made through the API to the tenant: who (actor, key id), what (action = the "
                 "operation id, target = its path parameters, summary = the request without secrets), when and "
                 "under which request id. Newest first, keyset pages (pass `next_cursor` as `before`).")
async def list_audit(tenant_id: TenantId, db: Db, caller: Caller, action: ActionFilter = None,
                     key_id: KeyFilter = None, actor: ActorFilter = None, since: Since = None, until: Until = None,
                     before: Before = None, limit: Limit = 100) -> AuditPage:
    _check_actor(actor)
    return await audit.list_entries(db, caller.scope(tenant_id), action=action, key_id=key_id, actor=actor,
                                    since=since, until=until, before=before, limit=limit)


ROUTES = [list_all_audit, list_audit]
