"""Dashboard sessions: sealed (encrypted and authenticated) with a key derived from the engine's secret key."""

from __future__ import annotations

import base64
import hashlib
import secrets
from functools import lru_cache

import msgspec
from cryptography.fernet import Fernet, InvalidToken

COOKIE = "ee_dashboard"
# A session lasts a working day; Fernet's timestamp enforces it, so a stolen cookie expires too.
SESSION_SECONDS = 8 * 3600


class Session(msgspec.Struct, frozen=True, kw_only=True):
    """Who opened the session (the admin, or one tenant key by its id) and the token its forms carry."""

    admin: bool = False
    tenant_id: int | None = None
    key_id: int | None = None
    csrf: str


def new_session(*, admin: bool = False, tenant_id: int | None = None, key_id: int | None = None) -> Session:
    return Session(admin=admin, tenant_id=tenant_id, key_id=key_id, csrf=secrets.token_urlsafe(24))


@lru_cache(maxsize=8)
def _fernet(secret_key: str) -> Fernet:
    # Its own key, not the one secrets at rest are encrypted with: a cookie can never be a stored secret's oracle.
    digest = hashlib.sha256(b"email-engine/dashboard-session\x00" + secret_key.encode()).digest()
    return Fernet(base64.urlsafe_b64encode(digest))


def seal(secret_key: str, session: Session) -> str:
    return _fernet(secret_key).encrypt(msgspec.json.encode(session)).decode()


def unseal(secret_key: str, token: str | None) -> Session | None:
    """The session in a cookie, or None if it is absent, forged, altered or older than SESSION_SECONDS."""
    if not token or len(token) > 4096:
        return None
    try:
        return msgspec.json.decode(_fernet(secret_key).decrypt(token.encode(), ttl=SESSION_SECONDS), type=Session)
    except (InvalidToken, msgspec.DecodeError, msgspec.ValidationError, UnicodeError):
        return None
