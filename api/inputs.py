"""What any request's text and numbers may hold, checked once before every handler.

PostgreSQL refuses NUL in text and integers past its column types; a value like that must be the client's
400 naming the field, never the server's 500. Every path, query and JSON body value passes here, so an
operation added later is covered without a line of its own. Integers wider than int64 (the widest column)
are refused here; one that fits int64 but not an int32 column is refused by the database mapping in
api/errors.py, which names the field the same way.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec
from litestar import Request

from engine.errors import Invalid

# C0 controls and DEL, except tab, line feed and carriage return (bodies and CSV lines carry those).
CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
# A JSON body can only carry a control character escaped (\u0000-\u001f, \u007f), and an integer past int64
# as 19 digits or more: the body is walked only when one of these appears, so a clean batch costs one scan.
SUSPECT_JSON = re.compile(rb"\\u00[01][0-9a-fA-F]|\\u007[fF]|\d{19}")
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def path_of(parent: str, key: str | int) -> str:
    """`contacts[3].email`, the way msgspec names a place in a payload."""
    if isinstance(key, int):
        return f"{parent}[{key}]"
    return f"{parent}.{key}" if parent else key


def refuse_value(value: Any, where: str) -> None:
    """Invalid naming `where` if this value (or anything inside it) is text with a control character or an
    integer past int64."""
    if isinstance(value, str):
        if CONTROL.search(value):
            raise Invalid(f"{where or 'body'}: control characters (such as NUL) are not allowed in text",
                          field=where or "body")
    elif isinstance(value, bool):
        return
    elif isinstance(value, int):
        if not INT64_MIN <= value <= INT64_MAX:
            raise Invalid(f"{where or 'body'}: integer out of range (at most {INT64_MAX})", field=where or "body")
    elif isinstance(value, dict):
        for key, item in value.items():
            if CONTROL.search(key):  # named by its parent: the key itself is not echoed back
                raise Invalid(f"{where or 'body'}: control characters (such as NUL) are not allowed in keys",
                              field=where or "body")
            refuse_value(item, path_of(where, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            refuse_value(item, path_of(where, i))


def decoded_json(body: bytes) -> Any:
    """The body as plain JSON values, or None when it does not parse (the handler's decoder says why)."""
    try:
        return msgspec.json.decode(body)
    except msgspec.DecodeError:
        return None


async def refuse_hostile_input(request: Request) -> None:
    """before_request hook: path and query parameters, then a JSON body."""
    for name, value in request.path_params.items():
        refuse_value(value, name)
    for name, value in request.query_params.multi_items():
        refuse_value(value, name)
    if "json" not in request.content_type[0]:
        return
    body = await request.body()
    if SUSPECT_JSON.search(body):
        refuse_value(decoded_json(body), "")
