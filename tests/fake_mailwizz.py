"""A MailWizz stand-in served for real on 127.0.0.1: the documented endpoints the client uses, their error
answers, state in memory, 2.x key or 1.x signature checks, and scriptable 429/503 answers."""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import itertools
import re
import socket
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, quote_plus

import msgspec
import uvicorn

EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
# draft -> pending-sending -> sending -> sent, one step per poll (GET campaign or its stats).
NEXT_STATUS = {"draft": "pending-sending", "pending-sending": "sending", "sending": "sent"}
OPERATORS = [{"operator_id": "1", "name": "is", "slug": "is"},
             {"operator_id": "2", "name": "is not", "slug": "is-not"},
             {"operator_id": "3", "name": "contains", "slug": "contains"}]
REQUIRED_CAMPAIGN = ("name", "from_name", "from_email", "subject", "reply_to", "send_at", "list_uid")


class Reply(Exception):
    """Raised by a handler to answer at once (errors)."""

    def __init__(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        super().__init__(status)
        self.status, self.body, self.headers = status, body, headers or {}


def fail(status: int, error: Any) -> Reply:
    return Reply(status, {"status": "error", "error": error})


@dataclass
class FakeSubscriber:
    uid: str
    email: str
    status: str
    fields: dict[str, str]


@dataclass
class FakeList:
    uid: str
    name: str
    description: str
    defaults: dict[str, str]
    fields: dict[str, dict[str, str]] = field(default_factory=dict)   # tag -> field record
    subscribers: dict[str, FakeSubscriber] = field(default_factory=dict)
    segments: dict[str, dict[str, Any]] = field(default_factory=dict)

    def by_email(self, email: str) -> FakeSubscriber | None:
        return next((s for s in self.subscribers.values() if s.email.lower() == email.lower()), None)


@dataclass
class FakeCampaign:
    uid: str
    form: dict[str, Any]
    status: str
    html: str


@dataclass
class FakeState:
    lists: dict[str, FakeList] = field(default_factory=dict)
    campaigns: dict[str, FakeCampaign] = field(default_factory=dict)
    templates: dict[str, dict[str, str]] = field(default_factory=dict)
    blacklist: set[str] = field(default_factory=set)
    failures: deque[tuple[int, str | None]] = field(default_factory=deque)
    requests: list[tuple[str, str]] = field(default_factory=list)
    bulk_supported: bool = True


def php_urlencode(value: str) -> str:
    return quote_plus(value, safe="").replace("~", "%7E")


def php_query(pairs: list[tuple[str, str]]) -> str:
    """PHP http_build_query of ksort()ed params: a stable sort on the top-level key keeps nested order."""
    ordered = sorted(pairs, key=lambda kv: kv[0].split("[", 1)[0])
    return "&".join(f"{php_urlencode(k)}={php_urlencode(v)}" for k, v in ordered)


def nest(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """`a[b][0]=x` pairs -> nested dicts, like PHP's $_POST (lists stay dicts keyed by index)."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        parts = [key.split("[", 1)[0], *re.findall(r"\[([^\]]*)\]", key)]
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


class FakeMailWizz:
    """Async context manager: `async with FakeMailWizz() as mw: mw.base_url, mw.state`."""

    def __init__(self, *, api_key: str = "pub-key", private_key: str | None = None, api_version: int = 2,
                 auth_error_status: int = 401) -> None:
        self.api_key, self.private_key, self.api_version = api_key, private_key, api_version
        self.auth_error_status = auth_error_status
        self.state = FakeState()
        self._ids = itertools.count(1)
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task | None = None
        self.base_url = ""

    def fail_next(self, count: int, status: int = 503, retry_after: str | None = None) -> None:
        """The next `count` requests get `status` (with Retry-After when given)."""
        self.state.failures.extend([(status, retry_after)] * count)

    def uid(self, prefix: str) -> str:
        return f"{prefix}{next(self._ids):011d}"

    async def __aenter__(self) -> FakeMailWizz:
        # proto=IPPROTO_TCP, else asyncio does not set TCP_NODELAY on accepted sockets (40 ms Nagle stalls).
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.base_url = f"http://127.0.0.1:{sock.getsockname()[1]}/api"
        config = uvicorn.Config(self.asgi, interface="asgi3", log_level="warning", lifespan="off",
                                access_log=False)
        self._server = uvicorn.Server(config)
        self._server.install_signal_handlers = lambda: None   # older uvicorn; newer ones ignore this
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]))
        while not self._server.started:
            if self._task.done():
                self._task.result()
            await asyncio.sleep(0.01)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None and self._task is not None
        self._server.should_exit = True
        await self._task

    # -- ASGI ------------------------------------------------------------------------------------------

    async def asgi(self, scope: dict, receive: Any, send: Any) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        method = headers.get("x-http-method-override", scope["method"]).upper()
        path = scope["path"].removeprefix("/api/")
        query = parse_qsl(scope["query_string"].decode(), keep_blank_values=True)
        form = parse_qsl(body.decode(), keep_blank_values=True)
        self.state.requests.append((method, path))
        try:
            status, payload, extra = self.dispatch(method, path, headers, query, form)
        except Reply as reply:
            status, payload, extra = reply.status, reply.body, reply.headers
        raw = msgspec.json.encode(payload)
        out = [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())]
        out += [(k.encode(), v.encode()) for k, v in extra.items()]
        await send({"type": "http.response.start", "status": status, "headers": out})
        await send({"type": "http.response.body", "body": raw})

    def dispatch(self, method: str, path: str, headers: dict[str, str], query: list, form: list):
        if self.state.failures:
            status, retry_after = self.state.failures.popleft()
            raise Reply(status, {"status": "error", "error": "Service Unavailable."},
                        {"retry-after": retry_after} if retry_after else {})
        self.authenticate(method, path, headers, query, form)
        for verb, pattern, handler in ROUTES:
            match = re.fullmatch(pattern, path)
            if verb == method and match:
                status, payload = handler(self, nest(form), dict(query), *match.groups())
                return status, payload, {}
        raise fail(404, "The requested page does not exist.")

    def authenticate(self, method: str, path: str, headers: dict[str, str], query: list, form: list) -> None:
        key = headers.get("x-api-key") or headers.get("x-mw-public-key")
        if self.api_version == 2:
            if key != self.api_key:
                raise fail(self.auth_error_status, "Invalid API request authorization (bad API key).")
            return
        public = headers.get("x-mw-public-key", "")
        stamp, remote = headers.get("x-mw-timestamp", ""), headers.get("x-mw-remote-addr", "")
        if public != self.api_key or not stamp.isdigit() or int(stamp) + 900 < time.time():
            raise fail(self.auth_error_status, "Invalid API request public key or timestamp.")
        url = f"{self.base_url}/{path}"
        if query:
            url += "?" + php_query(query)
        special = [("X-MW-PUBLIC-KEY", public), ("X-MW-TIMESTAMP", stamp), ("X-MW-REMOTE-ADDR", remote)]
        params = special + (form if method in ("POST", "PUT", "DELETE") else [])
        text = f"{method} {url}{'&' if query else '?'}{php_query(params)}"
        expected = hmac.new(str(self.private_key).encode(), text.encode(), hashlib.sha1).hexdigest()
        if not hmac.compare_digest(expected, headers.get("x-mw-signature", "")):
            raise fail(self.auth_error_status, "Invalid API request signature.")

    def mail_list(self, list_uid: str) -> FakeList:
        found = self.state.lists.get(list_uid)
        if found is None:
            raise fail(404, "The subscribers list does not exist.")
        return found

    # -- lists, fields, segments -----------------------------------------------------------------------

    def create_list(self, form: dict, query: dict) -> tuple[int, dict]:
        general, defaults = form.get("general") or {}, form.get("defaults") or {}
        errors = {k: f"{k} cannot be blank." for k in ("name",) if not general.get(k)}
        errors |= {k: f"{k} cannot be blank." for k in ("from_name", "from_email", "reply_to") if not defaults.get(k)}
        if errors:
            raise fail(422, errors)
        uid = self.uid("l")
        fl = FakeList(uid=uid, name=general["name"], description=general.get("description", ""), defaults=defaults)
        for tag, label in (("EMAIL", "Email"), ("FNAME", "First name"), ("LNAME", "Last name")):
            fl.fields[tag] = {"field_id": str(next(self._ids)), "tag": tag, "label": label,
                              "required": "yes" if tag == "EMAIL" else "no", "type": {"identifier": "text"}}
        self.state.lists[uid] = fl
        return 201, {"status": "success", "list_uid": uid}

    def list_record(self, fl: FakeList) -> dict:
        return {"general": {"list_uid": fl.uid, "name": fl.name, "display_name": fl.name,
                            "description": fl.description}, "defaults": fl.defaults}

    @staticmethod
    def page_of(records: list[dict], query: dict) -> tuple[int, dict]:
        """MailWizz's paged envelope: per_page clamped to 10..50, next_page null on the last page."""
        per_page = min(50, max(10, int(query.get("per_page", 10))))
        page = max(1, int(query.get("page", 1)))
        total_pages = max(1, -(-len(records) // per_page))
        return 200, {"status": "success", "data": {
            "count": str(len(records)), "total_pages": total_pages, "current_page": page,
            "next_page": page + 1 if page < total_pages else None, "prev_page": page - 1 if page > 1 else None,
            "records": records[(page - 1) * per_page: page * per_page]}}

    def get_lists(self, form: dict, query: dict) -> tuple[int, dict]:
        return self.page_of([self.list_record(fl) for fl in self.state.lists.values()], query)

    def get_list(self, form: dict, query: dict, list_uid: str) -> tuple[int, dict]:
        return 200, {"status": "success", "data": {"record": self.list_record(self.mail_list(list_uid))}}

    def get_fields(self, form: dict, query: dict, list_uid: str) -> tuple[int, dict]:
        return 200, {"status": "success", "data": {"records": list(self.mail_list(list_uid).fields.values())}}

    def create_field(self, form: dict, query: dict, list_uid: str) -> tuple[int, dict]:
        fl = self.mail_list(list_uid)
        tag = form.get("tag", "")
        if not re.fullmatch(r"[A-Z][A-Z0-9_]*", tag) or not form.get("label") or not form.get("type"):
            raise fail(422, {"tag": "Tag must be upper case letters.", "label": "Label cannot be blank."})
        if tag in fl.fields:
            raise fail(422, {"tag": f'Tag "{tag}" has already been taken.'})
        record = {"field_id": str(next(self._ids)), "tag": tag, "label": form["label"],
                  "required": form.get("required", "no"), "type": {"identifier": form["type"]}}
        fl.fields[tag] = record
        return 201, {"status": "success", "data": {"record": record}}

    def condition_operators(self, form: dict, query: dict) -> tuple[int, dict]:
        return 200, {"status": "success", "data": {"records": OPERATORS}}

    def create_segment(self, form: dict, query: dict, list_uid: str) -> tuple[int, dict]:
        fl = self.mail_list(list_uid)
        conditions = list((form.get("conditions") or {}).values())
        if not form.get("name") or form.get("operator_match") not in ("any", "all"):
            raise fail(422, {"operator_match": "Operator match must be any or all."})
        ids = {f["field_id"]: tag for tag, f in fl.fields.items()}
        for cond in conditions:
            if cond.get("field_id") not in ids or cond.get("operator_id") != "1":
                raise fail(422, {"conditions": "Unknown field or operator (the fake knows only 'is')."})
        uid = self.uid("s")
        fl.segments[uid] = {"segment_uid": uid, "name": form["name"], "match": form["operator_match"],
                            "conditions": [(ids[c["field_id"]], c["value"]) for c in conditions]}
        return 201, {"status": "success", "segment_uid": uid}

    # -- subscribers -----------------------------------------------------------------------------------

    def add_subscriber(self, fl: FakeList, form: dict) -> FakeSubscriber:
        email = str(form.get("EMAIL", "")).strip()
        errors = {} if EMAIL_RE.match(email) else {"EMAIL": "Email is not a valid email address."}
        errors |= {tag: f"{f['label']} cannot be blank." for tag, f in fl.fields.items()
                   if f["required"] == "yes" and tag != "EMAIL" and not form.get(tag)}
        if errors:
            raise fail(422, errors)
        if email.lower() in self.state.blacklist:
            raise fail(409, "This email address is blacklisted.")
        if fl.by_email(email):
            raise fail(409, "The subscriber already exists in this list.")
        status = (form.get("details") or {}).get("status", "unconfirmed")
        sub = FakeSubscriber(uid=self.uid("u"), email=email, status=status,
                             fields={t: str(form[t]) for t in fl.fields if t in form and t != "EMAIL"})
        fl.subscribers[sub.uid] = sub
        return sub

    @staticmethod
    def sub_record(sub: FakeSubscriber) -> dict:
        return {"subscriber_uid": sub.uid, "email": sub.email, "ip_address": "192.0.2.1", "source": "api",
                "date_added": "2024-01-01 00:00:00"}

    def create_subscriber(self, form: dict, query: dict, list_uid: str) -> tuple[int, dict]:
        sub = self.add_subscriber(self.mail_list(list_uid), form)
        return 201, {"status": "success", "data": {"record": self.sub_record(sub)}}

    def bulk_subscribers(self, form: dict, query: dict, list_uid: str) -> tuple[int, dict]:
        fl = self.mail_list(list_uid)
        if not self.state.bulk_supported:
            raise fail(404, "The requested page does not exist.")
        records = []
        for item in (form.get("subscribers") or {}).values():
            try:
                records.append({"status": "success", "data": self.sub_record(self.add_subscriber(fl, item))})
            except Reply as reply:
                records.append({"status": "error", "error": reply.body["error"], "data": {"EMAIL": item.get("EMAIL")}})
        return 201, {"status": "success", "data": {"records": records}}

    def list_subscribers(self, form: dict, query: dict, list_uid: str) -> tuple[int, dict]:
        # Records carry the list's fields by TAG (EMAIL, FNAME, ...) beside the subscriber's uid and status.
        return self.page_of([{"subscriber_uid": sub.uid, "EMAIL": sub.email, **sub.fields, "status": sub.status,
                              "source": "api", "ip_address": "192.0.2.1", "date_added": "2024-01-01 00:00:00"}
                             for sub in self.mail_list(list_uid).subscribers.values()], query)

    def search_by_email(self, form: dict, query: dict, list_uid: str) -> tuple[int, dict]:
        sub = self.mail_list(list_uid).by_email(query.get("EMAIL", ""))
        if sub is None:
            raise fail(404, "The subscriber does not exist in this list.")
        return 200, {"status": "success", "data": {"subscriber_uid": sub.uid, "status": sub.status,
                                                   "date_added": "2024-01-01 00:00:00"}}

    def subscriber(self, list_uid: str, sub_uid: str) -> FakeSubscriber:
        sub = self.mail_list(list_uid).subscribers.get(sub_uid)
        if sub is None:
            raise fail(404, "The subscriber does not exist in this list.")
        return sub

    def update_subscriber(self, form: dict, query: dict, list_uid: str, sub_uid: str) -> tuple[int, dict]:
        sub, fl = self.subscriber(list_uid, sub_uid), self.mail_list(list_uid)
        sub.fields |= {t: str(form[t]) for t in fl.fields if t in form and t != "EMAIL"}
        sub.email = form.get("EMAIL", sub.email)
        sub.status = (form.get("details") or {}).get("status", sub.status)
        return 200, {"status": "success", "data": {"record": self.sub_record(sub)}}

    def delete_subscriber(self, form: dict, query: dict, list_uid: str, sub_uid: str) -> tuple[int, dict]:
        self.subscriber(list_uid, sub_uid)
        del self.mail_list(list_uid).subscribers[sub_uid]
        return 200, {"status": "success"}

    def unsubscribe(self, form: dict, query: dict, list_uid: str, sub_uid: str) -> tuple[int, dict]:
        self.subscriber(list_uid, sub_uid).status = "unsubscribed"
        return 200, {"status": "success"}

    def unsubscribe_all(self, form: dict, query: dict) -> tuple[int, dict]:
        found = [s for fl in self.state.lists.values() if (s := fl.by_email(form.get("EMAIL", "")))]
        if not found:
            raise fail(404, "The subscriber does not exist.")
        for sub in found:
            sub.status = "unsubscribed"
        return 200, {"status": "success"}

    # -- templates and campaigns -----------------------------------------------------------------------

    def create_template(self, form: dict, query: dict) -> tuple[int, dict]:
        template = form.get("template") or {}
        html = b64(template.get("content", ""), "content")
        if not template.get("name") or not html:
            raise fail(422, {"name": "Name cannot be blank.", "content": "Content cannot be blank."})
        uid = self.uid("t")
        self.state.templates[uid] = {"name": template["name"], "content": html}
        return 201, {"status": "success", "template_uid": uid}

    def create_campaign(self, form: dict, query: dict) -> tuple[int, dict]:
        campaign, template = form.get("campaign") or {}, (form.get("campaign") or {}).get("template") or {}
        errors = {k: f"{k} cannot be blank." for k in REQUIRED_CAMPAIGN if not campaign.get(k)}
        if not re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", campaign.get("send_at", "")):
            errors["send_at"] = "Send at must be Y-m-d H:i:s."
        if errors:
            raise fail(422, errors)
        fl = self.mail_list(campaign["list_uid"])
        if campaign.get("segment_uid") and campaign["segment_uid"] not in fl.segments:
            raise fail(404, "The segment does not exist.")
        if template.get("template_uid"):
            if template["template_uid"] not in self.state.templates:
                raise fail(404, "The template does not exist.")
            html = self.state.templates[template["template_uid"]]["content"]
        else:
            html = b64(template.get("content", ""), "content")
        if not html:
            raise fail(422, {"template": "Please provide a template (template_uid, content or archive)."})
        uid = self.uid("c")
        status = campaign.get("status", "draft")
        self.state.campaigns[uid] = FakeCampaign(uid=uid, form=campaign, status=status, html=html)
        return 201, {"status": "success", "campaign_uid": uid}

    def poll(self, campaign_uid: str) -> FakeCampaign:
        camp = self.state.campaigns.get(campaign_uid)
        if camp is None:
            raise fail(404, "The campaign does not exist.")
        camp.status = NEXT_STATUS.get(camp.status, camp.status)
        return camp

    def audience(self, camp: FakeCampaign) -> list[FakeSubscriber]:
        fl = self.state.lists[camp.form["list_uid"]]
        segment = fl.segments.get(camp.form.get("segment_uid", ""))
        subs = [s for s in fl.subscribers.values() if s.status == "confirmed"]
        if segment:
            subs = [s for s in subs if all(s.fields.get(t) == v for t, v in segment["conditions"])]
        return subs

    def get_campaign(self, form: dict, query: dict, campaign_uid: str) -> tuple[int, dict]:
        camp = self.poll(campaign_uid)
        f = camp.form
        return 200, {"status": "success", "data": {"record": {
            "campaign_uid": camp.uid, "name": f["name"], "type": "regular", "from_name": f["from_name"],
            "from_email": f["from_email"], "reply_to": f["reply_to"], "subject": f["subject"],
            "status": camp.status, "send_at": f["send_at"], "date_added": "2024-01-01 00:00:00",
            "list": {"list_uid": f["list_uid"], "subscribers_count": len(self.audience(camp))},
            "segment": {"segment_uid": f["segment_uid"]} if f.get("segment_uid") else None}}}

    def campaign_stats(self, form: dict, query: dict, campaign_uid: str) -> tuple[int, dict]:
        camp = self.poll(campaign_uid)
        count = len(self.audience(camp))
        done = count if camp.status == "sent" else 0
        return 200, {"status": "success", "data": {
            "campaign_status": camp.status, "subscribers_count": str(count), "processed_count": str(done),
            "delivery_success_count": str(done), "delivery_error_count": "0", "opens_count": "0",
            "unique_opens_count": "0", "clicks_count": "0", "unique_clicks_count": "0",
            "unsubscribes_count": "0", "hard_bounces_count": "0", "soft_bounces_count": "0"}}

    def pause_unpause(self, form: dict, query: dict, campaign_uid: str) -> tuple[int, dict]:
        camp = self.state.campaigns.get(campaign_uid)
        if camp is None:
            raise fail(404, "The campaign does not exist.")
        camp.status = "sending" if camp.status == "paused" else "paused"
        return 200, {"status": "success", "campaign": {"status": camp.status}}


def b64(value: str, name: str) -> str:
    """base64-decode a template field the way the server does; 422 when it is not base64."""
    if not value:
        return ""
    try:
        return base64.b64decode(value, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise fail(422, {name: "The content must be base64 encoded."}) from None


ROUTES = [
    ("GET", r"lists", FakeMailWizz.get_lists),
    ("POST", r"lists", FakeMailWizz.create_list),
    ("GET", r"lists/segments/condition-operators", FakeMailWizz.condition_operators),
    ("PUT", r"lists/subscribers/unsubscribe-by-email-from-all-lists", FakeMailWizz.unsubscribe_all),
    ("GET", r"lists/(\w+)", FakeMailWizz.get_list),
    ("GET", r"lists/(\w+)/fields", FakeMailWizz.get_fields),
    ("POST", r"lists/(\w+)/fields", FakeMailWizz.create_field),
    ("POST", r"lists/(\w+)/segments", FakeMailWizz.create_segment),
    ("GET", r"lists/(\w+)/subscribers", FakeMailWizz.list_subscribers),
    ("POST", r"lists/(\w+)/subscribers", FakeMailWizz.create_subscriber),
    ("POST", r"lists/(\w+)/subscribers/bulk", FakeMailWizz.bulk_subscribers),
    ("GET", r"lists/(\w+)/subscribers/search-by-email", FakeMailWizz.search_by_email),
    ("PUT", r"lists/(\w+)/subscribers/(\w+)", FakeMailWizz.update_subscriber),
    ("DELETE", r"lists/(\w+)/subscribers/(\w+)", FakeMailWizz.delete_subscriber),
    ("PUT", r"lists/(\w+)/subscribers/(\w+)/unsubscribe", FakeMailWizz.unsubscribe),
    ("POST", r"templates", FakeMailWizz.create_template),
    ("POST", r"campaigns", FakeMailWizz.create_campaign),
    ("GET", r"campaigns/(\w+)", FakeMailWizz.get_campaign),
    ("GET", r"campaigns/(\w+)/stats", FakeMailWizz.campaign_stats),
    ("PUT", r"campaigns/(\w+)/pause-unpause", FakeMailWizz.pause_unpause),
]
