"""Optional third-party address verification (ZeroBounce API v2, NeverBounce API v4), off by default."""

from __future__ import annotations

from typing import Literal

import httpx
import msgspec

Provider = Literal["zerobounce", "neverbounce"]
InternalStatus = Literal["valid", "risky", "invalid", "pending"]

# Where each vendor's single-address check lives; tests and proxies pass their own base_url.
ENDPOINTS = {
    "zerobounce": ("https://api.zerobounce.net", "/v2/validate"),
    "neverbounce": ("https://api.neverbounce.com", "/v4/single/check"),
}

# Vendor outcome -> internal verdict, from deliverability.md §3.3: send = valid, slow lane = risky,
# suppress = invalid. Anything a vendor adds later that is not listed here maps to risky, not valid.
ZEROBOUNCE_STATUS: dict[str, InternalStatus] = {
    "valid": "valid",
    "catch-all": "risky",
    "unknown": "risky",
    "invalid": "invalid",
    "spamtrap": "invalid",
    "abuse": "invalid",
    "do_not_mail": "invalid",
}
NEVERBOUNCE_RESULT: dict[str, InternalStatus] = {
    "valid": "valid",
    "catchall": "risky",
    "unknown": "risky",
    "invalid": "invalid",
    "disposable": "invalid",
}

# A vendor is failing when, in one batch, at least this many of its answers were errors (no verdict) and they
# were the majority: one throttled address is noise, a wrong key or an outage fails every address.
FAILING_MIN = 3


# How long NeverBounce may spend on one address before it answers "unknown" (its `timeout` parameter,
# seconds); the HTTP client's own timeout must be longer than this.
NEVERBOUNCE_TIMEOUT = 15


class VendorVerdict(msgspec.Struct, frozen=True, kw_only=True):
    """A vendor's answer for one address, mapped to the internal statuses."""

    provider: str
    email: str
    status: InternalStatus  # pending = the vendor did not give a verdict (error, throttle, outage)
    vendor_status: str | None = None  # ZeroBounce `status` / NeverBounce `result`, as sent
    sub_status: str | None = None  # ZeroBounce `sub_status` (role_based, disposable, ...)
    flags: tuple[str, ...] = ()  # NeverBounce `flags` (role_account, disposable_email, ...)
    suggestion: str | None = None  # ZeroBounce `did_you_mean` / NeverBounce `suggested_correction`
    error: str | None = None  # why there is no verdict: auth_failure, http_503, transport, ...


def _pending(provider: str, email: str, error: str) -> VendorVerdict:
    return VendorVerdict(provider=provider, email=email, status="pending", error=error)


def _from_zerobounce(email: str, body: dict) -> VendorVerdict:
    """ZeroBounce answers 200 for every outcome; an `error` key means no verdict."""
    if "error" in body or "status" not in body:
        return _pending("zerobounce", email, str(body.get("error") or "malformed_response"))
    vendor_status = str(body["status"])
    return VendorVerdict(
        provider="zerobounce",
        email=email,
        status=ZEROBOUNCE_STATUS.get(vendor_status, "risky"),
        vendor_status=vendor_status,
        sub_status=body.get("sub_status") or None,
        suggestion=body.get("did_you_mean") or None,
    )


def _from_neverbounce(email: str, body: dict) -> VendorVerdict:
    """NeverBounce reports application errors with HTTP 200 and `status`: check it before `result`."""
    if body.get("status") != "success":
        return _pending("neverbounce", email, str(body.get("status") or "malformed_response"))
    result = str(body.get("result"))
    return VendorVerdict(
        provider="neverbounce",
        email=email,
        status=NEVERBOUNCE_RESULT.get(result, "risky"),
        vendor_status=result,
        flags=tuple(body.get("flags") or ()),
        suggestion=body.get("suggested_correction") or None,
    )


def _params(provider: Provider, api_key: str, email: str) -> dict[str, str | int]:
    if provider == "zerobounce":
        return {"api_key": api_key, "email": email, "ip_address": ""}
    return {"key": api_key, "email": email, "address_info": 0, "credits_info": 0,
            "timeout": NEVERBOUNCE_TIMEOUT}


async def verify(
    provider: Provider,
    api_key: str,
    email: str,
    http_client: httpx.AsyncClient,
    *,
    base_url: str | None = None,
) -> VendorVerdict:
    """Ask one vendor about one address; vendor and network trouble come back as `pending`, never raise."""
    if provider not in ENDPOINTS:
        raise ValueError(f"unknown verification provider {provider!r}: expected one of {sorted(ENDPOINTS)}")
    default_base, path = ENDPOINTS[provider]
    url = (base_url or default_base).rstrip("/") + path
    try:
        response = await http_client.get(url, params=_params(provider, api_key, email))
    except httpx.HTTPError as exc:
        return _pending(provider, email, f"transport: {type(exc).__name__}")
    if response.status_code != 200:
        return _pending(provider, email, f"http_{response.status_code}")
    try:
        body = msgspec.json.decode(response.content)
    except msgspec.DecodeError:
        return _pending(provider, email, "malformed_response")
    if not isinstance(body, dict):
        return _pending(provider, email, "malformed_response")
    return _from_zerobounce(email, body) if provider == "zerobounce" else _from_neverbounce(email, body)


def failing(answers: list[VendorVerdict]) -> dict[str, str | int] | None:
    """What to report when a batch's answers say the vendor is failing (see FAILING_MIN); None otherwise."""
    errors = [a.error for a in answers if a.status == "pending" and a.error]
    if len(errors) < FAILING_MIN or 2 * len(errors) <= len(answers):
        return None
    return {"asked": len(answers), "failed": len(errors), "last_error": errors[-1]}
