"""Vendor verification against a loopback HTTP server that answers like ZeroBounce v2 and NeverBounce v4."""

from __future__ import annotations

import json
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from engine.verifiers import failing, verify

ZB_KEY = "zb-test-key"
NB_KEY = "secret_nb_test"


def zerobounce_body(query: dict[str, str]) -> tuple[int, dict]:
    """ZeroBounce's sandbox convention: the local part names the status (valid@, spamtrap@, ...)."""
    if query.get("api_key") != ZB_KEY:
        return 200, {"error": "Invalid API Key or your account ran out of credits"}
    email = query["email"]
    local, _, domain = email.partition("@")
    status = {"catch_all": "catch-all", "donotmail": "do_not_mail", "role_based": "valid"}.get(local, local)
    if local == "outage":
        return 503, {}
    return 200, {
        "address": email, "status": status, "sub_status": "role_based" if local == "role_based" else "",
        "free_email": False, "did_you_mean": "typo@mx.example" if local == "invalid" else None,
        "account": local, "domain": domain, "mx_found": "true", "mx_record": "mx1.mx.example",
    }


def neverbounce_body(query: dict[str, str]) -> tuple[int, dict]:
    """NeverBounce: application errors come back as HTTP 200 with a non-success `status`."""
    if query.get("key") != NB_KEY:
        return 200, {"status": "auth_failure", "message": "Invalid API key 'x'", "execution_time": 5}
    local = query["email"].partition("@")[0]
    if local == "throttled":
        return 200, {"status": "throttle_triggered", "message": "Too many requests", "execution_time": 5}
    flags = ["has_dns", "has_dns_mx"] + (["role_account"] if local == "catchall" else [])
    return 200, {"status": "success", "result": local, "flags": flags,
                 "suggested_correction": "", "execution_time": 300}


class _Handler(BaseHTTPRequestHandler):
    routes = {"/v2/validate": zerobounce_body, "/v4/single/check": neverbounce_body}
    seen: list[tuple[str, dict[str, str]]] = []

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        self.seen.append((url.path, query))
        route = self.routes.get(url.path)
        status, body = route(query) if route else (404, {"error": "not found"})
        payload = json.dumps(body).encode() if status != 503 else b"<html>down</html>"
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def vendor_url():
    with serve_vendor() as url:
        yield url


@contextmanager
def serve_vendor():
    """The local ZeroBounce/NeverBounce, in a thread; yields its base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
async def client():
    async with httpx.AsyncClient(timeout=5.0) as http:
        yield http


@pytest.mark.parametrize("local, status", [
    ("valid", "valid"), ("catch_all", "risky"), ("unknown", "risky"), ("invalid", "invalid"),
    ("spamtrap", "invalid"), ("abuse", "invalid"), ("donotmail", "invalid"),
])
async def test_zerobounce_statuses_map_to_internal_verdicts(vendor_url, client, local, status):
    verdict = await verify("zerobounce", ZB_KEY, f"{local}@mx.example", client, base_url=vendor_url)
    assert (verdict.provider, verdict.status, verdict.error) == ("zerobounce", status, None)


async def test_zerobounce_keeps_sub_status_and_suggestion(vendor_url, client):
    role = await verify("zerobounce", ZB_KEY, "role_based@mx.example", client, base_url=vendor_url)
    assert role.status == "valid" and role.sub_status == "role_based"
    typo = await verify("zerobounce", ZB_KEY, "invalid@mx.example", client, base_url=vendor_url)
    assert typo.vendor_status == "invalid" and typo.suggestion == "typo@mx.example"
    path, query = _Handler.seen[-1]
    assert path == "/v2/validate" and query["api_key"] == ZB_KEY and query["email"] == "invalid@mx.example"


@pytest.mark.parametrize("result, status", [
    ("valid", "valid"), ("catchall", "risky"), ("unknown", "risky"),
    ("invalid", "invalid"), ("disposable", "invalid"), ("brand_new_result", "risky"),
])
async def test_neverbounce_results_map_to_internal_verdicts(vendor_url, client, result, status):
    verdict = await verify("neverbounce", NB_KEY, f"{result}@mx.example", client, base_url=vendor_url)
    assert (verdict.provider, verdict.status, verdict.vendor_status) == ("neverbounce", status, result)
    assert "has_dns_mx" in verdict.flags
    path, query = _Handler.seen[-1]
    assert path == "/v4/single/check" and query["key"] == NB_KEY


@pytest.mark.parametrize("provider, key, email, error", [
    ("zerobounce", "wrong", "valid@mx.example", "Invalid API Key or your account ran out of credits"),
    ("zerobounce", ZB_KEY, "outage@mx.example", "http_503"),
    ("neverbounce", "wrong", "valid@mx.example", "auth_failure"),
    ("neverbounce", NB_KEY, "throttled@mx.example", "throttle_triggered"),
])
async def test_vendor_errors_are_pending_not_verdicts(vendor_url, client, provider, key, email, error):
    verdict = await verify(provider, key, email, client, base_url=vendor_url)
    assert (verdict.status, verdict.error, verdict.vendor_status) == ("pending", error, None)


async def test_unreachable_vendor_is_pending(client, vendor_url):
    closed = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    url = f"http://127.0.0.1:{closed.server_address[1]}"
    closed.server_close()  # nothing listens on that port now
    verdict = await verify("neverbounce", NB_KEY, "valid@mx.example", client, base_url=url)
    assert verdict.status == "pending" and verdict.error.startswith("transport")


async def test_unknown_provider_is_a_programming_error(client):
    with pytest.raises(ValueError, match="unknown verification provider"):
        await verify("kickbox", "k", "a@mx.example", client)  # type: ignore[arg-type]


async def test_a_batch_mostly_without_verdicts_means_the_vendor_is_failing(vendor_url, client):
    async def answers(key: str, locals_: list[str]):
        return [await verify("zerobounce", key, f"{x}@mx.example", client, base_url=vendor_url) for x in locals_]

    assert failing(await answers(ZB_KEY, ["valid", "unknown", "invalid", "outage"])) is None   # one error
    assert failing(await answers("wrong", ["valid", "valid"])) is None                       # too few to tell
    assert failing(await answers(ZB_KEY, ["outage", "outage", "outage", "valid"])) == {
        "asked": 4, "failed": 3, "last_error": "http_503"}
    assert failing(await answers(ZB_KEY, ["outage", "outage", "outage", "valid", "valid", "valid"])) is None
