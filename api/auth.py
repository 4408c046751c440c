"""Bearer-key authentication: the admin key acts on every tenant, a tenant key only on its own."""

from __future__ import annotations

import msgspec
from litestar import Request
from litestar.connection import ASGIConnection
from litestar.middleware import AbstractAuthenticationMiddleware, AuthenticationResult

from engine import errors, logs, tenants
from engine.secrets import keys_match

# Paths that authenticate otherwise (HMAC webhooks, signed unsubscribe tokens, the dashboard's session cookie)
# or not at all (probes, docs).
PUBLIC_PATHS = ("/health", "/ready", "/schema", "/u/", "/api/v2/webhooks/", "/dashboard")


class Principal(msgspec.Struct, frozen=True, kw_only=True):
    """Who is calling: the admin, or one tenant."""

    tenant_id: int | None = None
    admin: bool = False
    # the tenant key's id (None for the admin key): the audit log names the key that acted
    key_id: int | None = None

    def can_see(self, tenant_id: int) -> bool:
        return self.admin or self.tenant_id == tenant_id

    def scope(self, tenant_id: int) -> int:
        """The tenant id if this caller may act on it; otherwise NotFound (never reveal that it exists)."""
        if not self.can_see(tenant_id):
            raise errors.NotFound(f"tenant {tenant_id} not found")
        return tenant_id

    def require_admin(self) -> None:
        if not self.admin:
            raise errors.Forbidden("this operation needs the admin key")


def bearer(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    return value.strip() or None if scheme.lower() == "bearer" else None


class BearerAuth(AbstractAuthenticationMiddleware):
    async def authenticate_request(self, connection: ASGIConnection) -> AuthenticationResult:
        key = bearer(connection.headers.get("authorization"))
        if key is None:
            raise errors.Unauthorized("missing Authorization: Bearer <key>")
        state = connection.app.state
        if keys_match(key, state.admin_key):
            return AuthenticationResult(user=Principal(admin=True), auth=key)
        found = await tenants.authenticate_key(state.pool, key)
        if found is None:
            raise errors.Unauthorized("invalid or revoked API key")
        logs.tenant_id.set(found[1])
        return AuthenticationResult(user=Principal(tenant_id=found[1], key_id=found[0]), auth=key)


def principal(request: Request) -> Principal:
    """Dependency: the authenticated caller."""
    return request.user
