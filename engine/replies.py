"""Replies: what came back to a campaign's messages, classified, matched to the send row it answers, stored.

Classification (`classify`): a delivery status notification (RFC 3464: multipart/report;
report-type=delivery-status) is a bounce and goes the bounce path; an RFC 3834 auto-response
(`Auto-Submitted` other than `no`, `X-Autoreply`, `X-Autorespond`, `Precedence: auto_reply`) or an
out-of-office subject in one of the nine languages is an auto-reply, with the return date it names when it
names one; anything else is a human reply.

Matching (`match`), first hit wins: `In-Reply-To`, then `References`, against the Message-IDs the engine
generated; then the reply token of a plus-addressed recipient (`reply+TOKEN@`); then the sender's address
against the contacts a campaign mailed within the window (`SENDER_WINDOW`).
"""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import hashlib
import hmac
import re
from email.message import EmailMessage
from email.utils import getaddresses, parsedate_to_datetime
from enum import StrEnum

import asyncpg
import msgspec

from engine import suppression
from engine.validation import normalise_email
from sql import q

SENDER_WINDOW = dt.timedelta(days=60)
MAX_MESSAGE_BYTES = 2_000_000


class ReplyKind(StrEnum):
    HUMAN = "human"
    AUTO_REPLY = "auto_reply"
    BOUNCE = "bounce"


# Out-of-office subjects as the common mail systems write them (Exchange/Outlook, Gmail, Zimbra, Apple), one
# list per language, matched case-insensitively anywhere in the subject.
OUT_OF_OFFICE = {
    "en": ("out of office", "out of the office", "automatic reply", "auto reply", "autoreply", "auto-reply",
           "on vacation", "away from the office", "on leave", "annual leave"),
    "fr": ("absence du bureau", "réponse automatique", "reponse automatique", "absent du bureau", "en congé",
           "en conge", "message d'absence"),
    "es": ("fuera de la oficina", "respuesta automática", "respuesta automatica", "ausente", "de vacaciones"),
    "de": ("abwesenheitsnotiz", "automatische antwort", "nicht im büro", "nicht im buero", "außer haus",
           "abwesend", "urlaub"),
    "pt": ("ausência temporária", "ausente do escritório", "fora do escritório", "resposta automática",
           "resposta automatica", "de férias"),
    "ru": ("автоматический ответ", "автоответ", "вне офиса", "нет на месте", "в отпуске"),
    "zh": ("自动回复", "自動回覆", "不在办公室", "外出", "休假"),
    "hi": ("स्वचालित उत्तर", "कार्यालय से बाहर", "छुट्टी पर"),
    "ar": ("رد تلقائي", "خارج المكتب", "في إجازة"),
}
_OOO = re.compile("|".join(re.escape(p) for phrases in OUT_OF_OFFICE.values() for p in phrases), re.IGNORECASE)
# "back on 12/14/2026", "return on 2026-12-14", "de retour le 14/12/2026", "zurück am 14.12.2026": a date
# after a return word, in ISO, day-first or (English only) month-first form.
_RETURN_WORDS = (r"(?:back|return(?:ing)?|retour|zurück|zuruck|regreso|vuelta|volta|regresso|вернусь|"
                 r"возвращаюсь|until|jusqu'au|bis|hasta|até)")
_ISO = re.compile(_RETURN_WORDS + r"\D{0,30}?(\d{4})-(\d{2})-(\d{2})", re.IGNORECASE)
_DMY = re.compile(_RETURN_WORDS + r"\D{0,30}?(\d{1,2})[./-](\d{1,2})[./-](\d{4})", re.IGNORECASE)
_TOKEN = re.compile(r"^[^@+]+\+([A-Za-z0-9_-]{6,64})@")


class Classified(msgspec.Struct, frozen=True, kw_only=True):
    kind: ReplyKind
    return_date: dt.date | None = None
    bounced_rcpt: str | None = None      # a DSN: the address that bounced (Final-Recipient)


class Parsed(msgspec.Struct, frozen=True, kw_only=True):
    """What matching and storing need of one message read from a mailbox."""

    message_id: str | None
    from_email: str
    to: list[str]
    subject: str
    in_reply_to: list[str]
    references: list[str]
    received_at: dt.datetime
    classified: Classified


def _ids(value: str | None) -> list[str]:
    return re.findall(r"<[^<>\s]+>", value or "")


def _text(msg: EmailMessage) -> str:
    part = msg.get_body(preferencelist=("plain", "html"))
    if part is None:
        return ""
    try:
        return str(part.get_content())[:20_000]
    except (LookupError, ValueError):
        return ""


def return_date(text: str, *, today: dt.date) -> dt.date | None:
    """The first plausible date after a return word, not in the past."""
    for pattern, order in ((_ISO, "ymd"), (_DMY, "dmy")):
        for m in pattern.finditer(text):
            a, b, c = (int(g) for g in m.groups())
            candidates = [(a, b, c)] if order == "ymd" else [(c, b, a), (c, a, b)]
            for y, mo, d in candidates:
                try:
                    found = dt.date(y, mo, d)
                except ValueError:
                    continue
                if today <= found <= today + dt.timedelta(days=400):
                    return found
    return None


def classify(msg: EmailMessage, *, today: dt.date) -> Classified:
    """Human reply, auto-reply (with its return date) or bounce (DSN)."""
    if msg.get_content_type() == "multipart/report" and \
            msg.get_param("report-type", "").lower() == "delivery-status":
        rcpt = None
        for part in msg.walk():
            if part.get_content_type() == "message/delivery-status":
                raw = part.as_string()
                found = re.search(r"^Final-Recipient:\s*[^;]*;\s*(\S+)", raw, re.IGNORECASE | re.MULTILINE)
                rcpt = found.group(1).strip("<>") if found else None
                break
        return Classified(kind=ReplyKind.BOUNCE, bounced_rcpt=rcpt)
    auto = (msg.get("Auto-Submitted", "no").strip().lower() not in ("", "no")
            or msg.get("X-Autoreply") is not None or msg.get("X-Autorespond") is not None
            or msg.get("Precedence", "").strip().lower() == "auto_reply")
    subject = str(msg.get("Subject", ""))
    if auto or _OOO.search(subject):
        return Classified(kind=ReplyKind.AUTO_REPLY, return_date=return_date(f"{subject}\n{_text(msg)}", today=today))
    return Classified(kind=ReplyKind.HUMAN)


def parse(raw: bytes, *, now: dt.datetime) -> Parsed | None:
    """One message as read from IMAP; None when it has no usable sender (it is skipped, not an error)."""
    try:
        msg = email.message_from_bytes(raw[:MAX_MESSAGE_BYTES], policy=email.policy.default)
        senders = getaddresses([str(msg.get("From", ""))])
        sender = normalise_email(senders[0][1]) if senders else None
        if not sender:
            return None
        to = [a for _, a in getaddresses([str(v) for v in msg.get_all("To", []) + msg.get_all("Delivered-To", [])])]
        try:
            received = parsedate_to_datetime(str(msg["Date"])) if msg["Date"] else now
        except (TypeError, ValueError):
            received = now
        if received.tzinfo is None:
            received = received.replace(tzinfo=dt.UTC)
        mid = _ids(str(msg.get("Message-ID", "")))
        return Parsed(message_id=mid[0] if mid else None, from_email=sender, to=to,
                      subject=str(msg.get("Subject", ""))[:500], in_reply_to=_ids(str(msg.get("In-Reply-To", ""))),
                      references=_ids(str(msg.get("References", ""))), received_at=received,
                      classified=classify(msg, today=now.date()))
    except Exception:  # a message the parser cannot read is a result (skipped), never a crash of the poll
        return None


def reply_token(addresses: list[str]) -> str | None:
    for address in addresses:
        found = _TOKEN.match(address)
        if found:
            return found.group(1)
    return None


class Match(msgspec.Struct, frozen=True, kw_only=True):
    send_id: int
    campaign_id: int
    contact_id: int
    matched_by: str


def make_token(secret_key: str, send_id: int) -> str:
    """The reply token of a send row: its id and a MAC, so a token cannot be guessed from another."""
    mac = hmac.new(secret_key.encode(), f"reply:{send_id}".encode(), hashlib.sha256).hexdigest()[:10]
    return f"{send_id}-{mac}"


def reply_to(address: str, secret_key: str, send_id: int) -> str:
    """`replies@x` -> `replies+TOKEN@x`: a reply to it names its send row whatever its headers say."""
    local, _, domain = address.rpartition("@")
    return f"{local}+{make_token(secret_key, send_id)}@{domain}"


def read_token(secret_key: str, token: str) -> int | None:
    send_id, _, _ = token.partition("-")
    if not send_id.isdigit() or len(send_id) > 18:
        return None
    return int(send_id) if hmac.compare_digest(make_token(secret_key, int(send_id)), token) else None


async def match(db: asyncpg.Connection | asyncpg.Pool, tenant_id: int, parsed: Parsed,
                secret_key: str = "") -> Match | None:
    """The send row this message answers, or None."""
    for how, ids in (("in-reply-to", parsed.in_reply_to), ("references", list(reversed(parsed.references)))):
        if ids:
            row = await db.fetchrow(q("reply-match-message-id"), tenant_id, ids)
            if row is not None:
                return Match(**row, matched_by=how)
    token = reply_token(parsed.to)
    send_id = read_token(secret_key, token) if token is not None and secret_key else None
    if send_id is not None:
        row = await db.fetchrow(q("reply-match-send-id"), tenant_id, send_id)
        if row is not None:
            return Match(**row, matched_by="token")
    row = await db.fetchrow(q("reply-match-sender"), tenant_id, parsed.from_email,
                            parsed.received_at - SENDER_WINDOW)
    if row is not None:
        return Match(**row, matched_by="sender")
    return None


async def record(db: asyncpg.Connection, tenant_id: int, mailbox_id: int | None, parsed: Parsed,
                 secret_key: str = "") -> str | None:
    """Store a matched reply (once per Message-ID); a DSN goes the bounce path. Returns the kind stored."""
    kind = parsed.classified.kind
    if kind is ReplyKind.BOUNCE:
        rcpt = parsed.classified.bounced_rcpt and normalise_email(parsed.classified.bounced_rcpt)
        found = await db.fetchrow(q("reply-bounce-row"), tenant_id, rcpt) if rcpt else None
        if found is None:
            return None
        await db.execute(q("reply-bounce"), found["id"])
        await suppression.add_suppressions(db, tenant_id, [rcpt], reason="hard_bounce", source="dsn")
        return kind.value
    matched = await match(db, tenant_id, parsed, secret_key)
    if matched is None:
        return None
    inserted = await db.fetchval(
        q("insert-reply"), tenant_id, matched.campaign_id, matched.contact_id, matched.send_id, mailbox_id,
        kind.value, matched.matched_by, parsed.from_email, parsed.subject, parsed.message_id,
        parsed.classified.return_date, parsed.received_at)
    return kind.value if inserted else None


class Reply(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    campaign_id: int
    contact_id: int
    send_id: int | None
    step: int | None
    kind: str
    matched_by: str
    from_email: str
    subject: str
    return_date: dt.date | None
    received_at: dt.datetime


async def list_replies(db: asyncpg.Connection, tenant_id: int, campaign_id: int, *, contact_id: int | None,
                       kind: str | None, after: int, limit: int) -> list[Reply]:
    return [Reply(**r) for r in await db.fetch(q("list-replies"), tenant_id, campaign_id, contact_id, kind,
                                               after, limit)]
