"""DNS checks: does what is published match what the engine needs (engine/dns_records.py)? And the rule
that follows from it: a domain whose SPF or DKIM is wrong does not send until fixed.

Every status is one of ok, missing, wrong (the report says what was found instead) and error (DNS did not
answer: nothing is known, so nothing is held on it). Only a record that contradicts the engine holds a
domain: it proves mail from it fails authentication at the receiver. Missing records (a domain not yet
published) and a missing DMARC or a PTR mismatch are warnings in the report.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
from typing import Any

import asyncpg
import msgspec

from engine import alert_events
from engine.dns_lookup import Answer, Resolver, reverse_name
from engine.dns_records import DomainDns, IpDns, dmarc_value, load_domains, spf_value
from engine.errors import Invalid, NotFound
from sql import q

# A domain with this on SPF or DKIM is not used for sending (deliverability.md §1: Gmail, Yahoo and Outlook
# reject bulk mail that does not pass both, and a wrong record fails where a fixed one would pass).
HOLDING = frozenset({"wrong"})


class Finding(msgspec.Struct, frozen=True, kw_only=True):
    status: str                       # ok | missing | wrong | error
    expected: str | None = None
    found: list[str] = []
    detail: str = ""


def _from_failure(answer: Answer, expected: str | None, what: str) -> Finding:
    if answer.absent:
        return Finding(status="missing", expected=expected, detail=f"no {what} published ({answer.failure})")
    return Finding(status="error", expected=expected, detail=f"DNS did not answer: {answer.failure}")


def _tags(record: str) -> dict[str, str]:
    """`v=DKIM1; k=rsa; p=…` as a dict; whitespace inside values (folded keys) removed."""
    tags = {}
    for part in record.split(";"):
        key, sep, value = part.partition("=")
        if sep:
            tags[key.strip().lower()] = "".join(value.split())
    return tags


async def check_spf(resolver: Resolver, name: str, addresses: list[str], expected: str | None) -> Finding:
    """One `v=spf1` record whose ip4/ip6 terms authorise every sending IP (includes are not followed)."""
    answer = await resolver.query(name, "TXT")
    if answer.failure:
        return _from_failure(answer, expected, "TXT record")
    spf = [v for v in answer.values if v.lower().startswith("v=spf1")]
    if not spf:
        return Finding(status="missing", expected=expected, found=list(answer.values), detail="no v=spf1 record")
    if len(spf) > 1:  # RFC 7208 §4.5: several records are a permerror for every receiver
        return Finding(status="wrong", expected=expected, found=spf, detail="more than one v=spf1 record")
    nets = []
    for term in spf[0].split()[1:]:
        kind, _, value = term.lstrip("+").partition(":")
        if kind.lower() in ("ip4", "ip6") and value:
            try:
                nets.append(ipaddress.ip_network(value, strict=False))
            except ValueError:
                return Finding(status="wrong", expected=expected, found=spf, detail=f"unparsable term {term!r}")
    uncovered = [a for a in addresses if not any(ipaddress.ip_address(a) in n for n in nets)]
    if uncovered:
        shown = ", ".join(uncovered[:5]) + (f" and {len(uncovered) - 5} more" if len(uncovered) > 5 else "")
        return Finding(status="wrong", expected=expected, found=spf, detail=f"does not authorise {shown}")
    return Finding(status="ok", expected=expected, found=spf)


async def check_dkim(resolver: Resolver, domain: DomainDns) -> Finding:
    """The TXT record at the selector carries the public half of the key PowerMTA signs with."""
    if not domain.dkim_public_key:
        return Finding(status="missing", detail="no DKIM key pair generated yet")
    name = f"{domain.dkim_selector}._domainkey.{domain.name}"
    answer = await resolver.query(name, "TXT")
    if answer.failure:
        return _from_failure(answer, domain.dkim_public_key, f"DKIM record at {name}")
    wanted = _tags(domain.dkim_public_key)["p"]
    keys = [_tags(v).get("p") for v in answer.values]
    if wanted in keys:
        return Finding(status="ok", expected=domain.dkim_public_key)
    return Finding(status="wrong", expected=domain.dkim_public_key, found=list(answer.values),
                   detail=f"the record at {name} holds another key than the one PowerMTA signs with")


async def check_dmarc(resolver: Resolver, domain: DomainDns) -> Finding:
    """A `v=DMARC1` record with the policy and aggregate-report address the tenant chose (default p=none)."""
    try:
        expected = dmarc_value(domain.name, domain.tenant_settings)
    except Invalid as exc:
        return Finding(status="error", detail=exc.message)
    answer = await resolver.query(f"_dmarc.{domain.name}", "TXT")
    if answer.failure:
        return _from_failure(answer, expected, "DMARC record")
    found = [v for v in answer.values if v.replace(" ", "").lower().startswith("v=dmarc1")]
    if not found:
        return Finding(status="missing", expected=expected, found=list(answer.values), detail="no v=DMARC1 record")
    if len(found) > 1:
        return Finding(status="wrong", expected=expected, found=found, detail="more than one v=DMARC1 record")
    want, got = _tags(expected), _tags(found[0])
    differ = [f"{k}={got.get(k, '(absent)')}" for k in ("p", "rua") if got.get(k, "").lower() != want[k].lower()]
    if differ:
        return Finding(status="wrong", expected=expected, found=found, detail="expected " + expected
                       + "; found " + ", ".join(differ))
    return Finding(status="ok", expected=expected, found=found)


async def check_fcrdns(resolver: Resolver, address: str, hostname: str) -> Finding:
    """Forward-confirmed reverse DNS: the IP's PTR names the HELO hostname, whose A/AAAA lists the IP."""
    ptr = await resolver.query(reverse_name(address), "PTR")
    if ptr.failure:
        return _from_failure(ptr, hostname, f"PTR for {address}")
    if hostname.lower() not in ptr.values:
        return Finding(status="wrong", expected=hostname, found=list(ptr.values),
                       detail=f"the PTR of {address} does not name {hostname}")
    forward = await resolver.query(hostname, "AAAA" if ":" in address else "A")
    if forward.error:
        return Finding(status="error", expected=hostname, detail=f"DNS did not answer for {hostname}: "
                                                                 f"{forward.failure}")
    if ipaddress.ip_address(address) not in {ipaddress.ip_address(v) for v in forward.values}:
        return Finding(status="wrong", expected=address, found=list(forward.values),
                       detail=f"{hostname} does not resolve back to {address}")
    return Finding(status="ok", expected=hostname, found=list(ptr.values))


def worst(statuses: list[str]) -> str:
    """The domain's PTR status over its IPs: one wrong IP makes it wrong; no IPs at all is missing."""
    for status in ("wrong", "missing", "error"):
        if status in statuses:
            return status
    return "ok" if statuses else "missing"


async def check_ips(db: asyncpg.Connection | asyncpg.Pool, resolver: Resolver,
                    tenant_id: int | None = None) -> dict[str, Finding]:
    """FCrDNS of every IP not retired, stored on the IP; address -> finding."""
    ips = [IpDns(**r) for r in await db.fetch(q("dns-ips"), tenant_id)]
    findings = await asyncio.gather(*(check_fcrdns(resolver, ip.address, ip.hostname) for ip in ips))
    for ip, finding in zip(ips, findings, strict=True):
        await db.execute(q("dns-store-ip"), ip.tenant_id, ip.id, finding.status, {"ptr": msgspec.to_builtins(finding)})
    return {ip.address: f for ip, f in zip(ips, findings, strict=True)}


async def check_domain(resolver: Resolver, domain: DomainDns, ptr: dict[str, Finding]) -> dict[str, Finding]:
    """Every record of one domain; `ptr` holds the IPs' FCrDNS findings (each IP is checked once per run)."""
    try:
        spf_expected = spf_value(domain.ip_addresses, list(domain.tenant_settings.get("spf_include") or []))
    except Invalid:
        spf_expected = None
    spf, dkim, dmarc = await asyncio.gather(check_spf(resolver, domain.name, domain.ip_addresses, spf_expected),
                                            check_dkim(resolver, domain), check_dmarc(resolver, domain))
    report = {"spf": spf, "dkim": dkim, "dmarc": dmarc}
    if domain.return_path:
        report["return_path"] = await check_spf(resolver, domain.return_path, domain.ip_addresses, spf_expected)
    statuses = [ptr[a].status for a in domain.ip_addresses if a in ptr]
    report["ptr"] = Finding(status=worst(statuses), detail="; ".join(
        f"{a}: {ptr[a].detail}" for a in domain.ip_addresses if a in ptr and ptr[a].status != "ok"))
    return report


async def run_checks(db: asyncpg.Connection | asyncpg.Pool, resolver: Resolver, tenant_id: int | None = None,
                     domain_id: int | None = None) -> dict[str, dict[str, Finding]]:
    """Check and store the records of the tenant's domains (every tenant's with None); name -> report."""
    domains = await load_domains(db, tenant_id, domain_id=domain_id)
    if domain_id is not None and not domains:
        raise NotFound(f"domain {domain_id} not found")
    ptr = await check_ips(db, resolver, tenant_id)
    reports = await asyncio.gather(*(check_domain(resolver, d, ptr) for d in domains))
    for domain, report in zip(domains, reports, strict=True):
        before = await db.fetchrow(q("dns-store-domain"), domain.tenant_id, domain.id, report["spf"].status,
                                   report["dkim"].status, report["dmarc"].status, report["ptr"].status,
                                   msgspec.to_builtins(report))
        await _alert_turned_bad(db, domain, before, report)
    return {d.name: r for d, r in zip(domains, reports, strict=True)}


# A record that was ok and is now wrong or missing is news; one that DNS could not answer for is not (yet).
BAD = ("wrong", "missing")


async def _alert_turned_bad(db: asyncpg.Connection | asyncpg.Pool, domain: DomainDns, before: asyncpg.Record | None,
                            report: dict[str, Finding]) -> None:
    if before is None:
        return
    turned = {name: f"{report[name].status}: {report[name].detail}" if report[name].detail else report[name].status
              for name in ("spf", "dkim", "dmarc", "ptr") if before[name] == "ok" and report[name].status in BAD}
    if turned:
        await alert_events.raise_alert(db, domain.tenant_id, "dns_check_bad", f"domain:{domain.id}",
                                       {"domain": domain.name, **turned})


class DnsStatus(msgspec.Struct, frozen=True, kw_only=True):
    """What the last check found for a domain: a status per record, with what DNS answered."""

    domain_id: int
    name: str
    spf_status: str
    dkim_status: str
    dmarc_status: str
    ptr_status: str
    report: dict[str, Any]
    checked_at: dt.datetime | None
    sending_hold: str | None          # why the domain may not send right now; None: it may


async def domain_status(db: asyncpg.Connection, tenant_id: int, domain_id: int) -> DnsStatus:
    row = await db.fetchrow(q("dns-domain-report"), tenant_id, domain_id)
    if row is None:
        raise NotFound(f"domain {domain_id} not found")
    return DnsStatus(domain_id=row["id"], name=row["name"], spf_status=row["spf_status"],
                     dkim_status=row["dkim_status"], dmarc_status=row["dmarc_status"], ptr_status=row["ptr_status"],
                     report=row["dns_report"], checked_at=row["checked_at"], sending_hold=_hold_reason(row))


class IpDnsStatus(msgspec.Struct, frozen=True, kw_only=True):
    """What the last checks found for an IP: its reverse DNS and each blocklist's verdict."""

    ip_id: int
    address: str
    hostname: str
    status: str
    status_reason: str | None
    ptr_status: str
    dns_report: dict[str, Any]
    dns_checked_at: dt.datetime | None
    blocklist_report: dict[str, Any]
    blocklist_checked_at: dt.datetime | None


async def ip_status(db: asyncpg.Connection, tenant_id: int, ip_id: int) -> IpDnsStatus:
    row = await db.fetchrow(q("dns-ip-report"), tenant_id, ip_id)
    if row is None:
        raise NotFound(f"IP {ip_id} not found")
    return IpDnsStatus(**row)


def _hold_reason(row: asyncpg.Record) -> str | None:
    if row["held_reason"]:
        return f"domain {row['name']} is held: {row['held_reason']}"
    for record in ("spf", "dkim"):
        status = row[f"{record}_status"]
        if status in HOLDING:
            detail = (row["dns_report"] or {}).get(record, {}).get("detail", "")
            return f"{record.upper()} of {row['name']} is {status}" + (f": {detail}" if detail else "")
    return None


async def sending_hold(db: asyncpg.Connection | asyncpg.Pool, tenant_id: int, from_email: str) -> str | None:
    """Why the domain of a campaign's From address may not send (a wrong SPF or DKIM record, a domain
    blocklist listing), or None. A From domain that is not one of the tenant's sending domains is not held
    here: which domains a tenant may send from is another check's business."""
    domain = from_email.rpartition("@")[2].strip().rstrip(".").lower()
    row = await db.fetchrow(q("dns-sending-domain"), tenant_id, domain)
    return None if row is None else _hold_reason(row)
