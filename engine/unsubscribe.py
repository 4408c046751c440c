"""Signed unsubscribe tokens and the List-Unsubscribe headers (RFC 2369 + RFC 8058 one-click).

A token is `base64url(payload) "." base64url(mac)`: the payload carries everything the unsubscribe endpoint
needs (tenant, address, contact, campaign, language), so verifying AND acting on a token needs no lookup.
The address itself is inside the MAC'd payload rather than a contact id: a token can therefore never
unsubscribe any other address, it keeps working after the contact is erased or for addresses that were
never contacts (test sends), and the page can be shown without touching the database. The price is length:
about 40 characters plus the address. Tokens do not expire (RFC 8058 links must keep working in old mail);
changing EMAIL_ENGINE_SECRET_KEY invalidates every link already sent.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from functools import lru_cache

import msgspec

from engine.errors import Invalid
from engine.languages import template_language
from engine.validation import normalise_email

VERSION = 1
# The language travels as one byte: its index here. Append only: tokens already in mailboxes use it.
LANGUAGE_CODES: tuple[str, ...] = ("fr", "en", "es", "de", "pt", "ru", "zh", "hi", "ar")
# 16 bytes of HMAC-SHA256 = 128 bits against forgery, the strength of the whole scheme; no need for more.
MAC_BYTES = 16
# Longest possible token: 254-byte address + three 10-byte varints + 2 bytes, base64'd, plus the MAC.
MAX_TOKEN = 420
_TOKEN = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$")
ONE_CLICK = "List-Unsubscribe=One-Click"


class UnsubscribeToken(msgspec.Struct, frozen=True, kw_only=True):
    tenant_id: int
    email: str
    contact_id: int = 0
    campaign_id: int = 0
    language: str = "en"


@lru_cache(maxsize=8)
def _key(secret_key: str) -> bytes:
    # A key of its own, derived from the engine's secret, so a MAC here is never valid in another use of it.
    return hmac.new(secret_key.encode(), b"email-engine/unsubscribe/v1", hashlib.sha256).digest()


@lru_cache(maxsize=8)
def _keyed(secret_key: str) -> hmac.HMAC:
    # Keyed once: a copy per token costs about half of keying HMAC afresh (this runs for every message).
    return hmac.new(_key(secret_key), digestmod=hashlib.sha256)


def _mac(secret_key: str, payload: bytes) -> bytes:
    mac = _keyed(secret_key).copy()
    mac.update(payload)
    return mac.digest()[:MAC_BYTES]


def _varint(n: int) -> bytes:
    """Unsigned LEB128: ids are small, so most take one to three bytes instead of eight."""
    if n < 0:
        raise ValueError("ids are never negative")
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("truncated varint")
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if not byte & 0x80:
            return value, pos


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def make_token(secret_key: str, *, tenant_id: int, email: str, contact_id: int = 0, campaign_id: int = 0,
               language: str | None = None) -> str:
    """A token that unsubscribes exactly this address from this tenant."""
    address = normalise_email(email)
    if address is None:
        raise Invalid(f"email: cannot make an unsubscribe token for {email!r}", field="email")
    lang = LANGUAGE_CODES.index(template_language(language))
    payload = (bytes((VERSION, lang)) + _varint(tenant_id) + _varint(contact_id) + _varint(campaign_id)
               + address.encode())
    return f"{_b64(payload)}.{_b64(_mac(secret_key, payload))}"


def read_token(secret_key: str, token: str) -> UnsubscribeToken | None:
    """The token's contents if its MAC is ours (constant-time check, no lookup); None for anything else."""
    if len(token) > MAX_TOKEN or not _TOKEN.match(token):
        return None
    body, _, mac = token.partition(".")
    try:
        payload, given = _unb64(body), _unb64(mac)
    except (binascii.Error, ValueError):
        return None
    # Only the canonical spelling is accepted: base64's spare low bits would otherwise let several strings
    # carry one token, and a changed token must be a refused token.
    if _b64(payload) != body or _b64(given) != mac:
        return None
    if not hmac.compare_digest(_mac(secret_key, payload), given):
        return None
    # Past this point the payload is one we wrote, so a parse error means a format change, not an attack.
    try:
        if len(payload) < 2 or payload[0] != VERSION or payload[1] >= len(LANGUAGE_CODES):
            return None
        tenant_id, pos = _read_varint(payload, 2)
        contact_id, pos = _read_varint(payload, pos)
        campaign_id, pos = _read_varint(payload, pos)
        email = payload[pos:].decode()
    except (ValueError, UnicodeDecodeError):
        return None
    if not email or tenant_id == 0:
        return None
    return UnsubscribeToken(tenant_id=tenant_id, email=email, contact_id=contact_id, campaign_id=campaign_id,
                            language=LANGUAGE_CODES[payload[1]])


def unsubscribe_url(public_url: str, token: str) -> str:
    """The link for the message body and the List-Unsubscribe header."""
    return f"{public_url.rstrip('/')}/u/{token}"


def list_unsubscribe_headers(public_url: str, token: str, mailto: str | None = None) -> dict[str, str]:
    """Both headers Gmail and Yahoo require of bulk mail (reference §1.1-1.2); the HTTPS URI comes first."""
    uris = [f"<{unsubscribe_url(public_url, token)}>"]
    if mailto:
        uris.append(f"<{mailto if mailto.startswith('mailto:') else 'mailto:' + mailto}>")
    return {"List-Unsubscribe": ", ".join(uris), "List-Unsubscribe-Post": ONE_CLICK}
