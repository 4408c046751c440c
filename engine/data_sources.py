"""Data sources: where contacts come from, their webhook secrets, and the field mapping of their payloads."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets as pysecrets
from enum import StrEnum
from typing import Annotated, Any

import asyncpg
import msgspec

from engine import secrets
from engine.contacts import ContactIn, IngestReport, Outcome
from engine.errors import Conflict, Invalid, NotFound, Unauthorized
from sql import q

# A signed request older or newer than this is refused, so a captured request cannot be replayed later.
REPLAY_WINDOW = 300  # seconds (the window Stripe and Slack use for the same scheme)
class DataSourceKind(StrEnum):
    """The data_source_kind enum."""

    SCRAPER_PRO = "scraper_pro"
    BACKLINK_ENGINE = "backlink_engine"
    CSV = "csv"
    API = "api"

TARGETS = ("email", "first_name", "last_name", "company", "website", "country", "language", "category", "tags")
ITEMS = "$items"  # mapping key: dotted path to the list of records inside the payload


class DataSource(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    tenant_id: int
    kind: str
    name: str
    field_mapping: dict[str, str]
    active: bool
    has_secret: bool
    created_at: dt.datetime


class CreatedDataSource(msgspec.Struct, frozen=True, kw_only=True):
    """The answer to a creation or rotation: the only time the webhook secret is shown."""

    source: DataSource
    secret: str


Mapping = Annotated[dict[str, str], msgspec.Meta(
    description="contact field (or custom.<name>, or $items) -> dotted path into the source's JSON payload",
    examples=[{"$items": "results", "email": "contact.email", "first_name": "contact.name", "company": "site.name"}])]


def check_mapping(mapping: dict[str, str]) -> None:
    for key, path in mapping.items():
        if not (key in TARGETS or key == ITEMS or (key.startswith("custom.") and len(key) > 7)):
            raise Invalid(f"field_mapping.{key}: expected one of {', '.join(TARGETS)}, custom.<name> or $items",
                          field=f"field_mapping.{key}")
        if not path or any(not part for part in path.split(".")):
            raise Invalid(f"field_mapping.{key}: expected a dotted path such as contact.email",
                          field=f"field_mapping.{key}")


async def create_data_source(db: asyncpg.Connection, secret_key: str, tenant_id: int, *, kind: str, name: str,
                             field_mapping: dict[str, str]) -> CreatedDataSource:
    check_mapping(field_mapping)
    secret = pysecrets.token_hex(32)
    try:
        row = await db.fetchrow(q("create-data-source"), tenant_id, kind, name,
                                secrets.encrypt(secret_key, secret), field_mapping)
    except asyncpg.UniqueViolationError as exc:
        raise Conflict(f"a data source named {name!r} already exists", field="name") from exc
    return CreatedDataSource(source=DataSource(**row), secret=secret)


async def list_data_sources(db: asyncpg.Connection, tenant_id: int) -> list[DataSource]:
    return [DataSource(**r) for r in await db.fetch(q("list-data-sources"), tenant_id)]


async def rotate_secret(db: asyncpg.Connection, secret_key: str, tenant_id: int, source_id: int) -> CreatedDataSource:
    secret = pysecrets.token_hex(32)
    if await db.fetchval(q("set-data-source-secret"), tenant_id, source_id, secrets.encrypt(secret_key, secret)) is None:
        raise NotFound(f"data source {source_id} not found")
    source = next(s for s in await list_data_sources(db, tenant_id) if s.id == source_id)
    return CreatedDataSource(source=source, secret=secret)


async def set_mapping(db: asyncpg.Connection, tenant_id: int, source_id: int, mapping: dict[str, str]) -> DataSource:
    check_mapping(mapping)
    row = await db.fetchrow(q("set-data-source-mapping"), tenant_id, source_id, mapping)
    if row is None:
        raise NotFound(f"data source {source_id} not found")
    return DataSource(**row)


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The X-Signature value for a body sent at `timestamp` (unix seconds, as sent in X-Timestamp)."""
    return "sha256=" + hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def verify_signature(secret: str, timestamp: str | None, signature: str | None, body: bytes, now: float) -> None:
    """Raise Unauthorized unless the signature matches and the timestamp is within the replay window."""
    if not timestamp or not signature:
        raise Unauthorized("missing X-Timestamp or X-Signature header")
    if not timestamp.isdigit() or abs(now - int(timestamp)) > REPLAY_WINDOW:
        raise Unauthorized(f"X-Timestamp outside the {REPLAY_WINDOW // 60}-minute window")
    if not hmac.compare_digest(sign(secret, timestamp, body), signature.strip()):
        raise Unauthorized("bad signature")


async def webhook_source(db: asyncpg.Connection | asyncpg.Pool, secret_key: str,
                         source_id: int) -> tuple[int, str, dict[str, str]]:
    """(tenant_id, secret, mapping) of an active source that has a secret; Unauthorized otherwise."""
    row = await db.fetchrow(q("webhook-source"), source_id)
    if row is None or not row["active"] or row["secret_enc"] is None:
        raise Unauthorized("bad signature")  # an unknown source looks like a wrong secret: reveal nothing
    return row["tenant_id"], secrets.decrypt(secret_key, row["secret_enc"]), row["field_mapping"]


def _at(payload: Any, path: str) -> Any:
    for part in path.split("."):
        if isinstance(payload, dict):
            payload = payload.get(part)
        elif isinstance(payload, list) and part.isdigit() and int(part) < len(payload):
            payload = payload[int(part)]
        else:
            return None
    return payload


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, (dict, list)):
        return None
    return str(value)


def map_payload(payload: Any, mapping: dict[str, str], tenant_id: int,
                source_id: int) -> tuple[list[ContactIn], list[int], list[Outcome]]:
    """Records of a native payload as contacts, the record index of each, and the records that did not map."""
    records = _at(payload, mapping[ITEMS]) if ITEMS in mapping else payload
    if isinstance(records, dict):
        records = [records]
    if not isinstance(records, list):
        raise Invalid("body: expected a JSON object or a list of them at the mapped place", field="body")
    found: list[ContactIn] = []
    positions: list[int] = []
    failed: list[Outcome] = []
    fields = {k: v for k, v in mapping.items() if k != ITEMS} or {t: t for t in TARGETS}
    for index, record in enumerate(records):
        values: dict[str, Any] = {}
        custom: dict[str, Any] = {}
        for target, path in fields.items():
            value = _at(record, path)
            if target.startswith("custom."):
                if value is not None:
                    custom[target[7:]] = value
            elif target == "tags":
                tags = value.split(",") if isinstance(value, str) else value
                values["tags"] = [str(t).strip() for t in tags or () if str(t).strip()]
            elif _text(value) is not None:
                values[target] = _text(value)
        if not values.get("email"):
            failed.append(Outcome(index=index, outcome="rejected", reason="email: missing in the payload"))
            continue
        found.append(ContactIn(tenant_id=tenant_id, data_source_id=source_id, custom=custom or None, **values))
        positions.append(index)
    return found, positions, failed


def merge_report(report: IngestReport, positions: list[int], failed: list[Outcome]) -> IngestReport:
    """An ingest report renumbered to the payload's records, with the unmappable ones added."""
    results = [msgspec.structs.replace(r, index=positions[r.index]) for r in report.results] + failed
    results.sort(key=lambda r: r.index)
    return msgspec.structs.replace(report, results=results, rejected=report.rejected + len(failed))
