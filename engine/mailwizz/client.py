"""MailWizz REST API client: lists, fields, subscribers, templates, segments and campaigns over httpx.

Follows the MailWizz REST API reference. A campaign's audience is a list of its own (engine.mailwizz.
campaigns explains why): `create_list`, `create_subscribers` and `create_campaign` are all in the reference's
endpoint table (§6). Segment creation (`create_language_segment`) is not: it follows the SDK
(ems-api/php-client `ListSegments::create`) and no engine path uses it any more.
"""

from __future__ import annotations

import asyncio
import base64
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import datetime
from enum import StrEnum
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import msgspec

from engine.mailwizz.wire import (
    MailWizzAuthError,
    MailWizzConflict,
    MailWizzError,
    MailWizzNotFound,
    MailWizzUnavailable,
    MailWizzValidationError,
    decode_envelope,
    http_build_query,
    raise_for_envelope,
    record_of,
    retry_after_seconds,
    sign_v1,
    uid_of,
)

__all__ = [
    "MailWizzAuthError", "MailWizzConflict", "MailWizzError", "MailWizzNotFound", "MailWizzUnavailable",
    "MailWizzValidationError", "MailWizzClient", "RetryPolicy", "CampaignStatus", "SubscriberStatus",
    "PushOutcome", "MailList", "ListField", "Subscriber", "SubscriberIn", "SubscriberPush", "CampaignIn",
    "Campaign", "CampaignStats",
]


class RetryPolicy(msgspec.Struct, frozen=True, kw_only=True):
    """How long to wait between attempts at a MailWizz call."""

    first_delay: float = 0.5       # seconds before the first retry, doubled on each next one
    factor: float = 2.0
    max_delay: float = 30.0        # no single backoff sleep longer than this
    jitter: float = 0.25           # +0..25 % so workers that failed together do not retry together
    max_retry_after: float = 120.0  # a longer Retry-After gives up at once and is passed to the caller


# MailWizz publishes no rate-limit figures (reference §4 only says "back off and retry"), so these are the
# conventional exponential values; a worker calling `create_subscribers` in a job can afford ~1 minute.
DEFAULT_RETRY = RetryPolicy()
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
# Transport errors raised before the request left us: safe to retry even a non-idempotent POST.
NOT_SENT_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
BULK_CHUNK = 100            # subscribers per bulk request; the server's own limit is not documented
CUSTOM_FIELDS = ("LANGUAGE", "CATEGORY", "TAGS")   # the engine's fields, created on each list if missing
SEND_AT_FORMAT = "%Y-%m-%d %H:%M:%S"


class CampaignStatus(StrEnum):
    DRAFT = "draft"
    PENDING_SENDING = "pending-sending"
    SENDING = "sending"
    SENT = "sent"
    PROCESSING = "processing"
    PAUSED = "paused"
    PENDING_DELETE = "pending-delete"
    BLOCKED = "blocked"
    PENDING_APPROVE = "pending-approve"


class SubscriberStatus(StrEnum):
    CONFIRMED = "confirmed"
    UNCONFIRMED = "unconfirmed"
    UNSUBSCRIBED = "unsubscribed"
    BLACKLISTED = "blacklisted"
    UNAPPROVED = "unapproved"
    DISABLED = "disabled"
    MOVED = "moved"


class PushOutcome(StrEnum):
    CREATED = "created"
    EXISTS = "exists"              # 409: already in the list (uid filled in from search-by-email)
    BLACKLISTED = "blacklisted"    # 409 and search finds nothing: on the MailWizz blacklist
    REJECTED = "rejected"          # a bulk record the server refused (error says why)


class MailList(msgspec.Struct, frozen=True, kw_only=True):
    uid: str
    name: str
    display_name: str = ""
    description: str = ""


class ListField(msgspec.Struct, frozen=True, kw_only=True):
    field_id: str
    tag: str
    label: str = ""
    type: str = "text"


class Subscriber(msgspec.Struct, frozen=True, kw_only=True):
    uid: str
    email: str = ""
    status: str = ""
    date_added: str = ""


class SubscriberIn(msgspec.Struct, frozen=True, kw_only=True):
    """One subscriber to push: EMAIL plus any field by its TAG (FNAME, LANGUAGE, ...)."""

    email: str
    fields: dict[str, str] = {}
    status: SubscriberStatus = SubscriberStatus.CONFIRMED   # imported contacts: no confirmation email


class SubscriberPush(msgspec.Struct, frozen=True, kw_only=True):
    email: str
    outcome: PushOutcome
    uid: str = ""
    error: str = ""


class CampaignIn(msgspec.Struct, frozen=True, kw_only=True):
    """A campaign to create; `send_at` naive = already in the MailWizz customer's timezone."""

    name: str
    list_uid: str
    from_name: str
    from_email: str
    reply_to: str
    subject: str
    send_at: datetime
    segment_uid: str = ""
    template_uid: str = ""
    html: str = ""                 # sent base64-encoded as template[content] when no template_uid
    plain_text: str = ""
    status: CampaignStatus = CampaignStatus.PENDING_SENDING
    url_tracking: bool = True
    inline_css: bool = False


class Campaign(msgspec.Struct, frozen=True, kw_only=True):
    uid: str
    name: str
    status: CampaignStatus
    subject: str = ""
    send_at: str = ""
    list_uid: str = ""
    segment_uid: str = ""


class CampaignStats(msgspec.Struct, frozen=True, kw_only=True):
    status: CampaignStatus
    subscribers_count: int = 0
    processed_count: int = 0
    delivery_success_count: int = 0
    delivery_error_count: int = 0
    opens_count: int = 0
    unique_opens_count: int = 0
    clicks_count: int = 0
    unique_clicks_count: int = 0
    unsubscribes_count: int = 0
    complaints_count: int = 0
    hard_bounces_count: int = 0
    soft_bounces_count: int = 0


def backoff_delay(policy: RetryPolicy, attempt: int) -> float:
    """Delay before retry number `attempt` (0-based)."""
    delay = min(policy.max_delay, policy.first_delay * policy.factor**attempt)
    return delay * (1 + random.random() * policy.jitter)


def subscriber_form(sub: SubscriberIn) -> dict[str, Any]:
    """The create/update form of one subscriber: tags at the top level, `details[...]` for the status."""
    return {"EMAIL": sub.email, **sub.fields, "details": {"status": sub.status.value}}


def campaign_form(spec: CampaignIn, tz: ZoneInfo) -> dict[str, Any]:
    """The `campaign[...]` form (reference §6.3), template HTML base64-encoded as the server expects."""
    send_at = spec.send_at.astimezone(tz) if spec.send_at.tzinfo else spec.send_at
    if spec.template_uid:
        template: dict[str, Any] = {"template_uid": spec.template_uid}
    else:
        template = {"content": base64.b64encode(spec.html.encode()).decode()}
        if spec.plain_text:
            template["plain_text"] = base64.b64encode(spec.plain_text.encode()).decode()
            template["auto_plain_text"] = "no"
    template["inline_css"] = "yes" if spec.inline_css else "no"
    campaign = {
        "name": spec.name, "type": "regular", "from_name": spec.from_name, "from_email": spec.from_email,
        "subject": spec.subject, "reply_to": spec.reply_to, "send_at": send_at.strftime(SEND_AT_FORMAT),
        "list_uid": spec.list_uid, "segment_uid": spec.segment_uid or None, "status": spec.status.value,
        "options": {"url_tracking": "yes" if spec.url_tracking else "no"}, "template": template,
    }
    return {"campaign": campaign}


def _chunks(items: Sequence[SubscriberIn], size: int) -> Iterable[Sequence[SubscriberIn]]:
    return (items[i:i + size] for i in range(0, len(items), size))


class MailWizzClient:
    """One MailWizz install, one customer API key; owns its httpx client unless one is passed in."""

    def __init__(
        self,
        base_url: str,
        public_key: str,
        private_key: str | None = None,
        *,
        api_version: int = 2,
        timeout: float = 30.0,
        max_retries: int = 4,
        http: httpx.AsyncClient | None = None,
        retry: RetryPolicy = DEFAULT_RETRY,
        concurrency: int = 8,
        customer_timezone: str = "UTC",
        remote_addr: str = "",
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ) -> None:
        if api_version not in (1, 2):
            raise ValueError("api_version must be 1 or 2")
        if api_version == 1 and not private_key:
            raise ValueError("MailWizz 1.x signs every request: private_key is required")
        self.base_url = base_url.rstrip("/")
        self.public_key = public_key
        self.private_key = private_key
        self.api_version = api_version
        self.max_retries = max_retries
        self.retry = retry
        self.timezone = ZoneInfo(customer_timezone)
        self.remote_addr = remote_addr
        self._sleep = sleep
        self._owns_http = http is None
        self._http = http or httpx.AsyncClient(timeout=timeout)
        self._limit = asyncio.Semaphore(concurrency)
        self._operators: dict[str, str] = {}

    async def __aenter__(self) -> MailWizzClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the httpx client if this object created it."""
        if self._owns_http:
            await self._http.aclose()

    # -- transport -------------------------------------------------------------------------------------

    def _headers(self, method: str, url: str, query: Mapping[str, Any], form: Mapping[str, Any]) -> dict[str, str]:
        # Both key headers on every version: 2.x/3.x read X-Api-Key, 1.x reads X-MW-PUBLIC-KEY.
        headers = {"X-Api-Key": self.public_key, "X-MW-PUBLIC-KEY": self.public_key, "Accept": "application/json"}
        if method in ("PUT", "DELETE"):
            headers["X-HTTP-Method-Override"] = method
        if form:
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        if self.api_version == 1:
            special = {"X-MW-PUBLIC-KEY": self.public_key, "X-MW-TIMESTAMP": str(int(time.time())),
                       "X-MW-REMOTE-ADDR": self.remote_addr}
            assert self.private_key is not None
            headers.update(special)
            headers["X-MW-SIGNATURE"] = sign_v1(method, url, query, {**special, **form}, self.private_key)
        return headers

    async def _call(self, method: str, path: str, *, query: Mapping[str, Any] | None = None,
                    form: Mapping[str, Any] | None = None, idempotent: bool = True) -> dict[str, Any]:
        """One API call with retries; returns the success envelope or raises a MailWizzError."""
        query, form = query or {}, form or {}
        url = f"{self.base_url}/{path}"
        full = f"{url}?{http_build_query(dict(sorted(query.items())))}" if query else url
        content = http_build_query(form).encode() if form else b""
        for attempt in range(self.max_retries + 1):
            last = attempt == self.max_retries
            headers = self._headers(method, url, query, form)   # re-signed: the timestamp must be fresh
            try:
                response = await self._http.request(method, full, content=content, headers=headers)
            except httpx.TransportError as exc:
                # A POST that may have reached the server is only repeated when repeating it is harmless.
                if last or not (idempotent or isinstance(exc, NOT_SENT_ERRORS)):
                    raise MailWizzUnavailable(f"{method} {path}: {type(exc).__name__}: {exc}") from exc
                await self._sleep(backoff_delay(self.retry, attempt))
                continue
            if response.status_code in RETRY_STATUSES and not last:
                hint = retry_after_seconds(response.headers.get("retry-after"))
                if hint is not None and hint > self.retry.max_retry_after:
                    break
                await self._sleep(hint if hint is not None else backoff_delay(self.retry, attempt))
                continue
            body = decode_envelope(response)
            raise_for_envelope(response, body)
            return body
        body = decode_envelope(response)
        raise MailWizzUnavailable(str(body.get("error")), status=response.status_code,
                                  retry_after=retry_after_seconds(response.headers.get("retry-after")))

    # -- lists and fields ------------------------------------------------------------------------------

    async def get_list(self, list_uid: str) -> MailList:
        """One list by uid (MailWizzNotFound if unknown)."""
        return _mail_list(record_of(await self._call("GET", f"lists/{list_uid}")))

    async def _pages(self, path: str, per_page: int) -> AsyncIterator[Mapping[str, Any]]:
        """The records of a paged collection, page after page (per_page is clamped to 10..50 by the server)."""
        page = 1
        while True:
            data = (await self._call("GET", path, query={"page": page, "per_page": per_page}))["data"]
            for record in data.get("records") or []:
                yield record
            if not data.get("next_page") or int(data.get("current_page") or page) >= int(data.get("total_pages") or 0):
                return
            page += 1

    async def all_lists(self, per_page: int = 50) -> list[MailList]:
        """Every list of the customer."""
        return [_mail_list(r) async for r in self._pages("lists", per_page)]

    async def subscribers(self, list_uid: str, per_page: int = 50) -> AsyncIterator[Subscriber]:
        """Every subscriber of a list with its status (confirmed, unsubscribed, blacklisted, ...)."""
        async for r in self._pages(f"lists/{list_uid}/subscribers", per_page):
            yield Subscriber(uid=str(r.get("subscriber_uid") or ""), email=str(r.get("EMAIL") or r.get("email") or ""),
                             status=str(r.get("status") or ""), date_added=str(r.get("date_added") or ""))

    async def create_list(self, name: str, *, from_name: str, from_email: str, reply_to: str,
                          subject: str = "", description: str = "",
                          company: Mapping[str, str] | None = None) -> str:
        """Create a list; returns its list_uid. Without `company` MailWizz uses the customer's."""
        form = {
            "general": {"name": name, "description": description or name},
            "defaults": {"from_name": from_name, "from_email": from_email, "reply_to": reply_to,
                         "subject": subject},
            "company": dict(company) if company else None,
        }
        return uid_of(await self._call("POST", "lists", form=form, idempotent=False), "list_uid")

    async def list_fields(self, list_uid: str) -> dict[str, ListField]:
        """The list's fields by TAG."""
        body = await self._call("GET", f"lists/{list_uid}/fields")
        return {f.tag: f for f in map(_list_field, (body.get("data") or {}).get("records") or [])}

    async def ensure_fields(self, list_uid: str, tags: Sequence[str] = CUSTOM_FIELDS) -> dict[str, ListField]:
        """Create the engine's text fields (LANGUAGE, CATEGORY, TAGS) where missing; returns all by TAG."""
        fields = await self.list_fields(list_uid)
        for tag in tags:
            if tag not in fields:
                form = {"type": "text", "label": tag.title(), "tag": tag, "required": "no",
                        "visibility": "visible", "sort_order": len(fields)}
                body = await self._call("POST", f"lists/{list_uid}/fields", form=form, idempotent=False)
                record = record_of(body)
                fields[tag] = ListField(field_id=str(record.get("field_id") or body.get("field_id") or ""),
                                        tag=tag, label=tag.title())
        if any(not f.field_id for f in fields.values()):
            fields = await self.list_fields(list_uid)
        return fields

    async def create_language_segment(self, list_uid: str, language: str, field: ListField) -> str:
        """A segment of the list whose LANGUAGE field equals `language`; returns its segment_uid."""
        operator_id = await self._operator_id("is")
        form = {"name": f"language: {language}", "operator_match": "all",
                "conditions": [{"field_id": field.field_id, "operator_id": operator_id, "value": language}]}
        body = await self._call("POST", f"lists/{list_uid}/segments", form=form, idempotent=False)
        return uid_of(body, "segment_uid")

    async def _operator_id(self, slug: str) -> str:
        if not self._operators:
            body = await self._call("GET", "lists/segments/condition-operators")
            for op in (body.get("data") or {}).get("records") or []:
                self._operators[str(op.get("slug") or op.get("name"))] = str(op["operator_id"])
        return self._operators[slug]

    # -- subscribers -----------------------------------------------------------------------------------

    async def create_subscriber(self, list_uid: str, sub: SubscriberIn) -> SubscriberPush:
        """Add one subscriber; 409 comes back as EXISTS (with the uid) or BLACKLISTED, never raises."""
        try:
            body = await self._call("POST", f"lists/{list_uid}/subscribers", form=subscriber_form(sub))
        except MailWizzConflict:
            return await self._existing(list_uid, sub.email)
        uid = uid_of(body, "subscriber_uid")
        return SubscriberPush(email=sub.email, outcome=PushOutcome.CREATED, uid=uid)

    async def _existing(self, list_uid: str, email: str) -> SubscriberPush:
        found = await self.find_subscriber(list_uid, email)
        if found is None:   # 409 but not in the list: the address is on the blacklist
            return SubscriberPush(email=email, outcome=PushOutcome.BLACKLISTED)
        return SubscriberPush(email=email, outcome=PushOutcome.EXISTS, uid=found.uid)

    async def create_subscribers(self, list_uid: str, subs: Sequence[SubscriberIn]) -> list[SubscriberPush]:
        """Bulk add through `subscribers/bulk` (MailWizz >= 1.8.1), else one create per subscriber."""
        async def chunk(part: Sequence[SubscriberIn]) -> list[SubscriberPush]:
            async with self._limit:
                return await self._bulk(list_uid, part)
        try:
            results = await asyncio.gather(*(chunk(p) for p in _chunks(subs, BULK_CHUNK)))
        except MailWizzNotFound:
            await self.get_list(list_uid)     # raises again if the list itself is unknown
            results = [await self._one_by_one(list_uid, subs)]
        return [push for part in results for push in part]

    async def _bulk(self, list_uid: str, part: Sequence[SubscriberIn]) -> list[SubscriberPush]:
        form = {"subscribers": [subscriber_form(s) for s in part]}
        body = await self._call("POST", f"lists/{list_uid}/subscribers/bulk", form=form)
        # One record per subscriber, in the order sent; a short answer leaves the rest REJECTED, not lost.
        records = list((body.get("data") or {}).get("records") or [])[: len(part)]
        records += [{}] * (len(part) - len(records))
        pushes: list[SubscriberPush] = []
        for sub, rec in zip(part, records, strict=True):
            uid = str((rec.get("data") or {}).get("subscriber_uid") or "")
            error = str(rec.get("error") or "")
            if uid and rec.get("status", "success") == "success":
                pushes.append(SubscriberPush(email=sub.email, outcome=PushOutcome.CREATED, uid=uid))
            elif "exist" in error.lower() or "blacklist" in error.lower():
                pushes.append(await self._existing(list_uid, sub.email))
            else:
                pushes.append(SubscriberPush(email=sub.email, outcome=PushOutcome.REJECTED,
                                             error=error or "no subscriber_uid in the bulk answer"))
        return pushes

    async def _one_by_one(self, list_uid: str, subs: Sequence[SubscriberIn]) -> list[SubscriberPush]:
        async def one(sub: SubscriberIn) -> SubscriberPush:
            async with self._limit:
                try:
                    return await self.create_subscriber(list_uid, sub)
                except MailWizzValidationError as exc:
                    return SubscriberPush(email=sub.email, outcome=PushOutcome.REJECTED, error=exc.message)
        return list(await asyncio.gather(*(one(s) for s in subs)))

    async def find_subscriber(self, list_uid: str, email: str) -> Subscriber | None:
        """Search one list by email; None when absent."""
        try:
            body = await self._call("GET", f"lists/{list_uid}/subscribers/search-by-email",
                                    query={"EMAIL": email})
        except MailWizzNotFound:
            return None
        record = record_of(body)
        return Subscriber(uid=str(record["subscriber_uid"]), email=email, status=str(record.get("status", "")),
                          date_added=str(record.get("date_added") or ""))

    async def update_subscriber(self, list_uid: str, subscriber_uid: str, sub: SubscriberIn) -> None:
        """Replace a subscriber's fields (and status)."""
        await self._call("PUT", f"lists/{list_uid}/subscribers/{subscriber_uid}", form=subscriber_form(sub))

    async def delete_subscriber(self, list_uid: str, subscriber_uid: str) -> None:
        """Remove a subscriber from one list (not an unsubscribe: the address did not ask to leave)."""
        await self._call("DELETE", f"lists/{list_uid}/subscribers/{subscriber_uid}")

    async def unsubscribe(self, list_uid: str, subscriber_uid: str) -> None:
        """Mark one subscriber unsubscribed in one list."""
        await self._call("PUT", f"lists/{list_uid}/subscribers/{subscriber_uid}/unsubscribe")

    async def unsubscribe_everywhere(self, email: str) -> None:
        """Unsubscribe an address from every list of the customer (propagates an engine suppression)."""
        await self._call("PUT", "lists/subscribers/unsubscribe-by-email-from-all-lists", form={"EMAIL": email})

    # -- templates and campaigns -----------------------------------------------------------------------

    async def create_template(self, name: str, html: str, *, inline_css: bool = False) -> str:
        """Upload an HTML template (base64 on the wire); returns its template_uid."""
        form = {"template": {"name": name, "content": base64.b64encode(html.encode()).decode(),
                             "inline_css": "yes" if inline_css else "no"}}
        return uid_of(await self._call("POST", "templates", form=form, idempotent=False), "template_uid")

    async def create_campaign(self, spec: CampaignIn) -> str:
        """Create a campaign; returns its campaign_uid."""
        body = await self._call("POST", "campaigns", form=campaign_form(spec, self.timezone), idempotent=False)
        return uid_of(body, "campaign_uid")

    async def get_campaign(self, campaign_uid: str) -> Campaign:
        """A campaign's detail, chiefly its status."""
        rec = record_of(await self._call("GET", f"campaigns/{campaign_uid}"))
        return Campaign(uid=str(rec["campaign_uid"]), name=str(rec.get("name") or ""),
                        status=CampaignStatus(rec["status"]), subject=str(rec.get("subject") or ""),
                        send_at=str(rec.get("send_at") or ""),
                        list_uid=str((rec.get("list") or {}).get("list_uid") or ""),
                        segment_uid=str((rec.get("segment") or {}).get("segment_uid") or ""))

    async def campaign_stats(self, campaign_uid: str) -> CampaignStats:
        """Delivery, open, click, unsubscribe and bounce counters of a campaign."""
        data = dict((await self._call("GET", f"campaigns/{campaign_uid}/stats")).get("data") or {})
        data["status"] = data.pop("campaign_status", "")
        known = {k: v for k, v in data.items() if k in CampaignStats.__struct_fields__}
        return msgspec.convert(known, CampaignStats, strict=False)   # MailWizz sends counts as strings

    async def pause_campaign(self, campaign_uid: str) -> CampaignStatus:
        """Pause unless already paused (the endpoint toggles, so read first)."""
        return await self._toggle_to(campaign_uid, paused=True)

    async def resume_campaign(self, campaign_uid: str) -> CampaignStatus:
        """Unpause a paused campaign."""
        return await self._toggle_to(campaign_uid, paused=False)

    async def _toggle_to(self, campaign_uid: str, *, paused: bool) -> CampaignStatus:
        current = (await self.get_campaign(campaign_uid)).status
        if (current is CampaignStatus.PAUSED) != paused:
            await self._call("PUT", f"campaigns/{campaign_uid}/pause-unpause")
            current = (await self.get_campaign(campaign_uid)).status
        return current


def _mail_list(rec: Mapping[str, Any]) -> MailList:
    general = rec.get("general") or rec
    return MailList(uid=str(general["list_uid"]), name=str(general.get("name") or ""),
                    display_name=str(general.get("display_name") or ""),
                    description=str(general.get("description") or ""))


def _list_field(rec: Mapping[str, Any]) -> ListField:
    kind = rec.get("type")
    return ListField(field_id=str(rec.get("field_id") or ""), tag=str(rec["tag"]), label=str(rec.get("label") or ""),
                     type=str(kind.get("identifier") if isinstance(kind, Mapping) else kind or "text"))
