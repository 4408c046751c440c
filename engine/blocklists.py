"""The blocklist watch: every sending IP and domain looked up on DNS blocklists (engine/blocklists.toml).

A listing pauses the IP (status `blacklisted`) or holds the domain, with the list's name and return code as
the reason, and raises an alert event. A code by which a list refuses the query (Spamhaus 127.255.255.254
for public resolvers) and a DNS failure are errors of the check: they pause nothing. Nothing is released
automatically: an operator resumes the IP (or releases the domain) once it is delisted.
"""

from __future__ import annotations

import asyncio
import ipaddress
import tomllib
from pathlib import Path

import asyncpg
import msgspec

from engine import alert_events, ips
from engine.dns_lookup import Resolver, blocklist_name
from engine.errors import NotFound
from sql import q

DEFAULT_POLICY = Path(__file__).with_name("blocklists.toml")
LOOPBACK = ipaddress.ip_network("127.0.0.0/8")


class Blocklist(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    zone: str
    errors: dict[str, str] = {}   # return code -> why it is a refusal, not a listing
    ipv6: bool = False


class Policy(msgspec.Struct, frozen=True, kw_only=True):
    ip: list[Blocklist] = []
    domain: list[Blocklist] = []


class Verdict(msgspec.Struct, frozen=True, kw_only=True):
    status: str               # listed | clear | error
    codes: list[str] = []
    detail: str = ""


def load_policy(path: Path | None = None) -> Policy:
    """The blocklists to watch; a malformed file fails loudly at start, naming itself."""
    source = path or DEFAULT_POLICY
    try:
        return msgspec.convert(tomllib.loads(source.read_text("utf-8")), Policy)
    except (OSError, tomllib.TOMLDecodeError, msgspec.ValidationError) as exc:
        raise ValueError(f"blocklist policy {source}: {exc}") from exc


async def lookup(resolver: Resolver, blocklist: Blocklist, name: str) -> Verdict:
    """One name on one list: listed with its codes, clear, or an error (refusal, DNS failure, odd answer)."""
    answer = await resolver.query(name, "A")
    if answer.absent:
        return Verdict(status="clear")
    if answer.error:
        return Verdict(status="error", detail=f"{blocklist.name}: DNS did not answer ({answer.failure})")
    refused = [c for c in answer.values if c in blocklist.errors]
    if refused:
        return Verdict(status="error", codes=refused, detail=f"{blocklist.name} refused the query: "
                       + ", ".join(f"{c} ({blocklist.errors[c]})" for c in refused))
    if not all(ipaddress.ip_address(c) in LOOPBACK for c in answer.values):
        # A resolver that rewrites NXDOMAIN into an ad server's address: no list answers outside 127/8.
        return Verdict(status="error", codes=list(answer.values),
                       detail=f"{blocklist.name}: answer outside 127.0.0.0/8, not a blocklist code")
    return Verdict(status="listed", codes=list(answer.values),
                   detail=f"listed on {blocklist.name} ({blocklist.zone}) {', '.join(answer.values)}")


class WatchResult(msgspec.Struct, kw_only=True):
    listed: list[str] = []        # "192.0.2.11: listed on Spamhaus ZEN (...) 127.0.0.2"
    paused: list[str] = []        # what this run paused or held (was sending before)
    errors: list[str] = []
    checked_ips: int = 0
    checked_domains: int = 0

    def lines(self) -> list[str]:
        return ([f"listed {x}" for x in self.listed] + [f"paused {x}" for x in self.paused]
                + [f"error {x}" for x in self.errors]
                + [f"{self.checked_ips} IP(s) and {self.checked_domains} domain(s) checked: {len(self.listed)} "
                   f"listed, {len(self.paused)} newly paused, {len(self.errors)} check error(s)"])


async def _verdicts(resolver: Resolver, lists: list[Blocklist], subject: str, *,
                    is_ip: bool) -> dict[str, Verdict]:
    usable = [b for b in lists if not (is_ip and ":" in subject and not b.ipv6)]
    names = [blocklist_name(subject, b.zone) if is_ip else f"{subject}.{b.zone}" for b in usable]
    found = await asyncio.gather(*(lookup(resolver, b, n) for b, n in zip(usable, names, strict=True)))
    return {b.name: v for b, v in zip(usable, found, strict=True)}


async def watch(db: asyncpg.Connection, resolver: Resolver, policy: Policy,
                tenant_id: int | None = None) -> WatchResult:
    """One check cycle over the tenant's IPs and domains (every tenant's with None)."""
    result = WatchResult()
    ip_rows = await db.fetch(q("dns-ips"), tenant_id)
    domain_rows = await db.fetch(q("blocklist-domains"), tenant_id)
    ip_verdicts = await asyncio.gather(*(_verdicts(resolver, policy.ip, r["address"], is_ip=True) for r in ip_rows))
    domain_verdicts = await asyncio.gather(*(_verdicts(resolver, policy.domain, r["name"], is_ip=False)
                                             for r in domain_rows))
    result.checked_ips, result.checked_domains = len(ip_rows), len(domain_rows)
    for row, verdicts in zip(ip_rows, ip_verdicts, strict=True):
        await db.execute(q("blocklist-store-ip"), row["tenant_id"], row["id"], msgspec.to_builtins(verdicts))
        reason = _record(result, row["address"], verdicts)
        if reason and row["status"] != ips.IpStatus.BLACKLISTED:
            await ips.change_status(db, row["tenant_id"], row["id"], "blacklist", reason)
            await _alert(db, row["tenant_id"], f"IP {row['address']} ({row['hostname']})", reason, verdicts)
            result.paused.append(f"{row['address']}: {reason}")
    for row, verdicts in zip(domain_rows, domain_verdicts, strict=True):
        await db.execute(q("blocklist-store-domain"), row["tenant_id"], row["id"], msgspec.to_builtins(verdicts))
        reason = _record(result, row["name"], verdicts)
        if reason and await db.fetchval(q("blocklist-hold-domain"), row["tenant_id"], row["id"], reason):
            await _alert(db, row["tenant_id"], f"domain {row['name']}", reason, verdicts)
            result.paused.append(f"{row['name']}: {reason}")
    return result


def _record(result: WatchResult, subject: str, verdicts: dict[str, Verdict]) -> str | None:
    """Note the subject's listings and errors; the pause reason (every list it is on), or None."""
    result.errors.extend(f"{subject}: {v.detail}" for v in verdicts.values() if v.status == "error")
    listed = [v.detail for v in verdicts.values() if v.status == "listed"]
    if not listed:
        return None
    result.listed.append(f"{subject}: {'; '.join(listed)}")
    return "; ".join(listed)


async def _alert(db: asyncpg.Connection, tenant_id: int, subject: str, reason: str,
                 verdicts: dict[str, Verdict]) -> None:
    await alert_events.raise_alert(db, tenant_id, "blocklist_listing", f"{subject} {reason}",
                                   {"subject": subject, "lists": msgspec.to_builtins(verdicts)})


async def release_domain(db: asyncpg.Connection, tenant_id: int, domain_id: int) -> None:
    """Lift a domain's blocklist hold once it is delisted: its campaigns may send again."""
    if await db.fetchval(q("release-domain-hold"), tenant_id, domain_id) is None:
        raise NotFound(f"domain {domain_id} not found")
