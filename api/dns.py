"""DNS operations: the records each sending domain needs, and what the last check found."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from litestar import MediaType, Response, get, post, put
from litestar.params import JSONBody, QueryParameter

from api.deps import Caller, Config, Db, TenantId, id_param
from engine import blocklists, dns_checks, dns_records
from engine.dns_checks import DnsStatus, IpDnsStatus
from engine.dns_lookup import Resolver
from engine.dns_records import DnsPolicy, DomainRecords

DomainId = id_param("domain")
IpId = id_param("IP")


class PolicySet(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    dmarc_policy: Literal["none", "quarantine", "reject"] | None = None   # DMARC p=; null: none
    dmarc_rua: Annotated[str, msgspec.Meta(max_length=500, examples=["mailto:dmarc@sos-expat.example"],
                                           description="aggregate reports; null: dmarc@<domain>")] | None = None
    spf_include: Annotated[list[Annotated[str, msgspec.Meta(max_length=253)]],
                           msgspec.Meta(max_length=10, examples=[["_spf.crm.example"]],
                                        description="other senders' SPF records to include")] | None = None


class ReturnPathSet(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    return_path: Annotated[str, msgspec.Meta(max_length=253, examples=["bounces.sos-expat-mail-01.example"],
                                             description="bounce domain; null: the domain itself")] | None
Format = Annotated[Literal["json", "bind"], QueryParameter(description="json records, or a BIND zone fragment")]
DomainName = Annotated[str | None, QueryParameter(max_length=253, description="only this sending domain")]


@get("/dns/records/{tenant_id:int}", operation_id="listDnsRecords", summary="DNS records to publish",
     tags=["dns"], description="Per sending domain: SPF from its IPs, DKIM TXT (and the previous key while "
                               "PowerMTA may still hold mail signed with it), DMARC, the return-path SPF when "
                               "one is set, and the PTR and A record of each IP's HELO hostname. `problems` "
                               "names what cannot be emitted (an SPF past 10 lookups, a domain without a key).")
async def list_records(tenant_id: TenantId, db: Db, caller: Caller, domain: DomainName = None,
                       format: Format = "json") -> Response:
    found = await dns_records.list_records(db, caller.scope(tenant_id), name=domain)
    if format == "bind":
        return Response(dns_records.to_bind(found), media_type=MediaType.TEXT)
    return Response(found, media_type=MediaType.JSON)


@get("/domains/{tenant_id:int}/{domain_id:int}/dns", operation_id="getDomainDns", summary="DNS check status",
     tags=["dns"], description="What the last check found for each record (ok, missing, wrong with what was "
                               "found, error when DNS failed) and `sending_hold`: why the domain may not send, "
                               "or null.")
async def get_status(tenant_id: TenantId, domain_id: DomainId, db: Db, caller: Caller) -> DnsStatus:
    return await dns_checks.domain_status(db, caller.scope(tenant_id), domain_id)


@get("/ips/{tenant_id:int}/{ip_id:int}/dns", operation_id="getIpDns", summary="An IP's DNS and blocklist status",
     tags=["dns"], description="Its forward-confirmed reverse DNS (PTR -> HELO hostname -> A) and what each "
                               "blocklist answered at the last check.")
async def get_ip_status(tenant_id: TenantId, ip_id: IpId, db: Db, caller: Caller) -> IpDnsStatus:
    return await dns_checks.ip_status(db, caller.scope(tenant_id), ip_id)


@post("/domains/{tenant_id:int}/{domain_id:int}/dns/check", operation_id="checkDomainDns", status_code=200,
      summary="Check a domain's DNS now", tags=["dns"],
      description="Queries the configured resolvers (EMAIL_ENGINE_DNS_SERVERS) and stores the result.")
async def check_now(tenant_id: TenantId, domain_id: DomainId, db: Db, caller: Caller, settings: Config) -> DnsStatus:
    scoped = caller.scope(tenant_id)
    async with Resolver(settings.dns_servers) as resolver:
        await dns_checks.run_checks(db, resolver, scoped, domain_id)
    return await dns_checks.domain_status(db, scoped, domain_id)


@post("/domains/{tenant_id:int}/{domain_id:int}/release", operation_id="releaseDomainHold", status_code=200,
      summary="Lift a domain's blocklist hold", tags=["dns"],
      description="Once the domain is delisted: its campaigns may send again (a wrong SPF or DKIM still holds "
                  "it until the next check finds the records fixed).")
async def release(tenant_id: TenantId, domain_id: DomainId, db: Db, caller: Caller) -> DnsStatus:
    scoped = caller.scope(tenant_id)
    await blocklists.release_domain(db, scoped, domain_id)
    return await dns_checks.domain_status(db, scoped, domain_id)


@put("/dns/policy/{tenant_id:int}", operation_id="setDnsPolicy", summary="Set the tenant's DNS choices",
     tags=["dns"], description="DMARC policy and report address, and SPF includes, for every domain of the "
                               "tenant; each field replaces the stored one (null: the default). 400 names the "
                               "field, including an SPF that would need more than 10 lookups.")
async def set_policy(tenant_id: TenantId, data: JSONBody[PolicySet], db: Db, caller: Caller) -> DnsPolicy:
    return await dns_records.set_policy(db, caller.scope(tenant_id), DnsPolicy(
        dmarc_policy=data.dmarc_policy, dmarc_rua=data.dmarc_rua, spf_include=data.spf_include))


@put("/domains/{tenant_id:int}/{domain_id:int}/return-path", operation_id="setDomainReturnPath",
     summary="Set a domain's return-path (bounce) domain", tags=["dns"],
     description="Its SPF record then lists the domain's IPs too, and the checks read it.")
async def set_return_path(tenant_id: TenantId, domain_id: DomainId, data: JSONBody[ReturnPathSet], db: Db,
                          caller: Caller) -> DomainRecords:
    scoped = caller.scope(tenant_id)
    await dns_records.set_return_path(db, scoped, domain_id, data.return_path)
    (records,) = await dns_records.list_records(db, scoped, domain_id=domain_id)
    return records


ROUTES = [list_records, get_status, get_ip_status, check_now, release, set_policy, set_return_path]
