"""Every request gets an id - the caller's `X-Request-ID` when it is a plain token, else a new one - that is in
every log line of the request (engine.logs) and echoed in the response's `X-Request-ID`; each request ends
with one log line naming its operation, status and duration (the operation id, not the path, which can hold
an address)."""

from __future__ import annotations

import logging
import time

from litestar.datastructures import MutableScopeHeaders
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from engine import logs

HEADER = "x-request-id"
log = logging.getLogger("api.requests")


def request_id_middleware(app: ASGIApp) -> ASGIApp:
    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        offered = next((v.decode("latin-1") for k, v in scope["headers"] if k == HEADER.encode()), None)
        rid = logs.new_request_id(offered)
        token = logs.request_id.set(rid)
        tenant = logs.tenant_id.set(None)
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableScopeHeaders.from_message(message)[HEADER] = rid
            await send(message)

        try:
            await app(scope, receive, send_with_id)
        finally:
            handler = scope.get("route_handler")
            operation = getattr(handler, "operation_id", None) or getattr(handler, "handler_name", "?")
            log.info("%s %s %d %.1f ms", scope["method"], operation, status,
                     (time.perf_counter() - started) * 1000)
            logs.tenant_id.reset(tenant)
            logs.request_id.reset(token)

    return middleware
