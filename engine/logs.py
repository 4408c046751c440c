"""Log lines: plain text or one JSON object per event, carrying the request, tenant, campaign and job ids.

The ids live in context variables: the API sets the request id (and the tenant once the key is known), a
worker job its job id, a campaign's sending loop its campaign id. asyncio copies the context into every task
it starts, so whatever a request or a job logs, directly or from a task it spawned, carries its ids.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import logging
import re
import uuid
from typing import Any

import msgspec

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
tenant_id: contextvars.ContextVar[int | None] = contextvars.ContextVar("tenant_id", default=None)
campaign_id: contextvars.ContextVar[int | None] = contextvars.ContextVar("campaign_id", default=None)
job_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("job_id", default=None)

# The ids a JSON line carries, in this order, when they are set.
CONTEXT = (("request_id", request_id), ("tenant_id", tenant_id), ("campaign_id", campaign_id), ("job_id", job_id))
FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# A caller's X-Request-ID is kept when it is a plain token (a proxy's id, a UUID); anything else - too long,
# spaces, control characters that could forge log lines or headers - is replaced by one of ours.
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_encoder = msgspec.json.Encoder()


def new_request_id(offered: str | None) -> str:
    """The caller's request id when it is a safe token, otherwise a fresh one."""
    if offered and _REQUEST_ID.match(offered):
        return offered
    return uuid.uuid4().hex


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, the context ids, the error."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name, var in CONTEXT:
            value = var.get()
            if value is not None:
                line[name] = value
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["error"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return _encoder.encode(line).decode()


def configure(level: str, fmt: str = "text") -> None:
    """The root logger's one handler on stderr, in the chosen format (replacing any handler before it)."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level, handlers=[handler], force=True)
