"""Sending IPs (virtual MTAs): create, list, read, change, and pause / resume / retire."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from litestar import get, patch, post
from litestar.params import JSONBody, QueryParameter

from api.deps import Caller, Db, TenantId, id_param
from engine import ips
from engine.ips import Ip

IpId = id_param("IP")

Weight = Annotated[int, msgspec.Meta(ge=1, le=100, examples=[10],
                                     description="share of the tenant's traffic relative to its other IPs")]
Hostname = Annotated[str, msgspec.Meta(min_length=1, max_length=253, examples=["mta01.sos-expat-mail.example"],
                                       description="HELO name; the address's PTR must point to it")]
VmtaName = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$", examples=["sos-expat-vmta51"],
                                       description="PowerMTA virtual-mta name, unique across tenants")]
Pool = Annotated[str, msgspec.Meta(min_length=1, max_length=63, examples=["default"],
                                   description="the tenant's pool this IP rotates in")]
DailyCap = Annotated[int, msgspec.Meta(ge=1, le=10_000_000, examples=[50_000],
                                       description="sends a day once active; the default warmup curve ends here")]
RatePerMinute = Annotated[int, msgspec.Meta(ge=0, le=1_000_000, examples=[0], description="0 = unlimited")]
Reason = Annotated[str, msgspec.Meta(min_length=1, max_length=500, examples=["listed on a blocklist"])]


class IpCreate(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    tenant_id: Annotated[int, msgspec.Meta(gt=0, examples=[1])]
    address: Annotated[str, msgspec.Meta(min_length=2, max_length=64, examples=["192.0.2.200"],
                                         description="IPv4 or IPv6, unique across tenants")]
    hostname: Hostname
    vmta_name: VmtaName
    weight: Weight = 10
    pool: Pool = "default"
    daily_cap: DailyCap = 50_000
    rate_per_minute: RatePerMinute = 0


class IpPatch(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    hostname: Hostname | None = None
    vmta_name: VmtaName | None = None
    weight: Weight | None = None
    pool: Pool | None = None
    daily_cap: DailyCap | None = None
    rate_per_minute: RatePerMinute | None = None


class StatusChange(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    reason: Reason | None = None


StatusFilter = Annotated[Literal["warming", "active", "paused", "blacklisted", "retired"] | None,
                         QueryParameter(description="only IPs in this status")]


@post("/ips", operation_id="createIp", summary="Create a sending IP", tags=["ips"],
      description="The IP starts `warming` with a warmup plan: the tenant's own curve if it set one, else "
                  "doubling from 50 a day up to `daily_cap`. 409 names `address` or `vmta_name` when taken.")
async def create_ip(data: JSONBody[IpCreate], db: Db, caller: Caller) -> Ip:
    return await ips.create_ip(db, caller.scope(data.tenant_id), address=data.address, hostname=data.hostname,
                               vmta_name=data.vmta_name, weight=data.weight, pool=data.pool,
                               daily_cap=data.daily_cap, rate_per_minute=data.rate_per_minute)


@get("/ips", operation_id="listAllIps", summary="List sending IPs", tags=["ips"],
     description="The admin sees every tenant's IPs; a tenant key its own.")
async def list_all_ips(db: Db, caller: Caller, status: StatusFilter = None) -> list[Ip]:
    return await ips.list_ips(db, None if caller.admin else caller.tenant_id, status)


@get("/ips/{tenant_id:int}", operation_id="listIps", summary="List a tenant's sending IPs", tags=["ips"],
     description="In id order, optionally of one status.")
async def list_ips(tenant_id: TenantId, db: Db, caller: Caller, status: StatusFilter = None) -> list[Ip]:
    return await ips.list_ips(db, caller.scope(tenant_id), status)


@get("/ips/{tenant_id:int}/{ip_id:int}", operation_id="getIp", summary="Get a sending IP", tags=["ips"],
     description="404 for an IP of another tenant.")
async def get_ip(tenant_id: TenantId, ip_id: IpId, db: Db, caller: Caller) -> Ip:
    return await ips.get_ip(db, caller.scope(tenant_id), ip_id)


@patch("/ips/{tenant_id:int}/{ip_id:int}", operation_id="updateIp", summary="Change a sending IP", tags=["ips"],
       description="Fields left out keep their value; the address never changes (create another IP). A new "
                   "`daily_cap` applies once the IP is active; its warmup plan keeps its curve.")
async def update_ip(tenant_id: TenantId, ip_id: IpId, data: JSONBody[IpPatch], db: Db, caller: Caller) -> Ip:
    return await ips.update_ip(db, caller.scope(tenant_id), ip_id, hostname=data.hostname,
                               vmta_name=data.vmta_name, weight=data.weight, pool=data.pool,
                               daily_cap=data.daily_cap, rate_per_minute=data.rate_per_minute)


@post("/ips/{tenant_id:int}/{ip_id:int}/pause", operation_id="pauseIp", summary="Pause a sending IP", tags=["ips"],
      status_code=200, description="A paused IP gets no message and its warmup plan waits. 409 unless warming "
                                   "or active.")
async def pause_ip(tenant_id: TenantId, ip_id: IpId, db: Db, caller: Caller,
                   data: JSONBody[StatusChange | None] = None) -> Ip:
    return await ips.change_status(db, caller.scope(tenant_id), ip_id, "pause", data.reason if data else None)


@post("/ips/{tenant_id:int}/{ip_id:int}/resume", operation_id="resumeIp", summary="Resume a sending IP",
      tags=["ips"], status_code=200,
      description="Back to `warming` if its warmup plan is not done, else `active`. 409 unless paused or blacklisted.")
async def resume_ip(tenant_id: TenantId, ip_id: IpId, db: Db, caller: Caller,
                    data: JSONBody[StatusChange | None] = None) -> Ip:
    return await ips.change_status(db, caller.scope(tenant_id), ip_id, "resume", data.reason if data else None)


@post("/ips/{tenant_id:int}/{ip_id:int}/retire", operation_id="retireIp", summary="Retire a sending IP",
      tags=["ips"], status_code=200,
      description="For good: a retired IP never sends again and cannot be resumed. Its history is kept.")
async def retire_ip(tenant_id: TenantId, ip_id: IpId, db: Db, caller: Caller,
                    data: JSONBody[StatusChange | None] = None) -> Ip:
    return await ips.change_status(db, caller.scope(tenant_id), ip_id, "retire", data.reason if data else None)


ROUTES = [create_ip, list_all_ips, list_ips, get_ip, update_ip, pause_ip, resume_ip, retire_ip]
