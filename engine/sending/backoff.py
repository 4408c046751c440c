"""Provider-aware backoff: a run of reputation deferrals from one mailbox provider on one IP holds that IP for
that provider, while it keeps sending to every other one (KumoMTA's traffic shaping automation is the model).

The reputation deferrals are data, and the same data as PowerMTA's: the patterns of pmta/shaping.toml that
carry a `hold` (Gmail 421 4.7.28, Yahoo TSS04, Outlook 4.7.650...). This module reads that file itself (the
engine imports nothing from pmta/); pmta/shaping.py renders the same patterns into PowerMTA's
<smtp-pattern-list>s and checks them. `hold-after` matching replies within `hold-window` start a hold of
the pattern's `hold`, doubled when the IP is held again within `hold-max` of its last hold's end.
The grant (engine.sending.grants) leaves a held IP out for that provider; when every IP of the tenant is held
for it, the provider's rows wait until the first hold ends.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import tomllib
from collections.abc import Sequence
from functools import cache
from pathlib import Path

import asyncpg
import msgspec

from engine import alert_events
from engine.providers import OTHER
from sql import q

log = logging.getLogger(__name__)

SHAPING_FILE = Path(__file__).resolve().parents[2] / "pmta" / "shaping.toml"
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_TIME = re.compile(r"^(\d+)([smhd])$")
REPLY_MAX = 500


class Rule(msgspec.Struct, frozen=True, kw_only=True):
    provider: str             # the shaping file's block the pattern is in ("general": [defaults])
    reply: str
    hold: float               # seconds


class Table(msgspec.Struct, frozen=True, kw_only=True):
    rules: list[Rule]
    hold_after: int
    window: float
    max_hold: float


class ProviderHold(msgspec.Struct, frozen=True, kw_only=True):
    """One IP's standing with one provider: the deferrals counted and the hold they led to."""

    ip_id: int
    vmta_name: str
    provider: str
    run: int
    last_reply: str | None
    held_until: dt.datetime | None
    hold_seconds: int | None
    holds: int
    active: bool
    updated_at: dt.datetime


def seconds(value: str) -> float:
    """PowerMTA's time notation ("10m", "1h", "2d") in seconds."""
    match = _TIME.match(value.strip())
    if match is None:
        raise ValueError(f"{value!r} is not a time such as 1h")
    return float(int(match.group(1)) * _UNITS[match.group(2)])


def _python_regex(pcre: str) -> re.Pattern[str]:
    # PCRE's "(?-i)X" (case-sensitive from here on) is Python's scoped "(?-i:X)".
    if pcre.startswith("(?-i)"):
        pcre = f"(?-i:{pcre[5:]})"
    return re.compile(pcre, re.IGNORECASE)


@cache
def table(path: Path = SHAPING_FILE) -> Table:
    raw = tomllib.loads(path.read_text("utf-8"))
    defaults = raw["defaults"]
    rules = [Rule(provider="general", reply=p["reply"], hold=seconds(p["hold"]))
             for p in defaults.get("patterns", []) if p.get("hold")]
    rules += [Rule(provider=block["name"], reply=p["reply"], hold=seconds(p["hold"]))
              for block in raw.get("provider", []) for p in block.get("patterns", []) if p.get("hold")]
    return Table(rules=rules, hold_after=int(defaults.get("hold-after", 3)),
                 window=seconds(defaults.get("hold-window", "10m")), max_hold=seconds(defaults.get("hold-max", "24h")))


@cache
def _compiled(path: Path = SHAPING_FILE) -> list[tuple[re.Pattern[str], Rule]]:
    return [(_python_regex(rule.reply), rule) for rule in table(path).rules]


def reputation_deferral(reply: str) -> Rule | None:
    """The hold rule a reply ("421 4.7.28 ...") matches, or None."""
    for pattern, rule in _compiled():
        if pattern.search(reply):
            return rule
    return None


async def observe(pool: asyncpg.Pool | asyncpg.Connection, tenant_id: int,
                  replies: Sequence[tuple[int, str, str]]) -> list[ProviderHold]:
    """Count the reputation deferrals among refusals (ip_id, provider, reply) of one tenant's messages and
    start the holds they call for; return the holds started. Nothing is counted for unknown providers (a
    hold on "other" would stop every small domain) or while the IP is already held for the provider."""
    found: dict[tuple[int, str], tuple[int, str, Rule]] = {}
    for ip_id, provider, reply in replies:
        if provider == OTHER:
            continue
        rule = reputation_deferral(reply)
        if rule is None:
            continue
        n = found.get((ip_id, provider), (0, "", rule))[0]
        found[(ip_id, provider)] = (n + 1, reply[:REPLY_MAX], rule)
    if not found:
        return []
    if isinstance(pool, asyncpg.Pool):
        async with pool.acquire() as db, db.transaction():
            return await _observe(db, tenant_id, found)
    async with pool.transaction():
        return await _observe(pool, tenant_id, found)


async def _observe(db: asyncpg.Connection, tenant_id: int,
                   found: dict[tuple[int, str], tuple[int, str, Rule]]) -> list[ProviderHold]:
    t = table()
    now = dt.datetime.now(dt.UTC)
    started: list[ProviderHold] = []
    for (ip_id, provider), (n, reply, rule) in sorted(found.items()):
        row = await db.fetchrow(q("backoff-lock"), tenant_id, ip_id, provider)
        if row is not None and row["held_until"] is not None and row["held_until"] > now:
            continue
        fresh = row is None or row["run_started_at"] is None or (now - row["run_started_at"]).total_seconds() > t.window
        run = n if fresh else row["run"] + n
        run_started = now if fresh else row["run_started_at"]
        held_until, hold_seconds, holds = (row["held_until"], row["hold_seconds"], row["holds"]) if row else (None, None, 0)
        if run >= t.hold_after:
            repeat = (held_until is not None and hold_seconds
                      and (now - held_until).total_seconds() < t.max_hold)
            hold_seconds = int(min(hold_seconds * 2, t.max_hold) if repeat else min(rule.hold, t.max_hold))
            held_until = now + dt.timedelta(seconds=hold_seconds)
            holds += 1
            deferrals, run, run_started = run, 0, None
        else:
            deferrals = 0
        saved = await db.fetchrow(q("backoff-save"), ip_id, provider, tenant_id, run, run_started, reply,
                                  held_until, hold_seconds, holds)
        if deferrals:
            hold = ProviderHold(**saved)
            started.append(hold)
            await alert_events.raise_alert(db, tenant_id, "provider_backoff", f"ip:{ip_id}/{provider}", {
                "ip_id": ip_id, "vmta_name": hold.vmta_name, "provider": provider, "deferrals": deferrals,
                "reply": reply, "pattern": rule.reply, "hold_seconds": hold_seconds,
                "held_until": held_until.isoformat(), "holds": holds})
            log.warning("tenant %s: IP %s held for %s for %ss after %s deferrals (%s)", tenant_id, ip_id, provider,
                        hold_seconds, deferrals, reply)
    return started


async def held(db: asyncpg.Connection | asyncpg.Pool, tenant_id: int) -> dict[str, dict[int, dt.datetime]]:
    """provider -> {ip_id: held until} of the tenant's holds in force now."""
    out: dict[str, dict[int, dt.datetime]] = {}
    for r in await db.fetch(q("backoff-held"), tenant_id):
        out.setdefault(r["provider"], {})[r["ip_id"]] = r["held_until"]
    return out


async def list_holds(db: asyncpg.Connection, tenant_id: int, ip_id: int | None = None) -> list[ProviderHold]:
    return [ProviderHold(**r) for r in await db.fetch(q("backoff-list"), tenant_id, ip_id)]
