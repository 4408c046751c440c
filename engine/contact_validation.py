"""Validating stored contacts: one batch of verdicts written back set-based, DNS outages retried later."""

from __future__ import annotations

from typing import Any

import asyncpg
import httpx
import msgspec

from engine import alert_events, metrics, secrets, verifiers
from engine.db import json_rows
from engine.validation import DEFAULT_THRESHOLD, MxResolver, Verdict, validate_batch
from sql import q

# Delay before asking DNS again after an outage, by the number of outages the contact has met in a row.
# Short first (a resolver blip), then up to six hours (a long outage); after the last one the contact stays
# `pending` until it is re-ingested or an operator acts. Never `invalid`: an outage says nothing about it.
RETRY_DELAYS = (60, 300, 900, 3600, 6 * 3600)

# The sweep's view of a pending contact: past its retry delay plus SWEEP_GRACE, no job is coming for it
# (a Redis restart without persistence drops the queue; an operator set it back to pending), so the sweep
# enqueues it again. A contact whose DNS retries ran out is tried again once every GIVE_UP_RETRY seconds.
SWEEP_GRACE = 1800
GIVE_UP_RETRY = 24 * 3600
SWEEP_LIMIT = 20_000

# The name of the campaigns side's job that pushes outbox rows to MailWizz (it reads `mailwizz_outbox`).
MAILWIZZ_PUSH_JOB = "push_contacts_to_mailwizz"


class Applied(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One verdict as apply-verdicts reads it."""

    id: int
    status: str
    score: float
    reasons: tuple[str, ...] = ()
    suggestion: str | None = None
    mx_host: str | None = None


class Policy(msgspec.Struct, frozen=True, kw_only=True):
    """A tenant's validation knobs, from `tenants.settings` over the defaults."""

    threshold: float = DEFAULT_THRESHOLD
    mailwizz: bool = False
    provider: str | None = None      # zerobounce | neverbounce; None = off (the default)
    api_key: str | None = None       # decrypted vendor key
    base_url: str | None = None      # vendor endpoint override (tests, proxies)


class ValidationRun(msgspec.Struct, frozen=True, kw_only=True):
    """What one run decided; `retry_ids` wait for DNS, `retry_in` seconds from now (None: give up)."""

    valid: list[int]
    risky: list[int]
    invalid: list[int]
    retry_ids: list[int]
    retry_in: int | None
    mailwizz: bool


async def load_policy(db: asyncpg.Connection | asyncpg.Pool, tenant_id: int, secret_key: str) -> Policy | None:
    row = await db.fetchrow(q("validation-policy"), tenant_id)
    if row is None:
        return None
    knobs: dict[str, Any] = row["settings"] or {}
    verification = knobs.get("verification") or {}
    api_key = None
    if verification.get("api_key_enc"):
        api_key = secrets.decrypt(secret_key, verification["api_key_enc"].encode())
    return Policy(threshold=float(knobs.get("validation_threshold", DEFAULT_THRESHOLD)),
                  mailwizz=row["transport"] == "mailwizz",
                  provider=verification.get("provider") if api_key else None,
                  api_key=api_key, base_url=verification.get("base_url"))


async def _with_vendor(verdicts: list[Verdict],
                       policy: Policy) -> tuple[list[Verdict], list[bool], list[verifiers.VendorVerdict]]:
    """Ask the tenant's vendor about addresses our checks would send to; its `invalid`/`risky` wins."""
    used = [False] * len(verdicts)
    answers: list[verifiers.VendorVerdict] = []
    if policy.provider is None:
        return verdicts, used, answers
    out = list(verdicts)
    async with httpx.AsyncClient(timeout=verifiers.NEVERBOUNCE_TIMEOUT + 5) as client:
        for i, v in enumerate(verdicts):
            if v.status not in ("valid", "risky"):
                continue
            answer = await verifiers.verify(policy.provider, policy.api_key, v.email, client,
                                            base_url=policy.base_url)
            answers.append(answer)
            if answer.status == "pending":
                continue  # no vendor verdict: ours stands
            used[i] = True
            if answer.status == "invalid" or (answer.status == "risky" and v.status == "valid"):
                out[i] = msgspec.structs.replace(
                    v, status=answer.status, score=min(v.score, 0.0 if answer.status == "invalid" else 0.5),
                    reasons=(*v.reasons, f"{policy.provider}_{answer.vendor_status}"),
                    suggestion=v.suggestion or answer.suggestion)
    return out, used, answers


async def stale_pending(db: asyncpg.Connection, *, limit: int = SWEEP_LIMIT) -> dict[int, list[int]]:
    """Pending contacts that no queued job will validate, per tenant, ids ascending (oldest change first)."""
    rows = await db.fetch(q("stale-pending-contacts"), [0, *RETRY_DELAYS], GIVE_UP_RETRY, SWEEP_GRACE, limit)
    stale: dict[int, list[int]] = {}
    for r in rows:
        stale.setdefault(r["tenant_id"], []).append(r["id"])
    return {tenant_id: sorted(ids) for tenant_id, ids in stale.items()}


async def validate_contacts(db: asyncpg.Connection, tenant_id: int, contact_ids: list[int], *,
                            resolver: MxResolver, secret_key: str) -> ValidationRun:
    """Validate the still-pending contacts among `contact_ids` and write the verdicts back in one statement.

    Call inside a transaction (the planner setting below lasts until its end).
    """
    await db.execute(q("plan-per-batch"))
    policy = await load_policy(db, tenant_id, secret_key)
    rows = await db.fetch(q("contacts-to-validate"), tenant_id, contact_ids) if policy else []
    if not rows:
        return ValidationRun(valid=[], risky=[], invalid=[], retry_ids=[], retry_in=None, mailwizz=False)
    verdicts = await validate_batch([r["email"] for r in rows], resolver=resolver, threshold=policy.threshold)
    verdicts, vendor_used, answers = await _with_vendor(verdicts, policy)
    trouble = verifiers.failing(answers)
    if trouble is not None:
        await alert_events.raise_alert(db, tenant_id, "validation_provider_failing", f"verifier:{policy.provider}",
                                       trouble)
    applied = [Applied(id=r["id"], status=v.status, score=v.score, reasons=v.reasons, suggestion=v.suggestion,
                       mx_host=v.mx_host) for r, v in zip(rows, verdicts, strict=True)]
    done = await db.fetch(q("apply-verdicts"), tenant_id, json_rows(applied), policy.mailwizz,
                          policy.provider if any(vendor_used) else "engine")
    by_status: dict[str, list[int]] = {"valid": [], "risky": [], "invalid": [], "pending": []}
    tries = 0
    for r in done:
        by_status[r["status"]].append(r["id"])
        if r["status"] == "pending":
            tries = max(tries, r["validation_tries"])
    retry_in = RETRY_DELAYS[tries - 1] if by_status["pending"] and tries <= len(RETRY_DELAYS) else None
    for status, ids in by_status.items():
        if ids:
            metrics.VALIDATIONS.labels(str(tenant_id), status).inc(len(ids))
    return ValidationRun(valid=by_status["valid"], risky=by_status["risky"], invalid=by_status["invalid"],
                         retry_ids=by_status["pending"] if retry_in else [], retry_in=retry_in,
                         mailwizz=policy.mailwizz)
