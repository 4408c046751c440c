"""Data sources (their webhook secrets and field mappings) and the signed webhook that feeds contacts in."""

from __future__ import annotations

import time
from typing import Annotated, Literal

import msgspec
from litestar import Request, get, post, put
from litestar.datastructures import State
from litestar.params import JSONBody

from api import audit
from api.contacts import IngestResult, enqueue_validation
from api.deps import Caller, Config, Db, RedisClient, TenantId, id_param
from engine import contacts, data_sources
from engine.contacts import MAX_BATCH
from engine.data_sources import CreatedDataSource, DataSource, Mapping
from engine.errors import Invalid, TooLarge

SourceId = id_param("data source")


class DataSourceCreate(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    kind: Annotated[Literal["scraper_pro", "backlink_engine", "csv", "api"], msgspec.Meta(examples=["scraper_pro"])]
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=200, examples=["Scraper-Pro EU"])]
    field_mapping: Mapping = {}


class MappingUpdate(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    field_mapping: Mapping


@post("/data-sources/{tenant_id:int}", operation_id="createDataSource", summary="Create a data source",
      tags=["data-sources"],
      description="The answer carries the webhook secret once, as `secret`; it is stored encrypted and never "
                  "shown again (rotate it to get a new one).")
async def create_data_source(tenant_id: TenantId, data: JSONBody[DataSourceCreate], db: Db, caller: Caller,
                             state: State) -> CreatedDataSource:
    return await data_sources.create_data_source(db, state.secret_key, caller.scope(tenant_id), kind=data.kind,
                                                 name=data.name, field_mapping=data.field_mapping)


@get("/data-sources/{tenant_id:int}", operation_id="listDataSources", summary="List data sources",
     tags=["data-sources"], description="Secrets are never listed; `has_secret` says whether webhooks can work.")
async def list_data_sources(tenant_id: TenantId, db: Db, caller: Caller) -> list[DataSource]:
    return await data_sources.list_data_sources(db, caller.scope(tenant_id))


@post("/data-sources/{tenant_id:int}/{source_id:int}/rotate-secret", operation_id="rotateDataSourceSecret",
      summary="Rotate a webhook secret", tags=["data-sources"], status_code=200,
      description="A new secret, shown once; the old one stops working at once.")
async def rotate_secret(tenant_id: TenantId, source_id: SourceId, db: Db, caller: Caller,
                        state: State) -> CreatedDataSource:
    return await data_sources.rotate_secret(db, state.secret_key, caller.scope(tenant_id), source_id)


@put("/data-sources/{tenant_id:int}/{source_id:int}/mapping", operation_id="setDataSourceMapping",
     summary="Set a data source's field mapping", tags=["data-sources"],
     description="Contact field (or `custom.<name>`) -> dotted path into the source's native JSON payload; "
                 "`$items` names the path of the list of records when the payload wraps them.")
async def set_mapping(tenant_id: TenantId, source_id: SourceId, data: JSONBody[MappingUpdate], db: Db,
                      caller: Caller) -> DataSource:
    return await data_sources.set_mapping(db, caller.scope(tenant_id), source_id, data.field_mapping)


@post("/webhooks/{source_id:int}", operation_id="receiveWebhook", summary="Receive contacts from a data source",
      tags=["data-sources"], status_code=200, security=[],
      description="No bearer key: the request is signed. `X-Timestamp` is the unix time in seconds and "
                  "`X-Signature` is `sha256=` + hex HMAC-SHA256, keyed with the source's secret, of "
                  "`<X-Timestamp>.` followed by the raw body bytes. Requests more than 5 minutes off are refused "
                  "(replays). The body is the source's native JSON, turned into contacts by its field mapping. "
                  "A bad signature is 401 and nothing is written.")
async def receive_webhook(source_id: SourceId, request: Request, state: State, redis: RedisClient,
                          settings: Config) -> IngestResult:
    body = await request.body()
    tenant_id, secret, mapping = await data_sources.webhook_source(state.pool, state.secret_key, source_id)
    data_sources.verify_signature(secret, request.headers.get("x-timestamp"), request.headers.get("x-signature"),
                                  body, time.time())
    try:
        payload = msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        raise Invalid(f"body: not JSON ({exc})", field="body") from exc
    found, positions, failed = data_sources.map_payload(payload, mapping, tenant_id, source_id)
    if len(found) + len(failed) > MAX_BATCH:
        raise TooLarge(f"body: at most {MAX_BATCH:,} records per request", field="body")
    audit.set_tenant(request, tenant_id)
    async with audit.transaction(request) as db:
        report = await contacts.ingest(db, found, tenant_id=tenant_id)
    await enqueue_validation(redis, settings, report.to_validate)
    merged = data_sources.merge_report(report, positions, failed)
    return IngestResult(created=merged.created, updated=merged.updated, unchanged=merged.unchanged,
                        rejected=merged.rejected, results=merged.results)


ROUTES = [create_data_source, list_data_sources, rotate_secret, set_mapping, receive_webhook]
