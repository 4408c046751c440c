"""The one place a domain error meets an HTTP status."""

from __future__ import annotations

import logging

import msgspec
from litestar import MediaType, Request, Response
from litestar.exceptions import HTTPException, ValidationException

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
    HTTPException: http_error,
    Exception: unexpected_error,
}
