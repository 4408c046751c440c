"""Every PostgreSQL ENUM has one Python StrEnum with the same values in the same order."""

from __future__ import annotations

from enum import StrEnum

from engine.campaigns import CampaignStatus, CampaignTransport, SendStatus
from engine.contacts import ContactStatus
from engine.data_sources import DataSourceKind
from engine.health import Scope as HealthScope
from engine.imports import ImportStatus
from engine.ips import IpStatus
from engine.layout import Layout
from engine.replies import ReplyKind
from engine.sending.grants import QuotaScope
from engine.suppression import SuppressionReason
from engine.templates import TemplateStep
from engine.tenants import TenantTransport

PYTHON: dict[str, type[StrEnum]] = {
    "campaign_status": CampaignStatus,
    "campaign_transport": CampaignTransport,
    "contact_status": ContactStatus,
    "data_source_kind": DataSourceKind,
    "health_scope": HealthScope,
    "import_status": ImportStatus,
    "ip_status": IpStatus,
    "quota_scope": QuotaScope,
    "reply_kind": ReplyKind,
    "send_status": SendStatus,
    "suppression_reason": SuppressionReason,
    "tenant_transport": TenantTransport,
    "email_layout": Layout,
    "template_step": TemplateStep,
}


async def test_every_postgres_enum_matches_its_strenum(db) -> None:
    rows = await db.fetch("SELECT t.typname, array_agg(e.enumlabel ORDER BY e.enumsortorder) AS labels "
                          "FROM pg_type t JOIN pg_enum e ON e.enumtypid = t.oid "
                          "JOIN pg_namespace n ON n.oid = t.typnamespace WHERE n.nspname = 'public' "
                          "GROUP BY t.typname")
    found = {r["typname"]: list(r["labels"]) for r in rows}
    assert set(found) == set(PYTHON), f"an enum without its StrEnum (or the reverse): {set(found) ^ set(PYTHON)}"
    for name, labels in found.items():
        assert labels == [m.value for m in PYTHON[name]], name
