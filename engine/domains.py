"""Sending domains: their DKIM key pair (generated here, private half encrypted at rest), the IPs that send
for them, and the SPF / DKIM / DMARC / PTR check results that the DNS checks fill in (engine/dns_checks.py)."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import re

import asyncpg
import idna
import msgspec
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from engine import secrets
from engine.errors import Conflict, Invalid, NotFound
from sql import q

# RSA 2048: what every receiver verifies and what fits one DNS TXT string set; 1024 is deprecated
# (RFC 8301 §3.2) and 4096 overflows many DNS providers' TXT limits.
DKIM_KEY_BITS = 2048
DEFAULT_SELECTOR = "ee1"
# A selector is one DNS label (RFC 6376 §3.1); `ee1` -> `ee2` on rotation keeps old and new records apart.
SELECTOR = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
# ok: published as expected; missing: nothing published; wrong: something else published (the report says
# what); error: DNS itself did not answer, so nothing is known.
CHECK_STATUSES = frozenset({"unchecked", "ok", "missing", "wrong", "error"})


class Domain(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    tenant_id: int
    name: str
    dkim_selector: str
    dkim_record: str              # the DNS name of the TXT record: <selector>._domainkey.<name>
    dkim_public_key: str | None   # the TXT value to publish; None until a key pair was generated
    dkim_rotated_at: dt.datetime | None
    ip_ids: list[int]
    spf_status: str
    dkim_status: str
    dmarc_status: str
    ptr_status: str
    checked_at: dt.datetime | None
    created_at: dt.datetime
    updated_at: dt.datetime


class KeyPair(msgspec.Struct, frozen=True, kw_only=True):
    private_pem: str
    txt_value: str  # v=DKIM1; k=rsa; p=<base64 SubjectPublicKeyInfo>


def generate_key_pair() -> KeyPair:
    """A fresh RSA key pair: the PEM private key, and the public key as its DKIM TXT record value."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=DKIM_KEY_BITS)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return KeyPair(private_pem=pem, txt_value=f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode()}")


async def _new_keys(secret_key: str) -> tuple[str, bytes]:
    # ~70 ms of CPU per key: off the event loop so requests around it keep flowing.
    pair = await asyncio.to_thread(generate_key_pair)
    return pair.txt_value, secrets.encrypt(secret_key, pair.private_pem)


def normalise_name(name: str) -> str:
    """The domain in lowercase ASCII (IDNA); Invalid naming `name` unless it has at least two labels."""
    text = name.strip().rstrip(".").lower()
    try:
        ascii_name = idna.encode(text, uts46=True).decode()
    except idna.IDNAError as exc:
        raise Invalid(f"name: {name!r} is not a valid domain name ({exc})", field="name") from exc
    if "." not in ascii_name or len(ascii_name) > 253:
        raise Invalid(f"name: {name!r} is not a fully qualified domain name", field="name")
    return ascii_name


def check_selector(selector: str) -> str:
    if not SELECTOR.match(selector):
        raise Invalid(f"dkim_selector: {selector!r} must be one DNS label (lowercase letters, digits, '-')",
                      field="dkim_selector")
    return selector


def next_selector(selector: str) -> str:
    """ee1 -> ee2, s -> s2: the selector a rotation publishes under, beside the old one."""
    match = re.match(r"^(.*?)(\d+)$", selector)
    return f"{match.group(1)}{int(match.group(2)) + 1}" if match else f"{selector}2"


async def _set_ips(db: asyncpg.Connection, tenant_id: int, domain_id: int, ip_ids: list[int]) -> None:
    unique = sorted(set(ip_ids))
    foreign = await db.fetch(q("domain-foreign-ips"), tenant_id, unique)
    if foreign:
        raise NotFound(f"ip_ids: IP {foreign[0]['id']} not found", field="ip_ids")
    await db.execute(q("domain-set-ips"), domain_id, unique)


async def create_domain(db: asyncpg.Connection, secret_key: str, tenant_id: int, *, name: str,
                        ip_ids: list[int] | None = None, dkim_selector: str = DEFAULT_SELECTOR) -> Domain:
    """A sending domain with a fresh DKIM key pair and the tenant's IPs that send for it."""
    ascii_name = normalise_name(name)
    check_selector(dkim_selector)
    public, private_enc = await _new_keys(secret_key)
    async with db.transaction():
        try:
            domain_id = await db.fetchval(q("create-domain"), tenant_id, ascii_name, dkim_selector, public, private_enc)
        except asyncpg.UniqueViolationError as exc:
            raise Conflict(f"name: {ascii_name!r} is already a sending domain", field="name") from exc
        except asyncpg.ForeignKeyViolationError as exc:
            raise NotFound(f"tenant {tenant_id} not found") from exc
        await _set_ips(db, tenant_id, domain_id, ip_ids or [])
    return await get_domain(db, tenant_id, domain_id)


async def list_domains(db: asyncpg.Connection, tenant_id: int) -> list[Domain]:
    return [Domain(**r) for r in await db.fetch(q("list-domains"), tenant_id)]


async def get_domain(db: asyncpg.Connection, tenant_id: int, domain_id: int) -> Domain:
    row = await db.fetchrow(q("get-domain"), tenant_id, domain_id)
    if row is None:
        raise NotFound(f"domain {domain_id} not found")
    return Domain(**row)


async def update_domain(db: asyncpg.Connection, tenant_id: int, domain_id: int, *,
                        ip_ids: list[int] | None = None) -> Domain:
    """Replace the IPs that send for the domain (None leaves them)."""
    async with db.transaction():
        await get_domain(db, tenant_id, domain_id)
        if ip_ids is not None:
            await _set_ips(db, tenant_id, domain_id, ip_ids)
            await db.execute(q("update-domain"), tenant_id, domain_id, None, None, None, None)
    return await get_domain(db, tenant_id, domain_id)


async def record_checks(db: asyncpg.Connection, tenant_id: int, domain_id: int, *, spf: str | None = None,
                        dkim: str | None = None, dmarc: str | None = None, ptr: str | None = None) -> Domain:
    """Store DNS check results; each is one of CHECK_STATUSES."""
    for field, value in (("spf_status", spf), ("dkim_status", dkim), ("dmarc_status", dmarc), ("ptr_status", ptr)):
        if value is not None and value not in CHECK_STATUSES:
            raise Invalid(f"{field}: expected one of {', '.join(sorted(CHECK_STATUSES))}, got {value!r}", field=field)
    if await db.fetchval(q("update-domain"), tenant_id, domain_id, spf, dkim, dmarc, ptr) is None:
        raise NotFound(f"domain {domain_id} not found")
    return await get_domain(db, tenant_id, domain_id)


async def rotate_dkim(db: asyncpg.Connection, secret_key: str, tenant_id: int, domain_id: int,
                      dkim_selector: str | None = None) -> Domain:
    """A new key pair. A domain that had none keeps its selector; otherwise the next one (ee1 -> ee2), so the
    old record can stay published until mail signed with it has been delivered."""
    state = await db.fetchrow(q("domain-dkim-state"), tenant_id, domain_id)
    if state is None:
        raise NotFound(f"domain {domain_id} not found")
    selector = check_selector(dkim_selector) if dkim_selector else (
        next_selector(state["dkim_selector"]) if state["has_key"] else state["dkim_selector"])
    public, private_enc = await _new_keys(secret_key)
    await db.execute(q("rotate-domain-dkim"), tenant_id, domain_id, selector, public, private_enc)
    return await get_domain(db, tenant_id, domain_id)


async def generate_missing_keys(db: asyncpg.Connection | asyncpg.Pool, secret_key: str,
                                tenant_id: int | None = None) -> int:
    """A key pair for every domain that has none (the seeded ones), under its current selector; how many."""
    rows = await db.fetch(q("domains-without-key"), tenant_id)
    # Key generation runs in threads, four at a time (OpenSSL releases the GIL); the writes follow in order.
    limit = asyncio.Semaphore(4)

    async def make() -> tuple[str, bytes]:
        async with limit:
            return await _new_keys(secret_key)

    keys = await asyncio.gather(*(make() for _ in rows))
    for row, (public, private_enc) in zip(rows, keys, strict=True):
        await db.execute(q("rotate-domain-dkim"), row["tenant_id"], row["id"], row["dkim_selector"], public,
                         private_enc)
    return len(rows)


async def dkim_private_key(db: asyncpg.Connection, secret_key: str, tenant_id: int,
                           domain_id: int) -> tuple[str, str] | None:
    """(selector, PEM private key) for signing (PowerMTA config); None when no key was generated yet."""
    row = await db.fetchrow(q("domain-private-key"), tenant_id, domain_id)
    if row is None:
        raise NotFound(f"domain {domain_id} not found")
    if row["dkim_private_key_enc"] is None:
        return None
    return row["dkim_selector"], secrets.decrypt(secret_key, row["dkim_private_key_enc"])


async def delete_domain(db: asyncpg.Connection, tenant_id: int, domain_id: int) -> None:
    if await db.fetchval(q("delete-domain"), tenant_id, domain_id) is None:
        raise NotFound(f"domain {domain_id} not found")
