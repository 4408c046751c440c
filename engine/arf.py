"""Complaint reports as mailbox providers send them: ARF (RFC 5965) and Microsoft JMRP, parsed into what a
send row can be found by. A report that cannot be read is Invalid, naming what is wrong; nothing else raises.

ARF: a `multipart/report; report-type=feedback-report` message whose second part is `message/feedback-report`
(Feedback-Type, User-Agent, Version, Original-Rcpt-To, Arrival-Date, Source-IP...) and whose third part is
the original message or its headers (`message/rfc822`, `text/rfc822-headers`). JMRP (Outlook.com's Junk Mail
Reporting Program) forwards the original message as a `message/rfc822` attachment with no feedback part: every
JMRP report is a junk complaint. From the original message the engine reads the headers it put on every
message: Message-ID, X-Job (the campaign) and Feedback-ID, and the envelope id (the send row) where it survived:
`x-envid` is removed by PowerMTA (`process-x-envid`), so it is there only in copies kept before PowerMTA, and
`X-Envelope-Id` in messages sent by earlier versions.
"""

from __future__ import annotations

import email
import email.policy
import email.utils
import hashlib
from email.message import Message

import msgspec

from engine.errors import Invalid

MAX_FIELD = 998          # RFC 5322's line limit: longer values are cut, never stored whole
FEEDBACK_TYPES = frozenset({"abuse", "fraud", "other", "virus", "not-spam", "auth-failure"})  # RFC 5965 §7.3, RFC 6591
# Feedback-Types that are no recipient's complaint: a report that the mail is not spam, an authentication failure.
NOT_COMPLAINTS = frozenset({"not-spam", "auth-failure"})


class Report(msgspec.Struct, frozen=True, kw_only=True):
    format: str                       # arf | jmrp
    feedback_type: str
    user_agent: str | None = None
    arrival_date: str | None = None
    source_ip: str | None = None
    original_rcpt: str | None = None  # Original-Rcpt-To, else the original's To (JMRP: X-HmXmrOriginalRecipient)
    envelope_id: str | None = None    # Original-Envelope-Id, else the original's envelope id header
    message_id: str | None = None
    x_job: str | None = None
    feedback_id: str | None = None
    digest: bytes = b""               # sha256 of the raw report

    @property
    def is_complaint(self) -> bool:
        return self.feedback_type not in NOT_COMPLAINTS


def _envelope(original: Message) -> str | None:
    return _value(original.get("x-envid")) or _value(original.get("X-Envelope-Id"))


def _value(raw: object) -> str | None:
    """A header value as stored: one line, valid UTF-8 (undecodable bytes replaced), no NUL, cut to MAX_FIELD."""
    text = " ".join(str(raw).split()) if raw is not None else ""
    text = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace").replace("\x00", "")
    return text[:MAX_FIELD] or None


def _address(header: object) -> str | None:
    """The bare address of "rfc822; a@b" or "Name <a@b>"."""
    raw = _value(header)
    if not raw:
        return None
    raw = raw.split(";", 1)[1] if raw.lower().startswith("rfc822;") else raw
    _, addr = email.utils.parseaddr(raw)
    return _value(addr)


def _original(part: Message) -> Message | None:
    """The original message carried by a message/rfc822 or text/rfc822-headers part."""
    kind = part.get_content_type()
    if kind == "message/rfc822":
        payload = part.get_payload()
        return payload[0] if isinstance(payload, list) and payload else None
    if kind == "text/rfc822-headers":
        body = part.get_payload(decode=True) or b""
        return email.message_from_bytes(body, policy=email.policy.compat32)
    return None


def _fields(part: Message) -> Message:
    """The feedback-report part's fields (header syntax; the stdlib may parse it as a list of header blocks)."""
    payload = part.get_payload()
    if isinstance(payload, list):
        merged = Message()
        for block in payload:
            for name, value in block.items():
                merged[name] = value
        return merged
    return email.message_from_string(str(payload), policy=email.policy.compat32)


def parse(data: bytes, content_type: str | None = None) -> Report:
    """Read one report: `data` is the report message (message/rfc822), or the multipart body alone when
    `content_type` is the request's multipart/report type (its boundary is there)."""
    if not data.strip():
        raise Invalid("body: the report is empty", field="body")
    digest = hashlib.sha256(data).digest()
    if content_type and content_type.lower().startswith("multipart/"):
        data = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode() + data
    message = email.message_from_bytes(data, policy=email.policy.compat32)
    if message.get_content_type() == "multipart/report":
        return _arf(message, digest)
    return _jmrp(message, digest)


def _arf(message: Message, digest: bytes) -> Report:
    report_type = str(email.utils.collapse_rfc2231_value(message.get_param("report-type") or "")).lower()
    if report_type != "feedback-report":
        raise Invalid(f"Content-Type: a multipart/report must have report-type=feedback-report (RFC 5965 §2), "
                      f"got {report_type or 'none'!r}", field="report-type")
    parts = message.get_payload() if message.is_multipart() else []
    feedback = next((p for p in parts if p.get_content_type() == "message/feedback-report"), None)
    if feedback is None:
        raise Invalid("feedback-report: the message/feedback-report part is missing (RFC 5965 §2)",
                      field="feedback-report")
    fields = _fields(feedback)
    kind = (_value(fields.get("Feedback-Type")) or "").lower()
    if not kind:
        raise Invalid("Feedback-Type: the feedback report has no Feedback-Type field (RFC 5965 §3.1)",
                      field="Feedback-Type")
    version = _value(fields.get("Version"))
    if version is not None and version != "1":
        raise Invalid(f"Version: ARF version 1 is the only one defined (RFC 5965 §3.1), got {version!r}",
                      field="Version")
    original = next((o for p in parts if (o := _original(p)) is not None), None)
    if original is None:
        raise Invalid("original message: the third part (message/rfc822 or text/rfc822-headers) is missing "
                      "(RFC 5965 §2)", field="original-message")
    return Report(
        format="arf", feedback_type=kind if kind in FEEDBACK_TYPES else kind[:40],
        user_agent=_value(fields.get("User-Agent")), arrival_date=_value(fields.get("Arrival-Date")),
        source_ip=_value(fields.get("Source-IP")),
        original_rcpt=_address(fields.get("Original-Rcpt-To")) or _address(original.get("To")),
        envelope_id=_value(fields.get("Original-Envelope-Id")) or _envelope(original),
        message_id=_value(original.get("Message-ID")), x_job=_value(original.get("X-Job")),
        feedback_id=_value(original.get("Feedback-ID")), digest=digest)


def _jmrp(message: Message, digest: bytes) -> Report:
    original = next((o for p in message.walk() if p is not message and (o := _original(p)) is not None), None)
    if original is None:
        raise Invalid("body: neither an ARF report (multipart/report; report-type=feedback-report) nor a JMRP "
                      "report (the original message attached as message/rfc822)", field="body")
    return Report(
        format="jmrp", feedback_type="abuse", user_agent=_value(message.get("From")),
        arrival_date=_value(message.get("Date")),
        original_rcpt=_address(original.get("X-HmXmrOriginalRecipient")) or _address(original.get("To")),
        envelope_id=_envelope(original), message_id=_value(original.get("Message-ID")),
        x_job=_value(original.get("X-Job")), feedback_id=_value(original.get("Feedback-ID")), digest=digest)
