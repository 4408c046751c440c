"""Sequences: a campaign's steps, each contact's clock through them, and the recipient's sending window.

A campaign without a sequence row is one step, sent as it always was. With one, step 1 is the audience fill's
row; when a step has left, the next step's row is written, due after the step's delay counted in the
recipient's calendar (business days skip the window's days off and the tenant's holidays) — one row per
(campaign, step, contact), so the send log's exactly-once machinery covers follow-ups as it covers the
opening message. At send time a row outside its recipient's window waits for the window's next opening.

The recipient's time zone: the contact's `custom.timezone` when it names an IANA zone, else its country's
main zone (the system's zone.tab, first zone listed, with the most populous zone for the countries that span
several), else the tenant's.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import random
from collections.abc import Iterable
from functools import cache
from pathlib import Path
from typing import Annotated, Any
from zoneinfo import TZPATH, ZoneInfo, ZoneInfoNotFoundError

import asyncpg
import msgspec

from engine import spintax
from engine.errors import Conflict, Invalid, NotFound
from engine.languages import LANGUAGES
from sql import q

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
MAX_STEPS = 10
MAX_VARIANTS = 5
Hhmm = Annotated[str, msgspec.Meta(pattern=r"^([01]\d|2[0-3]):[0-5]\d$", examples=["09:00"])]
Day = Annotated[str, msgspec.Meta(pattern=r"^(mon|tue|wed|thu|fri|sat|sun)$")]

# Countries spanning several zones: the zone most of their people live in (zone.tab lists them west to east
# or by history, so its first entry is often a small outlying zone: Noronha for Brazil, Lord Howe for Australia).
MAIN_ZONES = {
    "US": "America/New_York", "CA": "America/Toronto", "BR": "America/Sao_Paulo", "RU": "Europe/Moscow",
    "AU": "Australia/Sydney", "MX": "America/Mexico_City", "ID": "Asia/Jakarta", "KZ": "Asia/Almaty",
    "AR": "America/Argentina/Buenos_Aires", "CL": "America/Santiago", "CN": "Asia/Shanghai",
    "ES": "Europe/Madrid", "PT": "Europe/Lisbon", "DE": "Europe/Berlin", "UA": "Europe/Kyiv",
    "CD": "Africa/Kinshasa", "MN": "Asia/Ulaanbaatar", "EC": "America/Guayaquil", "NZ": "Pacific/Auckland",
    "MY": "Asia/Kuala_Lumpur", "GL": "America/Nuuk", "PF": "Pacific/Tahiti", "KI": "Pacific/Tarawa",
    "FM": "Pacific/Pohnpei", "UZ": "Asia/Tashkent", "CY": "Asia/Nicosia", "PG": "Pacific/Port_Moresby",
}


class Delay(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How long after the step before this one is sent: business days in the recipient's calendar, then hours."""

    business_days: Annotated[int, msgspec.Meta(ge=0, le=60)] = 0
    hours: Annotated[int, msgspec.Meta(ge=0, le=24 * 60)] = 0


class Variant(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """An A/B variant of a step: its own subject and/or its own templates per language."""

    name: Annotated[str, msgspec.Meta(min_length=1, max_length=40, examples=["B"])]
    subject: Annotated[str, msgspec.Meta(min_length=1, max_length=300)] | None = None
    templates: dict[str, int] = msgspec.field(default_factory=dict)


class Step(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    delay: Delay = Delay()
    # {"fr": 12}: the step's template per language, English as the fallback; step 1 defaults to the campaign's map
    templates: dict[str, int] = msgspec.field(default_factory=dict)
    # a threaded follow-up answers the message before it (In-Reply-To/References) under "Re: " + its subject
    thread: bool = True
    variants: Annotated[list[Variant], msgspec.Meta(max_length=MAX_VARIANTS)] = msgspec.field(default_factory=list)


class StopRules(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What stops a contact's sequence (a reply, a bounce, an unsubscribe and a complaint always do)."""

    auto_reply: bool = False            # an out-of-office reply stops it too...
    resume_after_return: bool = False   # ...or, when it names a return date, delays the next step until after it
    company: bool = False               # a reply from anyone at the contact's domain stops the whole company


class RecipientWindow(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """When a message may reach a recipient, in the recipient's own time zone."""

    days: Annotated[list[Day], msgspec.Meta(min_length=1, max_length=7)] = msgspec.field(
        default_factory=lambda: list(DAYS[:5]))
    start: Hhmm = "09:00"
    end: Hhmm = "17:00"
    # rows that wait for the window's opening are spread after it by a random gap per IP within these bounds
    min_gap: Annotated[float, msgspec.Meta(ge=0, le=3600)] = 0.0
    max_gap: Annotated[float, msgspec.Meta(ge=0, le=3600)] = 0.0


class SequenceDraft(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The body of PUT /campaigns/{tenant}/{id}/sequence."""

    steps: Annotated[list[Step], msgspec.Meta(min_length=1, max_length=MAX_STEPS, examples=[
        [{}, {"delay": {"business_days": 2}, "thread": True}]])]
    stop_on: StopRules = StopRules()
    recipient_window: RecipientWindow | None = None
    # after this many sends of every variant of a step, new contacts get the variant with the best reply rate
    winner_after: Annotated[int, msgspec.Meta(ge=1)] | None = None


class Sequence(msgspec.Struct, frozen=True, kw_only=True):
    campaign_id: int
    steps: list[Step]
    stop_on: StopRules
    recipient_window: RecipientWindow | None
    winner_after: int | None
    # step number (as text) -> the winning variant's index, once decided
    winners: dict[str, int]

    def step(self, n: int) -> Step:
        return self.steps[n - 1]


# --- saving ------------------------------------------------------------------------------------------------

def check_sequence(draft: SequenceDraft) -> None:
    """Rules the Struct cannot express: a first step without delay, known languages, a window that opens."""
    if draft.steps[0].delay != Delay():
        raise Invalid("steps[0].delay: the opening message has no delay", field="steps[0].delay")
    for i, step in enumerate(draft.steps):
        maps = [(f"steps[{i}].templates", step.templates)]
        maps += [(f"steps[{i}].variants[{j}].templates", v.templates) for j, v in enumerate(step.variants)]
        for where, templates in maps:
            for lang in templates:
                if lang not in LANGUAGES:
                    raise Invalid(f"{where}: {lang!r} is not one of {sorted(LANGUAGES)}", field=where)
        if len(step.variants) == 1:
            raise Invalid(f"steps[{i}].variants: give two variants or more, or none", field=f"steps[{i}].variants")
        for j, variant in enumerate(step.variants):
            if variant.subject is not None:
                spintax.check(variant.subject, field=f"steps[{i}].variants[{j}].subject")
    window = draft.recipient_window
    if window is not None:
        if window.start >= window.end:
            raise Invalid("recipient_window: start must come before end", field="recipient_window.end")
        if window.max_gap < window.min_gap:
            raise Invalid("recipient_window: max_gap must not be below min_gap", field="recipient_window.max_gap")


def _template_ids(draft: SequenceDraft) -> dict[str, int]:
    found = {}
    for i, step in enumerate(draft.steps):
        for lang, template_id in step.templates.items():
            found[f"steps[{i}].templates.{lang}"] = template_id
        for j, variant in enumerate(step.variants):
            for lang, template_id in variant.templates.items():
                found[f"steps[{i}].variants[{j}].templates.{lang}"] = template_id
    return found


async def save_sequence(db: asyncpg.Connection, tenant_id: int, campaign_id: int, draft: SequenceDraft) -> Sequence:
    """Store a draft campaign's sequence (replacing the one it had)."""
    check_sequence(draft)
    status = await db.fetchval(q("campaign-status-for-sequence"), tenant_id, campaign_id)
    if status is None:
        raise NotFound(f"campaign {campaign_id} not found")
    if status != "draft":
        raise Conflict(f"campaign {campaign_id} is {status}; only a draft's sequence can be edited", field="status")
    wanted = _template_ids(draft)
    if wanted:
        live = {r["id"] for r in await db.fetch(q("live-template-ids"), tenant_id, list(set(wanted.values())))}
        for where, template_id in wanted.items():
            if template_id not in live:
                raise Invalid(f"{where}: template {template_id} not found", field=where)
    await db.execute(q("save-sequence"), campaign_id, tenant_id, msgspec.to_builtins(draft.steps),
                     msgspec.to_builtins(draft.stop_on),
                     msgspec.to_builtins(draft.recipient_window) if draft.recipient_window else None,
                     {"after_sends": draft.winner_after} if draft.winner_after else {})
    found = await get_sequence(db, campaign_id)
    assert found is not None
    return found


async def get_sequence(db: asyncpg.Connection | asyncpg.Pool, campaign_id: int) -> Sequence | None:
    row = await db.fetchrow(q("get-sequence"), campaign_id)
    if row is None:
        return None
    winner = row["winner"] or {}
    return Sequence(campaign_id=campaign_id, steps=msgspec.convert(row["steps"], list[Step]),
                    stop_on=msgspec.convert(row["stop_on"], StopRules),
                    recipient_window=msgspec.convert(row["recipient_window"], RecipientWindow)
                    if row["recipient_window"] else None,
                    winner_after=winner.get("after_sends"), winners=winner.get("steps", {}))


async def get_tenant_sequence(db: asyncpg.Connection, tenant_id: int, campaign_id: int) -> Sequence | None:
    if await db.fetchval(q("campaign-status-for-sequence"), tenant_id, campaign_id) is None:
        raise NotFound(f"campaign {campaign_id} not found")
    return await get_sequence(db, campaign_id)


# --- holidays ----------------------------------------------------------------------------------------------

async def set_holidays(db: asyncpg.Connection, tenant_id: int, days: list[tuple[dt.date, str]]) -> None:
    await db.execute(q("clear-holidays"), tenant_id)
    if days:
        await db.execute(q("add-holidays"), tenant_id, [d for d, _ in days], [n for _, n in days])


async def list_holidays(db: asyncpg.Connection | asyncpg.Pool, tenant_id: int) -> list[tuple[dt.date, str]]:
    return [(r["day"], r["name"]) for r in await db.fetch(q("list-holidays"), tenant_id)]


async def holidays(db: asyncpg.Connection | asyncpg.Pool, tenant_id: int) -> frozenset[dt.date]:
    return frozenset(day for day, _ in await list_holidays(db, tenant_id))


# --- the recipient's clock ---------------------------------------------------------------------------------

@cache
def _country_zones() -> dict[str, str]:
    zones: dict[str, str] = {}
    for base in [*TZPATH, *(str(Path(p)) for p in _tzdata_dirs())]:
        path = Path(base) / "zone.tab"
        if not path.is_file():
            continue
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.startswith("#") or not line.strip():
                continue
            parts = line.split("\t")
            if len(parts) >= 3:
                zones.setdefault(parts[0].upper(), parts[2])
        break
    return {**zones, **MAIN_ZONES}


def _tzdata_dirs() -> list[str]:
    try:
        import tzdata  # type: ignore[import-not-found]
    except ImportError:
        return []
    return [str(Path(tzdata.__file__).parent / "zoneinfo")]


@cache
def _zone(name: str) -> ZoneInfo | None:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None


def recipient_zone(custom: dict[str, Any] | None, country: str | None, tenant_tz: str) -> ZoneInfo:
    """The contact's zone: its own field, else its country's, else the tenant's."""
    explicit = (custom or {}).get("timezone")
    if isinstance(explicit, str) and (zone := _zone(explicit)) is not None:
        return zone
    if country:
        name = _country_zones().get(country.strip().upper())
        if name and (zone := _zone(name)) is not None:
            return zone
    return _zone(tenant_tz) or ZoneInfo("UTC")


def _hhmm(value: str) -> dt.time:
    return dt.time(int(value[:2]), int(value[3:]))


def _open_day(day: dt.date, days: Iterable[str], off: frozenset[dt.date]) -> bool:
    return DAYS[day.weekday()] in days and day not in off


def add_business_days(local: dt.datetime, n: int, days: Iterable[str], off: frozenset[dt.date]) -> dt.datetime:
    """`n` working days later at the same local time (the window's days, less holidays)."""
    days = tuple(days)
    day = local.date()
    for _ in range(n):
        day += dt.timedelta(days=1)
        for _ in range(370):
            if _open_day(day, days, off):
                break
            day += dt.timedelta(days=1)
    return dt.datetime.combine(day, local.timetz().replace(tzinfo=None), tzinfo=local.tzinfo)


def window_opening(now: dt.datetime, zone: ZoneInfo, window: RecipientWindow,
                   off: frozenset[dt.date]) -> dt.datetime | None:
    """None when `now` is inside the recipient's window; else when it next opens (UTC)."""
    local = now.astimezone(zone)
    start, end = _hhmm(window.start), _hhmm(window.end)
    if _open_day(local.date(), window.days, off) and start <= local.time() < end:
        return None
    day = local.date()
    if not (_open_day(day, window.days, off) and local.time() < start):
        day += dt.timedelta(days=1)
        for _ in range(370):
            if _open_day(day, window.days, off):
                break
            day += dt.timedelta(days=1)
    return dt.datetime.combine(day, start, tzinfo=zone).astimezone(dt.UTC)


def next_step_due(sent: dt.datetime, zone: ZoneInfo, delay: Delay, window: RecipientWindow | None,
                  off: frozenset[dt.date]) -> dt.datetime:
    """When a step is due: the delay after the step before it left, in the recipient's calendar."""
    days = window.days if window is not None else DAYS[:5]
    local = add_business_days(sent.astimezone(zone), delay.business_days, days, off)
    return (local + dt.timedelta(hours=delay.hours)).astimezone(dt.UTC)


def gap(window: RecipientWindow, ips: int, rng: random.Random | None = None) -> float:
    """The slot a row takes after the window opens: a random gap per IP, shared by the tenant's IPs."""
    if window.max_gap <= 0:
        return 0.0
    return (rng or random).uniform(window.min_gap, window.max_gap) / max(1, ips)


# --- variants ----------------------------------------------------------------------------------------------

def bucket(*parts: object) -> int:
    """A stable 64-bit number for these parts (the same contact always lands in the same place)."""
    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def assign_variant(campaign_id: int, step: int, contact_id: int, variants: int, winner: int | None) -> int | None:
    """The contact's variant of a step: an even split by a stable hash, or the winner once there is one."""
    if variants < 2:
        return None
    if winner is not None:
        return winner
    return bucket("variant", campaign_id, step, contact_id) % variants


class VariantStats(msgspec.Struct, frozen=True, kw_only=True):
    """A row of variant-stats: one variant of one step."""

    step: int
    variant: int
    sent: int
    delivered: int
    bounced: int
    replied: int
    unsubscribed: int


class VariantReport(msgspec.Struct, frozen=True, kw_only=True):
    step: int
    variant: int
    name: str
    sent: int
    delivered: int
    bounced: int
    replied: int
    unsubscribed: int
    reply_rate: float
    winner: bool


async def variant_report(db: asyncpg.Connection | asyncpg.Pool, seq: Sequence) -> list[VariantReport]:
    rows = [VariantStats(**r) for r in await db.fetch(q("variant-stats"), seq.campaign_id)]
    out = []
    for r in rows:
        variants = seq.step(r.step).variants if r.step <= len(seq.steps) else []
        name = variants[r.variant].name if r.variant < len(variants) else str(r.variant)
        out.append(VariantReport(**msgspec.structs.asdict(r), name=name,
                                 reply_rate=round(r.replied / r.sent, 4) if r.sent else 0.0,
                                 winner=seq.winners.get(str(r.step)) == r.variant))
    return out


def pick_winner(report: list[VariantReport], step: int, variants: int, after: int) -> int | None:
    """The variant with the best reply rate once every variant of the step has `after` sends (ties: first)."""
    mine = [r for r in report if r.step == step]
    if len(mine) < variants or any(r.sent < after for r in mine):
        return None
    return max(mine, key=lambda r: (r.reply_rate, -r.variant)).variant


async def decide_winners(db: asyncpg.Connection | asyncpg.Pool, seq: Sequence) -> dict[int, int]:
    """Decide each step's winner once its variants have enough sends; return the winners decided now."""
    if seq.winner_after is None:
        return {}
    undecided = [n for n, step in enumerate(seq.steps, 1) if len(step.variants) > 1 and str(n) not in seq.winners]
    if not undecided:
        return {}
    report = await variant_report(db, seq)
    decided = {}
    for n in undecided:
        winner = pick_winner(report, n, len(seq.step(n).variants), seq.winner_after)
        if winner is not None and await db.fetchval(q("set-sequence-winner"), seq.campaign_id, str(n), winner):
            decided[n] = winner
    return decided
