"""The message as built for the wire: transfer encodings per part, and the envelope id that PowerMTA removes."""

from __future__ import annotations

import base64
import email
import email.policy

import pytest

from engine.sending.messages import _b64_body, build_message, encode_body, encode_words
from pmta.config import render_sources


def parts(raw: bytes) -> list[email.message.EmailMessage]:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    return [p for p in msg.walk() if p.get_content_maintype() == "text"]


def content(part: email.message.EmailMessage) -> str:
    """The decoded text with line breaks as Python writes them (MIME's canonical form is CRLF)."""
    return part.get_content().replace("\r\n", "\n")


def build(text: str, html: str) -> bytes:
    raw, _ = build_message(from_name="Claire Martin", from_email="claire@sos-expat-mail-01.example",
                           to_email="jane@example.com", subject="Hello", html=html, text=text, envelope_id="4711",
                           campaign_id=9)
    return raw


def test_pure_ascii_parts_go_7bit_and_read_back_unchanged():
    raw = build("Hi Jane,\n\nA short note.\n\nKind regards,\nClaire", "<p>Hi Jane,</p><p>A short note.</p>")
    plain, html = parts(raw)
    assert plain["Content-Transfer-Encoding"] == "7bit" and html["Content-Transfer-Encoding"] == "7bit"
    assert content(plain) == "Hi Jane,\n\nA short note.\n\nKind regards,\nClaire\n"
    assert b"base64" not in raw


@pytest.mark.parametrize(("text", "expected"), [
    ("Bonjour Zoé,\n\nJe me permets de vous écrire au sujet de votre cabinet.", "base64"),
    ("Здравствуйте, Екатерина! Как ваши дела?", "base64"),
    ("a" * 1200, "quoted-printable"),                            # ASCII, but a line too long for 7bit
])
def test_other_text_goes_base64_or_quoted_printable_never_ascii_in_base64(text, expected):
    encoding, body = encode_body(text)
    assert encoding == expected
    assert all(len(line) <= 76 for line in body.split(b"\r\n"))
    raw = build(text, f"<p>{text}</p>")
    plain = parts(raw)[0]
    assert plain["Content-Transfer-Encoding"] == expected and content(plain).rstrip("\n") == text


def test_the_envelope_id_travels_in_x_envid_which_powermta_processes_and_removes():
    raw = build("Hi", "<p>Hi</p>")
    head = raw.split(b"\r\n\r\n", 1)[0].decode()
    assert "X-Envelope-Id" not in head and "\r\nx-envid: 4711\r\n" in head
    # The generated <source> for the engine's injectors has PowerMTA read and strip it.
    source = render_sources(("192.0.2.1",), "0/0:25")
    assert "<source 192.0.2.1>" in source and "    process-x-envid yes\n" in source


def _words_one_character_at_a_time(value: str) -> str:
    """RFC 2047 words packed the plain way: characters added while the word holds 45 bytes (the reference)."""
    words, chunk = [], b""
    for ch in value:
        b = ch.encode()
        if len(chunk) + len(b) > 45:
            words.append(chunk)
            chunk = b""
        chunk += b
    if chunk:
        words.append(chunk)
    return "\r\n ".join(f"=?utf-8?b?{base64.b64encode(w).decode()}?=" for w in words)


def _lines_of_76(data: bytes) -> bytes:
    encoded = base64.b64encode(data)
    return b"".join([encoded[i:i + 76] + b"\r\n" for i in range(0, len(encoded), 76)])


@pytest.mark.parametrize("subject", [
    "Votre dossier d'expatriation : une question rapide, Zoé", "é" * 22 + "x", "x" + "é" * 22, "é" * 23,
    "Быстрый вопрос о вашей компании и переезде за границу", "关于您在海外的法律服务的一个简短问题" * 3,
    "आपकी कंपनी के बारे में एक छोटा सा सवाल", "سؤال سريع حول شركتكم", "🎉" * 12 + "a🎉", "a" * 44 + "é" + "b" * 44 + "€",
])
def test_subject_words_are_the_ones_packed_a_character_at_a_time(subject):
    assert encode_words(subject) == _words_one_character_at_a_time(subject)
    decoded = email.message_from_bytes(b"Subject: " + encode_words(subject).encode() + b"\r\n\r\n",
                                       policy=email.policy.default)["Subject"]
    assert decoded == subject


def test_base64_bodies_are_the_lines_of_76_they_always_were():
    for size in (*range(0, 200), 3637, 4800, 9000):
        data = bytes((i * 37 + size) % 256 for i in range(size))
        assert _b64_body(data) == _lines_of_76(data)
