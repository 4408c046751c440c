"""Secrets at rest: API keys are hashed, secrets the engine must read back are encrypted (Fernet)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from functools import lru_cache
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

KEY_PREFIX = "ee_"


def new_api_key() -> str:
    """A fresh 256-bit key, URL-safe, with a recognisable prefix (secret scanners look for one)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def keys_match(given: str, expected: str) -> bool:
    return hmac.compare_digest(hash_key(given), hash_key(expected))


@lru_cache(maxsize=8)
def _fernet(secret_key: str) -> Fernet:
    # Derive a Fernet key from the configured secret so any string of 16+ characters works.
    digest = hashlib.sha256(b"email-engine/at-rest\x00" + secret_key.encode()).digest()
    return Fernet(base64.urlsafe_b64encode(digest))


def encrypt(secret_key: str, plaintext: str) -> bytes:
    return _fernet(secret_key).encrypt(plaintext.encode())


def decrypt(secret_key: str, token: bytes) -> str:
    try:
        return _fernet(secret_key).decrypt(bytes(token)).decode()
    except InvalidToken as exc:
        raise ValueError("stored secret cannot be decrypted with this EMAIL_ENGINE_SECRET_KEY") from exc


def load_or_create(path: Path, *, generate=lambda: secrets.token_urlsafe(32)) -> tuple[str, bool]:
    """Read a secret kept in a 0600 file, creating it on first use; return (value, created)."""
    if path.exists():
        return path.read_text().strip(), False
    path.parent.mkdir(parents=True, exist_ok=True)
    value = generate()
    fd = _open_private(path)
    with open(fd, "w") as f:
        f.write(value + "\n")
    return value, True


def _open_private(path: Path) -> int:
    import os

    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
