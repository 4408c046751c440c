"""What PowerMTA must know about the engine's senders: each IP with today's quota, and each domain's DKIM key."""

from __future__ import annotations

import asyncpg
import msgspec

from engine import secrets
from sql import q


class MtaIp(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    tenant_id: int
    tenant_slug: str
    vmta_name: str
    address: str
    hostname: str
    status: str
    daily_quota: int


class MtaKey(msgspec.Struct, frozen=True, kw_only=True):
    domain: str
    selector: str
    private_pem: str


class Inventory(msgspec.Struct, frozen=True, kw_only=True):
    ips: list[MtaIp]
    keys: list[MtaKey]


async def load(db: asyncpg.Connection | asyncpg.Pool, secret_key: str, tenant_id: int | None = None) -> Inventory:
    """Every non-retired IP and every domain key of the tenant (every tenant's with None), in stable order."""
    ips = [MtaIp(**r) for r in await db.fetch(q("mta-vmtas"), tenant_id)]
    keys = [MtaKey(domain=r["name"], selector=r["dkim_selector"],
                   private_pem=secrets.decrypt(secret_key, r["dkim_private_key_enc"]))
            for r in await db.fetch(q("mta-domain-keys"), tenant_id)]
    return Inventory(ips=ips, keys=keys)
