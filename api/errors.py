"""The one place a domain error meets an HTTP status."""

from __future__ import annotations

import logging
import re
from typing import Any

import asyncpg
import msgspec
from litestar import Litestar, MediaType, Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import Example
from litestar.routes import HTTPRoute
from litestar.utils.scope.state import ScopeState

from api.inputs import decoded_json, path_of
from engine import errors
from engine.faults import unavailable_store

log = logging.getLogger(__name__)

# What a client is told to wait when PostgreSQL or Redis is restarting.
RETRY_AFTER_SECONDS = 5

STATUS: dict[type[errors.EngineError], int] = {
    errors.Invalid: 400,
    errors.Unauthorized: 401,
    errors.Forbidden: 403,
    errors.NotFound: 404,
    errors.Conflict: 409,
    errors.TooLarge: 413,
    errors.Unprocessable: 422,
    errors.Unavailable: 503,
}


def _body(status: int, detail: str, field: str | None = None, extra: dict | list | None = None) -> Response:
    content: dict = {"status_code": status, "detail": detail}
    if field:
        content["field"] = field
    if extra:
        content["extra"] = extra
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return Response(content, status_code=status, media_type=MediaType.JSON, headers=headers)


def engine_error(_: Request, exc: errors.EngineError) -> Response:
    status = next((code for cls, code in STATUS.items() if isinstance(exc, cls)), 400)
    return _body(status, exc.message, exc.field, exc.extra)


def validation_error(_: Request, exc: ValidationException) -> Response:
    """Litestar's request validation (bad JSON, wrong types): 400 with each offending field named."""
    extra = exc.extra if isinstance(exc.extra, list) else []
    fields = [e.get("key") for e in extra if isinstance(e, dict) and e.get("key")]
    detail = exc.detail or "invalid request"
    for e in extra:
        if isinstance(e, dict) and e.get("message"):
            detail = f"{detail}: {e['message']}"
            break
    return _body(400, detail, fields[0] if fields else None, extra)


def msgspec_error(_: Request, exc: msgspec.ValidationError) -> Response:
    """A payload validated inside a handler (e.g. one item of a batch): the message names the path."""
    message = str(exc)
    field = message.rsplit("at `$.", 1)[1].rstrip("`") if "at `$." in message else None
    return _body(400, message, field)


def http_error(_: Request, exc: HTTPException) -> Response:
    return _body(exc.status_code, exc.detail, extra=exc.extra if isinstance(exc.extra, (dict, list)) else None)


# What PostgreSQL's integrity errors say (their `detail`), to name the column and the value.
KEY_DETAIL = re.compile(r"Key \((?P<columns>.*?)\)=\((?P<values>.*?)\)")
# asyncpg's own message when a parameter does not fit its column's type (int32, int64, text...).
ARGUMENT = re.compile(r"invalid input for query argument \$\d+: (?P<value>.*?) \((?P<why>[^()]*)\)$", re.S)


def _columns(detail: str | None) -> tuple[list[str], list[str]]:
    """The columns and values of "Key (tenant_id, lower(name))=(1, x)", unwrapped from their functions."""
    match = KEY_DETAIL.search(detail or "")
    if not match:
        return [], []
    columns = [re.sub(r"^\w+\((.*)\)$", r"\1", c.strip()) for c in match["columns"].split(",")]
    return columns, [v.strip() for v in match["values"].split(",")]


def _locate(request: Request, value: str) -> str | None:
    """Where in the request (path, query, JSON body) a value the database refused was sent."""
    def walk(node: Any, where: str) -> str | None:
        if isinstance(node, dict):
            for key, item in node.items():
                if (found := walk(item, path_of(where, str(key)))) is not None:
                    return found
        elif isinstance(node, list):
            for i, item in enumerate(node):
                if (found := walk(item, path_of(where, i))) is not None:
                    return found
        elif not isinstance(node, bool) and node is not None and str(node) == value:
            return where
        return None

    for name, sent in [*request.path_params.items(), *request.query_params.multi_items()]:
        if str(sent) == value:
            return name
    body = ScopeState.from_scope(request.scope).body
    if isinstance(body, bytes) and body:
        return walk(decoded_json(body), "")
    return None


def integrity_error(request: Request, exc: asyncpg.IntegrityConstraintViolationError) -> Response:
    """A constraint the database enforces: a row that references nothing is the client's 404 naming the
    reference, a duplicate a 409, anything else a 400 (the transaction is rolled back: nothing half-written)."""
    columns, values = _columns(exc.detail)
    # The column that names the culprit: the last one, after the tenant that scopes it.
    field = next((c for c in reversed(columns) if c != "tenant_id"), columns[-1] if columns else None)
    value = values[columns.index(field)] if field in columns and len(values) == len(columns) else None
    if isinstance(exc, asyncpg.ForeignKeyViolationError):
        if "is still referenced" in (exc.detail or ""):
            return _body(409, f"still in use by {exc.table_name or 'other rows'}", field)
        table = re.search(r'in table "(\w+)"', exc.detail or "")
        noun = (table[1] if table else "referenced row").removesuffix("s").replace("_", " ")
        return _body(404, f"{noun} {value} not found", field)
    if isinstance(exc, (asyncpg.UniqueViolationError, asyncpg.ExclusionViolationError)):
        return _body(409, f"{field or 'value'} {value} already exists", field)
    field = exc.column_name or field
    return _body(400, f"{field or 'value'}: refused by the database ({exc.constraint_name or 'constraint'})", field)


def data_error(request: Request, exc: asyncpg.DataError) -> Response:
    """A value the database cannot store (out of its integer range, text it refuses): 400 naming the field."""
    message = str(exc)
    if match := ARGUMENT.search(message):
        field = _locate(request, match["value"])
        detail = f"{field or 'value'}: {match['why']}"
    else:
        field = exc.column_name
        detail = f"{field or 'value'}: {message.splitlines()[0]}"
    return _body(400, detail, field)


def recursion_error(request: Request, exc: RecursionError) -> Response:
    """JSON nested deeper than the decoder follows is the client's 400; a recursion of ours stays a 500."""
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_globals.get("__name__", "").startswith(("litestar.serialization", "msgspec")):
            return _body(400, "body: JSON nested too deeply", "body")
        tb = tb.tb_next
    return unexpected_error(request, exc)


def unexpected_error(request: Request, exc: Exception) -> Response:
    """A store that cannot be reached is a 503 to retry; anything else: log everything, say little."""
    store = unavailable_store(exc)
    if store is not None:
        log.warning("%s %s: %s unavailable (%s)", request.method, request.url.path, store, type(exc).__name__)
        response = _body(503, f"{store} is unavailable; retry shortly")
        response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
        return response
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return _body(500, "internal error; the incident was logged")


HANDLERS = {
    errors.EngineError: engine_error,
    ValidationException: validation_error,
    msgspec.ValidationError: msgspec_error,
    asyncpg.IntegrityConstraintViolationError: integrity_error,
    asyncpg.DataError: data_error,
    RecursionError: recursion_error,
    HTTPException: http_error,
    Exception: unexpected_error,
}


class ErrorBody(msgspec.Struct, frozen=True, kw_only=True):
    """Every error the API answers."""

    status_code: int
    detail: str
    field: str | msgspec.UnsetType = msgspec.UNSET
    extra: dict | list | msgspec.UnsetType = msgspec.UNSET


# The errors every operation under /api/v2 can answer, whatever its handler raises: each comes out of the
# mapping above, so each is documented once for all of them.
ERROR_RESPONSES: dict[int, tuple[str, dict]] = {
    400: ("a field is missing, malformed or breaks a rule; `field` names it",
          {"detail": "email: expected an address such as name@example.com", "field": "email"}),
    401: ("no key, or a key that matches nothing", {"detail": "invalid or revoked API key"}),
    403: ("a tenant key on an operation that needs the admin key",
          {"detail": "this operation needs the admin key"}),
    404: ("not found, or another tenant's", {"detail": "tenant 7 not found"}),
    409: ("clashes with the current state (a duplicate, a campaign no longer a draft)",
          {"detail": "slug sos-expat already exists", "field": "slug"}),
    413: ("a body or batch over its limit", {"detail": "at most 10000 contacts per request", "field": "contacts"}),
    422: ("well-formed but cannot be acted on", {"detail": "the template does not render"}),
    503: ("PostgreSQL or Redis cannot be reached right now; retry after `Retry-After` seconds",
          {"detail": "Redis is unavailable; retry shortly"}),
}


def document_errors(app: Litestar, prefix: str = "/api/v2") -> None:
    """Add ERROR_RESPONSES to each operation under `prefix` that does not document that status itself."""
    for route in app.routes:
        if not isinstance(route, HTTPRoute) or not route.path.startswith(prefix):
            continue
        for handler in route.route_handlers:
            responses = dict(handler.responses or {})
            for status, (description, example) in ERROR_RESPONSES.items():
                responses.setdefault(status, ResponseSpec(
                    ErrorBody, description=description, generate_examples=False,
                    examples=[Example(summary=description, value={"status_code": status, **example})]))
            handler.responses = responses
