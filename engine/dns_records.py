"""The DNS records a sending domain needs published: SPF, DKIM, DMARC, return path, PTR and A (FCrDNS).

What each must say follows deliverability.md §1: Gmail and Yahoo bulk senders need SPF and DKIM and a DMARC
record (`p=none` is enough, `rua` recommended), and every sending IP needs a PTR whose hostname resolves
back to it — the hostname PowerMTA announces in HELO.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

import asyncpg
import msgspec

from engine.errors import Invalid, NotFound
from sql import q

TTL = 3600
# RFC 7208 §4.6.4: evaluating SPF may cost at most 10 DNS lookups; past that receivers return permerror
# (and Outlook says "SPF with more than 10 DNS lookups may fail", deliverability.md §1.3).
SPF_MAX_LOOKUPS = 10
# Mechanisms and modifiers that each cost one lookup (RFC 7208 §4.6.4); ip4/ip6/all cost none.
_SPF_LOOKUP_TERMS = frozenset({"include", "a", "mx", "ptr", "exists", "redirect"})
DMARC_POLICIES = frozenset({"none", "quarantine", "reject"})


class DomainDns(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    tenant_id: int
    name: str
    dkim_selector: str
    dkim_public_key: str | None
    dkim_previous_selector: str | None
    dkim_previous_public_key: str | None
    previous_in_use: bool
    return_path: str | None
    tenant_settings: dict[str, Any]
    ip_addresses: list[str]
    ip_hostnames: list[str]


class IpDns(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    tenant_id: int
    address: str
    hostname: str
    status: str


class DnsRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One record to publish; `purpose` says which check reads it (spf, dkim, dmarc, return_path, ptr, a)."""

    name: str
    type: str
    value: str
    purpose: str
    ttl: int = TTL


class DomainRecords(msgspec.Struct, frozen=True, kw_only=True):
    domain: str
    domain_id: int
    tenant_id: int
    records: list[DnsRecord]
    problems: list[str]   # what could not be emitted, and why (an SPF past 10 lookups, no DKIM key yet)


def spf_value(addresses: list[str], includes: list[str] = ()) -> str:
    """`v=spf1 ip4:… include:… -all`; consecutive addresses are merged into CIDR blocks to keep it short."""
    nets = ipaddress.collapse_addresses(ipaddress.ip_network(a) for a in addresses if ":" not in a)
    nets6 = ipaddress.collapse_addresses(ipaddress.ip_network(a) for a in addresses if ":" in a)
    terms = [f"ip4:{n.network_address if n.prefixlen == 32 else n}" for n in nets]
    terms += [f"ip6:{n.network_address if n.prefixlen == 128 else n}" for n in nets6]
    terms += [f"include:{i}" for i in includes]
    value = " ".join(["v=spf1", *terms, "-all"])
    if spf_lookups(value) > SPF_MAX_LOOKUPS:
        raise Invalid(f"spf_include: the SPF record would need {spf_lookups(value)} DNS lookups, more than "
                      f"the {SPF_MAX_LOOKUPS} receivers evaluate (RFC 7208 §4.6.4)", field="spf_include")
    return value


def spf_lookups(value: str) -> int:
    """DNS lookups the record's own terms cost (includes are counted once each, not recursively)."""
    names = (re.split(r"[:/=]", term.lstrip("+-~?"), maxsplit=1)[0] for term in value.lower().split()[1:])
    return sum(1 for name in names if name in _SPF_LOOKUP_TERMS)


def dmarc_value(domain: str, settings: dict[str, Any]) -> str:
    """`p=none` with aggregate reports to the domain itself unless the tenant chose a policy and a rua."""
    policy = settings.get("dmarc_policy", "none")
    if policy not in DMARC_POLICIES:
        raise Invalid(f"dmarc_policy: expected none, quarantine or reject, got {policy!r}", field="dmarc_policy")
    rua = settings.get("dmarc_rua") or f"mailto:dmarc@{domain}"
    return f"v=DMARC1; p={policy}; rua={rua}"


class DnsPolicy(msgspec.Struct, frozen=True, kw_only=True):
    """A tenant's choices for its domains' records; None is the default (p=none, rua to dmarc@<domain>)."""

    dmarc_policy: str | None = None
    dmarc_rua: str | None = None
    spf_include: list[str] | None = None


HOST = re.compile(r"^(?=.{1,253}$)([a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")


def check_policy(policy: DnsPolicy) -> None:
    """Invalid naming the field for a policy the records could not carry."""
    if policy.dmarc_policy is not None and policy.dmarc_policy not in DMARC_POLICIES:
        raise Invalid(f"dmarc_policy: expected none, quarantine or reject, got {policy.dmarc_policy!r}",
                      field="dmarc_policy")
    if policy.dmarc_rua is not None:
        for uri in policy.dmarc_rua.split(","):
            if not re.match(r"^mailto:[^@\s;,!]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,63}$", uri.strip()):
                raise Invalid(f"dmarc_rua: expected mailto:address[,mailto:address], got {policy.dmarc_rua!r}",
                              field="dmarc_rua")
    for host in policy.spf_include or []:
        if not HOST.match(host):
            raise Invalid(f"spf_include: {host!r} is not a domain name", field="spf_include")
    spf_value(["192.0.2.1"], policy.spf_include or [])  # raises Invalid past 10 lookups


async def set_policy(db: asyncpg.Connection, tenant_id: int, policy: DnsPolicy) -> DnsPolicy:
    """Store the tenant's DNS choices (every field replaced; None back to the default)."""
    check_policy(policy)
    settings = await db.fetchval(q("dns-set-tenant-policy"), tenant_id, msgspec.structs.asdict(policy))
    if settings is None:
        raise NotFound(f"tenant {tenant_id} not found")
    return msgspec.convert({k: settings.get(k) for k in DnsPolicy.__struct_fields__}, DnsPolicy)


async def set_return_path(db: asyncpg.Connection, tenant_id: int, domain_id: int, return_path: str | None) -> None:
    """The bounce domain whose SPF must list the domain's IPs too (None: the domain itself)."""
    if return_path is not None:
        return_path = return_path.strip().rstrip(".").lower()
        if not HOST.match(return_path):
            raise Invalid(f"return_path: {return_path!r} is not a domain name", field="return_path")
    if await db.fetchval(q("dns-set-return-path"), tenant_id, domain_id, return_path) is None:
        raise NotFound(f"domain {domain_id} not found")


def domain_records(domain: DomainDns) -> DomainRecords:
    """Everything to publish for one domain, in a stable order (same database, same output)."""
    records: list[DnsRecord] = []
    problems: list[str] = []
    includes = list(domain.tenant_settings.get("spf_include") or [])
    if domain.ip_addresses:
        try:
            spf = spf_value(domain.ip_addresses, includes)
        except Invalid as exc:
            problems.append(exc.message)
        else:
            records.append(DnsRecord(name=domain.name, type="TXT", value=spf, purpose="spf"))
            if domain.return_path:
                records.append(DnsRecord(name=domain.return_path, type="TXT", value=spf, purpose="return_path"))
    else:
        problems.append("spf: the domain has no sending IPs")
    if domain.dkim_public_key:
        records.append(DnsRecord(name=f"{domain.dkim_selector}._domainkey.{domain.name}", type="TXT",
                                 value=domain.dkim_public_key, purpose="dkim"))
    else:
        problems.append("dkim: no key pair yet (rotate the domain's DKIM key to make one)")
    if domain.previous_in_use and domain.dkim_previous_public_key:
        records.append(DnsRecord(name=f"{domain.dkim_previous_selector}._domainkey.{domain.name}", type="TXT",
                                 value=domain.dkim_previous_public_key, purpose="dkim_previous"))
    try:
        records.append(DnsRecord(name=f"_dmarc.{domain.name}", type="TXT",
                                 value=dmarc_value(domain.name, domain.tenant_settings), purpose="dmarc"))
    except Invalid as exc:
        problems.append(exc.message)
    for address, hostname in zip(domain.ip_addresses, domain.ip_hostnames, strict=True):
        records.extend(ip_records(address, hostname))
    return DomainRecords(domain=domain.name, domain_id=domain.id, tenant_id=domain.tenant_id, records=records,
                         problems=problems)


def ip_records(address: str, hostname: str) -> list[DnsRecord]:
    """The PTR (published by whoever owns the address block) and the A/AAAA record it must point back to."""
    kind = "AAAA" if ":" in address else "A"
    return [DnsRecord(name=ipaddress.ip_address(address).reverse_pointer, type="PTR", value=hostname + ".",
                      purpose="ptr"),
            DnsRecord(name=hostname, type=kind, value=address, purpose="a")]


async def load_domains(db: asyncpg.Connection | asyncpg.Pool, tenant_id: int | None = None, *,
                       name: str | None = None, domain_id: int | None = None) -> list[DomainDns]:
    return [DomainDns(**r) for r in await db.fetch(q("dns-domains"), tenant_id, name, domain_id)]


async def list_records(db: asyncpg.Connection | asyncpg.Pool, tenant_id: int | None = None, *,
                       name: str | None = None, domain_id: int | None = None) -> list[DomainRecords]:
    return [domain_records(d) for d in await load_domains(db, tenant_id, name=name, domain_id=domain_id)]


def _txt_strings(value: str) -> str:
    """A TXT value as quoted strings of at most 255 octets each (RFC 1035 §3.3.14): a 2048-bit key needs two."""
    escaped = [value[i:i + 255].replace("\\", "\\\\").replace('"', '\\"') for i in range(0, len(value), 255)]
    return " ".join(f'"{part}"' for part in escaped)


def to_bind(all_records: list[DomainRecords]) -> str:
    """A BIND zone fragment: absolute names, one record a line; PTR and A of shared IPs appear once."""
    lines: list[str] = []
    seen: set[tuple[str, str, str]] = set()
    for domain in all_records:
        lines.append(f"; {domain.domain}")
        lines.extend(f"; not emitted: {problem}" for problem in domain.problems)
        if any(r.purpose == "ptr" for r in domain.records):
            lines.append("; the PTR records belong in the reverse zone of whoever owns each address block")
        for r in domain.records:
            key = (r.name, r.type, r.value)
            if key in seen:
                continue
            seen.add(key)
            value = _txt_strings(r.value) if r.type == "TXT" else r.value
            lines.append(f"{r.name}. {r.ttl} IN {r.type} {value}")
        lines.append("")
    return "\n".join(lines)
