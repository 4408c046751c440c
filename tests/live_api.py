"""The API served over a real socket by uvicorn in a thread of its own, and requests made from its document."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import httpx

from engine.settings import Settings
from tests.conftest import ADMIN_KEY, SECRET_KEY

START_DEADLINE = 60.0  # seconds the server may take to answer /health on a loaded machine


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve(settings: Settings) -> Iterator[str]:
    """Serve `create_app(settings)` on a free loopback port; yields the base URL and stops the server after."""
    import uvicorn

    from api.app import create_app

    class Quiet(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self):
            yield

    port = free_port()
    app = create_app(settings, admin_key=ADMIN_KEY, secret_key=SECRET_KEY)
    server = Quiet(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on",
                                  access_log=False, loop="asyncio"))
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), name="live-api", daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    try:
        started = time.monotonic()
        while True:
            try:
                if httpx.get(f"{base}/health", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() - started > START_DEADLINE or not thread.is_alive():
                raise RuntimeError("the API did not start")
            time.sleep(0.05)
        yield base
    finally:
        server.should_exit = True
        thread.join(START_DEADLINE)


def tenant_key(base: str, tenant_id: int) -> str:
    """A fresh API key of one tenant, made with the admin key."""
    r = httpx.post(f"{base}/api/v2/tenants/{tenant_id}/api-keys", json={"name": "live"},
                   headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=30)
    r.raise_for_status()
    return r.json()["key"]


def example_of(schema: dict, components: dict) -> object:
    """A value for a JSON schema from its documented examples: required properties only, nested ones too."""
    if "$ref" in schema:
        return example_of(components[schema["$ref"].rsplit("/", 1)[1]], components)
    if schema.get("type") == "object" and "properties" in schema:
        return {name: example_of(prop, components) for name, prop in schema["properties"].items()
                if name in schema.get("required", ())}
    if schema.get("examples"):
        return schema["examples"][0]
    if "default" in schema:
        return schema["default"]
    for option in schema.get("oneOf", schema.get("anyOf", ())):
        return example_of(option, components)
    return {"string": "x", "integer": 1, "number": 1, "boolean": False, "array": []}.get(schema.get("type"), {})
