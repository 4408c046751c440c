"""Tenants and their API keys (admin)."""

from __future__ import annotations

from typing import Annotated

import msgspec
from litestar import delete, get, patch, post
from litestar.params import JSONBody

from api.deps import Caller, Db, TenantId, id_param
from engine import tenants
from engine.tenants import ApiKey, CreatedApiKey, SendingPolicy, SendingPolicyPatch, Tenant

KeyId = id_param("API key")


class TenantCreate(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    slug: Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$", examples=["sos-expat"],
                                      description="lowercase letters, digits and hyphens")]
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=200, examples=["SOS-Expat"])]
    timezone: Annotated[str, msgspec.Meta(min_length=1, max_length=64, examples=["Europe/Paris"],
                                          description="IANA zone; the warmup day is counted in it")] = "UTC"
    transport: Annotated[str, msgspec.Meta(pattern=r"^(pmta|mailwizz)$", examples=["pmta"])] = "pmta"


class ApiKeyCreate(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=200, examples=["scraper-pro production"])]


def _check_timezone(name: str) -> None:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    from engine.errors import Invalid

    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise Invalid(f"timezone: expected an IANA zone name such as Europe/Paris, got {name!r}", field="timezone") from exc


@post("/tenants", operation_id="createTenant", summary="Create a tenant", tags=["tenants"],
      description="Admin only. The slug is the tenant's stable handle.")
async def create_tenant(data: JSONBody[TenantCreate], db: Db, caller: Caller) -> Tenant:
    caller.require_admin()
    _check_timezone(data.timezone)
    return await tenants.create_tenant(db, slug=data.slug, name=data.name, timezone=data.timezone,
                                       transport=data.transport)


@get("/tenants", operation_id="listTenants", summary="List tenants", tags=["tenants"],
     description="The admin sees every tenant; a tenant key sees only its own tenant.")
async def list_tenants(db: Db, caller: Caller) -> list[Tenant]:
    found = await tenants.list_tenants(db)
    return [t for t in found if caller.can_see(t.id)]


@get("/tenants/{tenant_id:int}", operation_id="getTenant", summary="Get a tenant", tags=["tenants"],
     description="404 for a tenant the key may not see.")
async def get_tenant(tenant_id: TenantId, db: Db, caller: Caller) -> Tenant:
    return await tenants.get_tenant(db, caller.scope(tenant_id))


@post("/tenants/{tenant_id:int}/api-keys", operation_id="createApiKey", summary="Create an API key",
      tags=["tenants"], description="Admin only. The answer carries the key once, as `key`; only its hash is kept.")
async def create_api_key(tenant_id: TenantId, data: JSONBody[ApiKeyCreate], db: Db,
                         caller: Caller) -> CreatedApiKey:
    caller.scope(tenant_id)
    caller.require_admin()
    return await tenants.create_api_key(db, tenant_id, data.name)


@get("/tenants/{tenant_id:int}/api-keys", operation_id="listApiKeys", summary="List API keys",
     tags=["tenants"], description="Admin only. Keys are listed by prefix; the keys themselves are never shown again.")
async def list_api_keys(tenant_id: TenantId, db: Db, caller: Caller) -> list[ApiKey]:
    caller.scope(tenant_id)
    caller.require_admin()
    return await tenants.list_api_keys(db, tenant_id)


@delete("/tenants/{tenant_id:int}/api-keys/{key_id:int}", operation_id="revokeApiKey", summary="Revoke an API key",
        tags=["tenants"], description="Admin only. The key stops working at once.")
async def revoke_api_key(tenant_id: TenantId, key_id: KeyId, db: Db, caller: Caller) -> None:
    caller.scope(tenant_id)
    caller.require_admin()
    await tenants.revoke_api_key(db, tenant_id, key_id)


@get("/tenants/{tenant_id:int}/sending-policy", operation_id="getSendingPolicy", summary="Get the sending policy",
     tags=["tenants"], description="Whether risky contacts are mailed and how long a campaign waits for a "
     "contact's validation; the same for PowerMTA and MailWizz campaigns.")
async def get_sending_policy(tenant_id: TenantId, db: Db, caller: Caller) -> SendingPolicy:
    return await tenants.get_sending_policy(db, caller.scope(tenant_id))


@patch("/tenants/{tenant_id:int}/sending-policy", operation_id="patchSendingPolicy",
       summary="Change the sending policy", tags=["tenants"],
       description="Only the fields given change. Contacts are mailed once validated (`valid`, and `risky` "
       "unless `mail_risky` is false); a row whose contact is still `pending` waits up to "
       "`validation_wait_hours`, then is skipped with the reason.")
async def patch_sending_policy(tenant_id: TenantId, data: JSONBody[SendingPolicyPatch], db: Db,
                               caller: Caller) -> SendingPolicy:
    return await tenants.patch_sending_policy(db, caller.scope(tenant_id), data)


ROUTES = [create_tenant, list_tenants, get_tenant, create_api_key, list_api_keys, revoke_api_key,
          get_sending_policy, patch_sending_policy]
