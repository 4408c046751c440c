"""A sequence's rows in dispatch: stop conditions, the recipient's window, the step's template, the thread.

engine.sending.dispatch calls `plan` on each claimed batch of a campaign that has a sequence
(engine.sequences); a campaign without one never comes here. What stops a contact is decided in
`stop_reason` alone, for every step: a human reply (or a colleague's, with the company rule), an auto-reply
(optional; or a pause until after its return date), an earlier step that bounced, failed or drew a complaint.
Unsubscribes, complaints and hard bounces also reach the suppression list and the contact's status, which
the send policy (engine.sending.policy) already refuses before this runs.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import asyncpg
import msgspec
from redis.asyncio import Redis

from engine import sequences, spintax
from engine.campaigns import Campaign, SendStatus
from engine.languages import template_language
from engine.sending import sends
from engine.sequences import Sequence, Step
from engine.templates import Template, TemplateBook
from sql import q

# "Re: " as mail clients write it in each language (Outlook's localised prefixes; the rest write "Re: ").
REPLY_PREFIX = {"de": "AW: ", "pt": "RES: ", "zh": "回复：", "ar": "رد: "}
# Addresses at these domains are people, not companies: the company rule never groups them.
FREEMAIL = frozenset({
    "gmail.com", "googlemail.com", "yahoo.com", "yahoo.fr", "yahoo.co.uk", "outlook.com", "hotmail.com",
    "hotmail.fr", "live.com", "live.fr", "msn.com", "icloud.com", "me.com", "aol.com", "gmx.de", "gmx.net",
    "web.de", "orange.fr", "free.fr", "laposte.net", "sfr.fr", "wanadoo.fr", "yandex.ru", "mail.ru", "qq.com",
    "163.com", "126.com", "proton.me", "protonmail.com", "zoho.com", "uol.com.br", "bol.com.br", "t-online.de",
})
_PLACEHOLDER = re.compile(r"(?<!\{)\{([A-Za-z_][A-Za-z0-9_]*)\}(?!\})")


class RowPlan(msgspec.Struct, kw_only=True):
    """A claimed row of a sequence, as the rest of dispatch needs it."""

    step: int
    variant: int | None
    in_reply_to: str | None
    refs: str | None
    seed: str            # spintax choices: the same for the same campaign, step and contact
    opening_template_id: int | None = None   # the step-1 message a threaded follow-up answers
    opening_variant: int | None = None


class Stops(msgspec.Struct, frozen=True, kw_only=True):
    replied: bool
    colleague_replied: bool
    auto_replied: bool
    return_date: dt.date | None
    bounced: bool


def reply_prefix(language: str | None) -> str:
    return REPLY_PREFIX.get(template_language(language), "Re: ")


def thread_subject(subject: str, language: str | None) -> str:
    """The opening message's subject as a reply's: prefixed once, whatever the step."""
    prefix = reply_prefix(language)
    return subject if subject.startswith(prefix.strip()) else prefix + subject


def company_domain(email: str | None) -> str | None:
    domain = (email or "").rpartition("@")[2].lower()
    return domain if domain and domain not in FREEMAIL else None


def stop_reason(seq: Sequence, stops: Stops | None, domain: str | None, local_today: dt.date
                ) -> str | dt.date | None:
    """Why the contact's sequence stops (a reason), until when it waits (a date), or None: go on."""
    if stops is None:
        return None
    if stops.replied:
        return "sequence stopped: the contact replied"
    if stops.bounced:
        return "sequence stopped: an earlier step bounced or drew a complaint"
    if seq.stop_on.company and domain is not None and stops.colleague_replied:
        return f"sequence stopped: someone at {domain} replied"
    if stops.auto_replied:
        if seq.stop_on.resume_after_return and stops.return_date is not None:
            return stops.return_date if stops.return_date >= local_today else None
        if seq.stop_on.auto_reply:
            return "sequence stopped: an auto-reply"
    return None


async def _slot(redis: Redis, namespace: str, campaign_id: int, opening: dt.datetime, gap: float) -> float:
    """The offset after the window's opening this row takes: the slots add up across workers (Redis)."""
    if gap <= 0:
        return 0.0
    key = f"{namespace}:window-slot:{campaign_id}:{int(opening.timestamp())}"
    taken = float(await redis.incrbyfloat(key, gap))
    await redis.expire(key, 172800)
    return taken - gap


async def plan(db: asyncpg.Pool, redis: Redis, namespace: str, worker_id: str, campaign: Campaign, seq: Sequence,
               tenant_tz: str, rows: list[sends.Claimed], now: dt.datetime
               ) -> tuple[dict[int, RowPlan], list[sends.Outcome]]:
    """Each row's plan, or its outcome: skipped (stopped), or deferred (outside its window, a return date)."""
    ids = [r.id for r in rows]
    info = {r["id"]: r for r in await db.fetch(q("step-rows"), ids)}
    domains = [company_domain(r.email) if seq.stop_on.company else None for r in rows]
    found = {r["contact_id"]: Stops(**{k: r[k] for k in Stops.__struct_fields__})
             for r in await db.fetch(q("sequence-stops"), campaign.id, [r.contact_id for r in rows], domains)}
    window = seq.recipient_window
    off = await sequences.holidays(db, campaign.tenant_id)
    ips = 1
    if window is not None and window.max_gap > 0:
        ips = await db.fetchval(q("tenant-sending-ip-count"), campaign.tenant_id) or 1
    plans: dict[int, RowPlan] = {}
    outcomes: list[sends.Outcome] = []
    assigned: list[tuple[int, int, int]] = []
    for row, domain in zip(rows, domains, strict=True):
        meta = info[row.id]
        zone = sequences.recipient_zone(row.custom, row.country, tenant_tz)
        why = stop_reason(seq, found.get(row.contact_id), domain, now.astimezone(zone).date())
        if isinstance(why, str):
            outcomes.append(sends.Outcome(id=row.id, gen=row.claim_gen, status=SendStatus.SKIPPED, attempted=0,
                                          detail=why))
            continue
        wait_from = now
        if isinstance(why, dt.date):   # back after this date: the next opening of the day after
            wait_from = dt.datetime.combine(why + dt.timedelta(days=1), dt.time(0), tzinfo=zone)
        opening = None
        if window is not None:
            opening = sequences.window_opening(wait_from, zone, window, off)
        elif wait_from is not now:
            opening = wait_from.astimezone(dt.UTC)
        if opening is not None:
            offset = await _slot(redis, namespace, campaign.id, opening, sequences.gap(window, ips)) \
                if window is not None else 0.0
            detail = "waits for the contact's return date" if wait_from is not now \
                else "outside the recipient's sending window"
            outcomes.append(sends.Outcome(id=row.id, gen=row.claim_gen, status=SendStatus.DEFERRED, attempted=0,
                                          detail=detail, next_attempt_at=opening + dt.timedelta(seconds=offset)))
            continue
        step_no = meta["step"]
        step = seq.step(step_no)
        variant = meta["variant"]
        if variant is None and step.variants:
            variant = sequences.assign_variant(campaign.id, step_no, row.contact_id, len(step.variants),
                                               seq.winners.get(str(step_no)))
            assigned.append((row.id, row.claim_gen, variant))
        plans[row.id] = RowPlan(step=step_no, variant=variant, in_reply_to=meta["in_reply_to"],
                                refs=meta["thread_refs"], seed=f"{campaign.id}:{step_no}:{row.contact_id}",
                                opening_template_id=meta["opening_template_id"],
                                opening_variant=meta["opening_variant"])
    if assigned:
        await db.execute(q("set-variants"), [a[0] for a in assigned], [a[1] for a in assigned],
                         [a[2] for a in assigned], worker_id)
    return plans, outcomes


def step_templates(campaign: Campaign, step: Step, step_no: int, variant: int | None) -> dict[str, int]:
    if variant is not None and step.variants[variant].templates:
        return step.variants[variant].templates
    if step.templates:
        return step.templates
    return campaign.templates if step_no == 1 else {}


def choose(book: TemplateBook, campaign: Campaign, seq: Sequence, plan: RowPlan, language: str | None,
           category: str | None) -> Template | None:
    """The step's template: step 1 through the selection chain as always; a follow-up from its own map
    (the contact's language, else English), never the chain, which would send the opening message again."""
    step = seq.step(plan.step)
    chosen = step_templates(campaign, step, plan.step, plan.variant)
    if plan.step == 1:
        template = book.choose(language, category, chosen)
    else:
        template_id = chosen.get(template_language(language), chosen.get("en"))
        template = book.by_id.get(template_id) if template_id is not None else None
    return spun(template, plan.seed) if template is not None else None


def spun(template: Template, seed: str) -> Template:
    """The template with its spintax resolved for one contact (compiled once per distinct text)."""
    subject = spintax.spin(template.subject, seed)
    html = spintax.spin(template.body_html, seed)
    text = spintax.spin(template.body_text, seed) if template.body_text else template.body_text
    if subject is template.subject and html is template.body_html and text is template.body_text:
        return template
    return msgspec.structs.replace(template, subject=subject, body_html=html, body_text=text)


def variant_subject(seq: Sequence, plan: RowPlan, context: dict[str, Any]) -> str | None:
    """A variant's own subject, with its {placeholders} filled and its spintax resolved."""
    if plan.variant is None:
        return None
    subject = seq.step(plan.step).variants[plan.variant].subject
    if subject is None:
        return None
    filled = _PLACEHOLDER.sub(lambda m: str(context.get(m.group(1), "")), spintax.spin(subject, plan.seed))
    return filled


def opening(book: TemplateBook, seq: Sequence, plan: RowPlan, contact_id: int) -> tuple[Template | None, RowPlan]:
    """The step-1 template a threaded follow-up answers, spun as it was for the contact, and its plan."""
    first = RowPlan(step=1, variant=plan.opening_variant, in_reply_to=None, refs=None,
                    seed=plan.seed.rsplit(":", 2)[0] + f":1:{contact_id}")
    template = book.by_id.get(plan.opening_template_id) if plan.opening_template_id is not None else None
    return (spun(template, first.seed) if template is not None else None), first


def threaded(seq: Sequence, plan: RowPlan) -> bool:
    return plan.step > 1 and seq.step(plan.step).thread and plan.in_reply_to is not None


def thread_headers(plan: RowPlan) -> dict[str, str]:
    """In-Reply-To and References of a threaded follow-up (RFC 5322 §3.6.4)."""
    if plan.in_reply_to is None:
        return {}
    return {"In-Reply-To": plan.in_reply_to, "References": plan.refs or plan.in_reply_to}


ADVANCE_PAGE = 1000


async def write_next_steps(db: asyncpg.Pool, campaign: Campaign, seq: Sequence, tenant_tz: str,
                           now: dt.datetime) -> int:
    """Write the next step's row of every contact whose step left, due after the delay; return how many.

    The delay counts from `now`, the moment the engine sees the step gone (a second or so after it left;
    after a crash, when the next worker gets there): a follow-up never comes early. The next step's stop
    conditions are looked at when it is due, not here.
    """
    written = 0
    off = await sequences.holidays(db, campaign.tenant_id)
    while True:
        rows = await db.fetch(q("rows-awaiting-next-step"), campaign.id, ADVANCE_PAGE)
        if not rows:
            return written
        nxt: dict[str, list[Any]] = {k: [] for k in ("contact", "step", "due", "irt", "refs", "lang")}
        for r in rows:
            if r["step"] >= len(seq.steps):
                continue
            step = seq.step(r["step"] + 1)
            zone = sequences.recipient_zone(r["custom"], r["country"], tenant_tz)
            nxt["contact"].append(r["contact_id"])
            nxt["step"].append(r["step"] + 1)
            nxt["due"].append(sequences.next_step_due(now, zone, step.delay, seq.recipient_window, off))
            nxt["irt"].append(r["message_id"])
            nxt["refs"].append(" ".join(x for x in (r["thread_refs"], r["message_id"]) if x) or None)
            nxt["lang"].append(r["language"])
        written += await db.fetchval(q("write-next-steps"), campaign.id, [r["id"] for r in rows], nxt["contact"],
                                     nxt["step"], nxt["due"], nxt["irt"], nxt["refs"], nxt["lang"])
        if len(rows) < ADVANCE_PAGE:
            return written


async def complete_if_done(db: asyncpg.Pool, campaign_id: int) -> bool:
    """complete_if_done for a sequence: also no row still owes its follow-up."""
    return await db.fetchval(q("complete-sequence"), campaign_id) is not None
