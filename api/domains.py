"""Sending domains: create (with a DKIM key pair), list, read, change their IPs, rotate the key, delete."""

from __future__ import annotations

from typing import Annotated

import msgspec
from litestar import delete, get, patch, post
from litestar.datastructures import State
from litestar.params import JSONBody

from api.deps import Caller, Db, TenantId, id_param
from engine import domains
from engine.domains import Domain

DomainId = id_param("domain")

IpIds = Annotated[list[Annotated[int, msgspec.Meta(gt=0)]],
                  msgspec.Meta(max_length=1000, examples=[[1, 2]],
                               description="ids of the tenant's IPs that send for this domain")]
Selector = Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$", examples=["ee1"],
                                       description="DKIM selector (one DNS label)")]


class DomainCreate(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    tenant_id: Annotated[int, msgspec.Meta(gt=0, examples=[1])]
    name: Annotated[str, msgspec.Meta(min_length=3, max_length=253, examples=["news.sos-expat-mail.example"])]
    ip_ids: IpIds = []
    dkim_selector: Selector = domains.DEFAULT_SELECTOR


class DomainPatch(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    ip_ids: IpIds | None = None


class DkimRotate(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    dkim_selector: Selector | None = None


@post("/domains", operation_id="createDomain", summary="Create a sending domain", tags=["domains"],
      description="Generates an RSA-2048 DKIM key pair: publish `dkim_public_key` as a TXT record at "
                  "`dkim_record`. The private key is stored encrypted and never returned. `ip_ids` must be the "
                  "tenant's own IPs (404 names `ip_ids` otherwise); 409 names `name` when the domain is taken.")
async def create_domain(data: JSONBody[DomainCreate], db: Db, caller: Caller, state: State) -> Domain:
    return await domains.create_domain(db, state.secret_key, caller.scope(data.tenant_id), name=data.name,
                                       ip_ids=data.ip_ids, dkim_selector=data.dkim_selector)


@get("/domains/{tenant_id:int}", operation_id="listDomains", summary="List a tenant's sending domains",
     tags=["domains"], description="`dkim_public_key` is null for a domain whose key was never generated "
                                   "(the seeded ones): rotate it to get one.")
async def list_domains(tenant_id: TenantId, db: Db, caller: Caller) -> list[Domain]:
    return await domains.list_domains(db, caller.scope(tenant_id))


@get("/domains/{tenant_id:int}/{domain_id:int}", operation_id="getDomain", summary="Get a sending domain",
     tags=["domains"], description="Read-only: never generates a key.")
async def get_domain(tenant_id: TenantId, domain_id: DomainId, db: Db, caller: Caller) -> Domain:
    return await domains.get_domain(db, caller.scope(tenant_id), domain_id)


@patch("/domains/{tenant_id:int}/{domain_id:int}", operation_id="updateDomain", summary="Change a sending domain",
       tags=["domains"], description="`ip_ids` replaces the IPs that send for the domain.")
async def update_domain(tenant_id: TenantId, domain_id: DomainId, data: JSONBody[DomainPatch], db: Db,
                        caller: Caller) -> Domain:
    return await domains.update_domain(db, caller.scope(tenant_id), domain_id, ip_ids=data.ip_ids)


@post("/domains/{tenant_id:int}/{domain_id:int}/dkim/rotate", operation_id="rotateDomainDkim",
      summary="Generate a new DKIM key pair", tags=["domains"], status_code=200,
      description="A domain without a key keeps its selector; otherwise the key moves to the next selector "
                  "(ee1 -> ee2) unless one is given, so the old record can stay published meanwhile.")
async def rotate_dkim(tenant_id: TenantId, domain_id: DomainId, db: Db, caller: Caller, state: State,
                      data: JSONBody[DkimRotate | None] = None) -> Domain:
    return await domains.rotate_dkim(db, state.secret_key, caller.scope(tenant_id), domain_id,
                                     data.dkim_selector if data else None)


@delete("/domains/{tenant_id:int}/{domain_id:int}", operation_id="deleteDomain", summary="Delete a sending domain",
        tags=["domains"], description="The domain and its key pair are gone; its IPs stay.")
async def delete_domain(tenant_id: TenantId, domain_id: DomainId, db: Db, caller: Caller) -> None:
    await domains.delete_domain(db, caller.scope(tenant_id), domain_id)


ROUTES = [create_domain, list_domains, get_domain, update_domain, rotate_dkim, delete_domain]
