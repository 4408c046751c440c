"""What the engine needs from a transport: send one message, get a SendResult back (never an exception)."""

from __future__ import annotations

from enum import StrEnum
from typing import Protocol

import msgspec


class Outcome(StrEnum):
    SENT = "sent"          # the server accepted the message (2xx after DATA)
    SOFT = "soft"          # a 4xx, or the connection broke before acceptance: retry later
    HARD = "hard"          # a 5xx: do not retry


class SendResult(msgspec.Struct, frozen=True, kw_only=True):
    """The outcome of one message handed to a transport."""

    outcome: Outcome
    code: int = 0                 # SMTP reply code (0 when no reply was read)
    enhanced: str = ""            # RFC 3463 enhanced status, e.g. "5.1.1"
    text: str = ""                # the server's reply text, or the local error
    transport_id: str = ""        # the server's queue id or the remote uid, when known
    # False when the message certainly never reached the server (no connection could be opened, the
    # transport was backing off, the call's deadline passed before it was written): retrying it costs no
    # attempt and its quota token can be given back. True once any of its envelope was written.
    transmitted: bool = True

    @property
    def ok(self) -> bool:
        return self.outcome is Outcome.SENT


class OutgoingMessage(msgspec.Struct, frozen=True, kw_only=True):
    """A fully built message ready for injection."""

    envelope_id: str              # the send row, echoed as ENVID / x-envid
    mail_from: str                # the envelope sender (bounce address)
    rcpt_to: str
    data: bytes                   # the RFC 5322 message, CRLF line endings
    vmta: str = ""                # the virtual MTA chosen for this message


class Transport(Protocol):
    """A way out of the engine: PowerMTA over SMTP, or MailWizz.

    `send_many` never raises for anything the peer does and returns within `bound(len(messages))` seconds.
    """

    async def send(self, message: OutgoingMessage) -> SendResult: ...

    async def send_many(self, messages: list[OutgoingMessage]) -> list[SendResult]: ...

    def bound(self, n: int) -> float: ...

    async def close(self) -> None: ...
