"""The seed's data: two tenants with their IPs, sending domains, tags, data sources and MailWizz instance.

Addresses come only from the documentation ranges (RFC 5737) and names only from `.example` (RFC 2606):
nothing here can ever point at a real host. Every insert is idempotent, so running the seed twice changes nothing.
"""

from __future__ import annotations

from pathlib import Path

import asyncpg
import msgspec

from engine.languages import Language
from engine.templates import seed_starters
from sql import q


class SeedTenant(msgspec.Struct, frozen=True, kw_only=True):
    slug: str
    name: str
    timezone: str
    ip_block: str          # a /24 documentation range, first three octets
    mail_domain: str       # sending domains are <mail_domain>-NN.example
    # the sender identity every layout shows (engine/identities.py); operators replace it with their own
    sender_name: str
    sender_address: str
    sender_website: str


TENANTS = (
    SeedTenant(slug="sos-expat", name="SOS-Expat", timezone="Europe/Paris", ip_block="192.0.2", mail_domain="sos-expat-mail",
               sender_name="Claire Martin", sender_address="12 rue de l'Exemple, 75001 Paris, France",
               sender_website="https://sos-expat.example"),
    SeedTenant(slug="ulixai", name="Ulixai", timezone="Europe/Paris", ip_block="198.51.100", mail_domain="ulixai-mail",
               sender_name="Thomas Laurent", sender_address="8 avenue de l'Exemple, 69002 Lyon, France",
               sender_website="https://ulixai.example"),
)
IPS_PER_TENANT = 50
DOMAINS_PER_TENANT = 50
ACTIVE_DAILY_CAP = 50_000

# The sixteen base tags: one per language, and the seven audience families of the original system.
BASE_TAGS = [f"lang-{lang.value}" for lang in Language] + [
    "prestataire", "avocat", "expatrie", "client", "partenaire", "blogueur", "influenceur",
]

# Field mappings turn each source's native payload into contact fields (dotted paths into the JSON body).
DATA_SOURCES = (
    ("scraper_pro", "Scraper-Pro", {"email": "email", "first_name": "first_name", "last_name": "last_name",
                                    "company": "company", "website": "website", "country": "country",
                                    "language": "language", "category": "category", "tags": "tags"}),
    ("backlink_engine", "Backlink Engine", {"email": "contact.email", "first_name": "contact.name",
                                            "company": "site.name", "website": "site.url",
                                            "language": "site.language", "category": "site.category"}),
    ("csv", "CSV", {}),
    ("api", "API", {}),
)

def doubling_curve(start: int, target: int) -> list[int]:
    """50, 100, 200 ... ending exactly at the target."""
    curve, quota = [], start
    while quota < target:
        curve.append(quota)
        quota *= 2
    curve.append(target)
    return curve


def ip_rows(tenant: SeedTenant) -> tuple[list[str], list[str], list[str], list[int]]:
    numbers = range(1, IPS_PER_TENANT + 1)
    addresses = [f"{tenant.ip_block}.{10 + n}" for n in numbers]
    hostnames = [f"mta{n:02d}.{tenant.mail_domain}.example" for n in numbers]
    vmtas = [f"{tenant.slug}-vmta{n:02d}" for n in numbers]
    weights = [10] * IPS_PER_TENANT
    return addresses, hostnames, vmtas, weights


async def seed(db: asyncpg.Connection, library_root: Path | None = None) -> list[int]:
    """Create the seed's data if missing; return the tenant ids in seed order.

    `library_root` is the template library's directory (engine/starters/library by default)."""
    ids = []
    async with db.transaction():
        for tenant in TENANTS:
            tenant_id = await db.fetchval(q("seed-tenant"), tenant.slug, tenant.name, tenant.timezone, "pmta")
            ids.append(tenant_id)
            for kind, name, mapping in DATA_SOURCES:
                await db.execute(q("seed-data-source"), tenant_id, kind, name, mapping)
            await db.execute(q("seed-tags"), tenant_id, BASE_TAGS)
            await db.execute(q("seed-ips"), tenant_id, "default", ACTIVE_DAILY_CAP, *ip_rows(tenant))
            await db.execute(q("seed-warmup-plans"), tenant_id, doubling_curve(50, ACTIVE_DAILY_CAP))
            domains = [f"{tenant.mail_domain}-{n:02d}.example" for n in range(1, DOMAINS_PER_TENANT + 1)]
            await db.execute(q("seed-domains"), tenant_id, domains)
            await db.execute(q("seed-domain-ips"), tenant_id)
            await db.execute(q("seed-mailwizz"), tenant_id, "MailWizz",
                             f"https://mailwizz.{tenant.mail_domain}.example/api")
            await db.execute(q("identities-seed-tenant"), tenant_id, tenant.sender_name, tenant.name,
                             tenant.sender_address, tenant.sender_website)
            await seed_starters(db, tenant_id, tenant.slug, library_root)
    return ids
