"""MailWizz on the wire: PHP-style form encoding, the 1.x request signature, envelopes and their errors."""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote_plus

import httpx
import msgspec

from engine.errors import EngineError, Invalid, Unavailable


class MailWizzError(EngineError):
    """MailWizz answered with an error; `status` is its HTTP status (0 when no answer came)."""

    def __init__(self, message: str, *, status: int = 0, field: str | None = None, extra=None) -> None:
        super().__init__(message, field=field, extra=extra)
        self.status = status


class MailWizzAuthError(MailWizzError):
    """401/403, or the 400 MailWizz 2.0.15 gives for a bad key: the tenant's MailWizz settings are wrong."""


class MailWizzNotFound(MailWizzError):
    """Unknown list, subscriber or campaign uid."""


class MailWizzConflict(MailWizzError):
    """409: the subscriber is already in the list, or the address is blacklisted."""


class MailWizzValidationError(MailWizzError, Invalid):
    """422: `fields` maps each MailWizz field name to its message."""

    def __init__(self, fields: Mapping[str, str], *, status: int = 422) -> None:
        self.fields = dict(fields)
        text = "; ".join(f"{k}: {v}" for k, v in self.fields.items()) or "validation failed"
        super().__init__(text, status=status, field=next(iter(self.fields), None))


class MailWizzUnavailable(MailWizzError, Unavailable):
    """Retries exhausted (429/5xx/connection errors); `retry_after` is the server's hint, if any."""

    def __init__(self, message: str, *, status: int = 0, retry_after: float | None = None) -> None:
        super().__init__(message, status=status)
        self.retry_after = retry_after


def php_urlencode(value: str) -> str:
    """PHP `urlencode`: RFC 1738, space as `+`, `~` encoded (Python leaves it alone)."""
    return quote_plus(value, safe="").replace("~", "%7E")


def flatten(data: Mapping[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    """Nested mapping -> `outer[inner]` pairs in insertion order, as PHP `http_build_query` walks them."""
    pairs: list[tuple[str, str]] = []
    for key, value in data.items():
        name = f"{prefix}[{key}]" if prefix else str(key)
        if isinstance(value, Mapping):
            pairs.extend(flatten(value, name))
        elif isinstance(value, list | tuple):
            pairs.extend(flatten(dict(enumerate(value)), name))
        elif value is None:
            continue                  # PHP drops nulls
        elif isinstance(value, bool):
            pairs.append((name, "1" if value else "0"))
        else:
            pairs.append((name, str(value)))
    return pairs


def http_build_query(data: Mapping[str, Any]) -> str:
    """PHP `http_build_query` for nested mappings."""
    return "&".join(f"{php_urlencode(k)}={php_urlencode(v)}" for k, v in flatten(data))


def sign_v1(method: str, url: str, query: Mapping[str, Any], params: Mapping[str, Any], private_key: str) -> str:
    """The 1.x X-MW-SIGNATURE (reference §1.1): `params` = the X-MW-* headers plus the body fields."""
    if query:
        url = f"{url}?{http_build_query(dict(sorted(query.items())))}"
    separator = "&" if query and "?" in url else "?"
    message = f"{method.upper()} {url}{separator}{http_build_query(dict(sorted(params.items())))}"
    return hmac.new(private_key.encode(), message.encode(), hashlib.sha1).hexdigest()


def retry_after_seconds(value: str | None) -> float | None:
    """Retry-After as delta-seconds or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def decode_envelope(response: httpx.Response) -> dict[str, Any]:
    """The JSON body, with `status` and `error` filled in when a proxy or crash left them out."""
    try:
        body = msgspec.json.decode(response.content) if response.content else {}
    except msgspec.DecodeError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    ok = response.is_success and body.get("status", "success") == "success"
    body.setdefault("status", "success" if ok else "error")
    if not ok:
        body.setdefault("error", f"HTTP {response.status_code} {response.reason_phrase}")
    return body


def raise_for_envelope(response: httpx.Response, body: Mapping[str, Any]) -> None:
    """Map a MailWizz error answer to its exception (reference §4)."""
    if body["status"] == "success" and response.is_success:
        return
    code, error = response.status_code, body.get("error")
    message = error if isinstance(error, str) else str(error)
    if code == 422 or isinstance(error, Mapping):
        fields = error if isinstance(error, Mapping) else {"_": message}
        raise MailWizzValidationError({k: _text(v) for k, v in fields.items()}, status=code)
    if code in (401, 403) or (code == 400 and any(w in message.lower() for w in ("key", "auth", "signature"))):
        raise MailWizzAuthError(message, status=code)
    if code == 404:
        raise MailWizzNotFound(message, status=code)
    if code == 409:
        raise MailWizzConflict(message, status=code)
    if code == 429 or code >= 500:
        raise MailWizzUnavailable(message, status=code, retry_after=retry_after_seconds(response.headers.get("retry-after")))
    raise MailWizzError(message, status=code)


def _text(value: Any) -> str:
    return "; ".join(map(str, value)) if isinstance(value, list) else str(value)


def record_of(body: Mapping[str, Any]) -> dict[str, Any]:
    data = body.get("data") or {}
    return data.get("record", data) if isinstance(data, dict) else {}


def uid_of(body: Mapping[str, Any], key: str) -> str:
    """Creates answer `{key: uid}` at the top (lists, campaigns) or under `data.record` (others)."""
    value = body.get(key) or record_of(body).get(key)
    if not value:
        raise MailWizzError(f"MailWizz answered without {key}", status=200)
    return str(value)
