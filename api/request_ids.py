"""Every request gets an id: the caller's `X-Request-ID` when it is a plain token, else a new one. It is in
every log line of the request (engine.logs) and echoed in the response's `X-Request-ID`."""

from __future__ import annotations

from litestar.datastructures import MutableScopeHeaders
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from engine import logs

HEADER = "x-request-id"


def request_id_middleware(app: ASGIApp) -> ASGIApp:
    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        offered = next((v.decode("latin-1") for k, v in scope["headers"] if k == HEADER.encode()), None)
        rid = logs.new_request_id(offered)
        token = logs.request_id.set(rid)
        tenant = logs.tenant_id.set(None)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableScopeHeaders.from_message(message)[HEADER] = rid
            await send(message)

        try:
            await app(scope, receive, send_with_id)
        finally:
            logs.tenant_id.reset(tenant)
            logs.request_id.reset(token)

    return middleware
