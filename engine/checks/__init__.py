"""A message as mailbox providers and mail clients see it: client support, spam score, size, links, variables.

One place for the rules, used by the suite (every library template in both layouts) and by
`POST /templates/{tenant}/{id}/check` (a user's own template). The slow tools run once per batch of
messages: one node process checks every HTML part against the caniemail data, one perl process scores every
message with SpamAssassin's local rules. A tool that is not installed, fails or times out gives a `not run`
warning instead of findings: a check never raises.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import tempfile
from collections.abc import Sequence
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import msgspec

from engine.errors import Unprocessable
from engine.rendering import TemplateRejected, template_variables

HERE = Path(__file__).parent
DOIUSE_SCRIPT = HERE / "doiuse.mjs"
SPAM_SCRIPT = HERE / "spamassassin.pl"
# Where the test setup installs @jsx-email/doiuse-email (tests/clients/package.json, `npm ci`).
DEFAULT_NODE_MODULES = HERE.parent.parent / "tests" / "clients" / "node_modules"
DOIUSE_ENTRY = Path("@jsx-email/doiuse-email") / "dist" / "index.mjs"

# The clients the issue names, as caniemail calls them: Gmail (web and apps), Outlook (Windows, Mac,
# outlook.com), Apple Mail (macOS, iOS) and Yahoo (web and apps).
CLIENTS: tuple[str, ...] = (
    "gmail.desktop-webmail", "gmail.mobile-webmail", "gmail.ios", "gmail.android",
    "outlook.windows", "outlook.macos", "outlook.outlook-com",
    "apple-mail.macos", "apple-mail.ios",
    "yahoo.desktop-webmail", "yahoo.ios", "yahoo.android",
)

# Gmail clips a message whose HTML passes about 102 KB ("[Message clipped]", the unsubscribe link hidden).
GMAIL_CLIP_BYTES = 102 * 1024
# The engine's own bar, well below SpamAssassin's 5.0: a cold message must not look like bulk at all.
SPAM_LIMIT = 2.0
# A rule worth naming on its own when it scores this much, even below the limit.
SPAM_RULE_NOTE = 0.5
TOOL_TIMEOUT = 120.0

# Features the layouts themselves use that some client lacks, each with the fallback that covers it. The
# layouts are checked against this list (tests/test_checks.py); a template is only held to what it adds.
FALLBACKS: dict[str, str] = {
    "@media": "the dark-mode and narrow-screen rules are enhancements: the layout is fluid without them, and "
              "Outlook on Windows gets a fixed 600 px MSO table",
    "<body> element": "nothing depends on <body>: the wrapper table repeats its background and margins",
    "border-radius": "square corners where unsupported",
    "display:none": "the preheader is also hidden by max-height:0, overflow:hidden, mso-hide:all and a 1px font",
    "opacity": "the preheader is also hidden by display:none, max-height:0 and mso-hide:all",
    "overflow": "the preheader is also hidden by display:none, opacity:0 and mso-hide:all",
    "max-width": "Outlook on Windows, which ignores max-width, gets a fixed 600 px MSO table",
}
_FEATURE = re.compile(r"^`(.+?)` is not supported by `(.+?)`")


class Finding(msgspec.Struct, frozen=True, kw_only=True):
    """One problem, or one thing worth knowing: `error` fails the check, `warning` and `note` do not."""

    check: str              # clients, spam, size, links, variables
    severity: str           # error, warning, note
    message: str
    field: str | None = None
    client: str | None = None


class Message(msgspec.Struct, frozen=True, kw_only=True):
    """One built message to check: its HTML part, the raw bytes as sent, and the template it came from."""

    html: str
    raw: bytes
    subject: str
    body_html: str
    body_text: str | None
    variables: Sequence[str]
    provided: frozenset[str] = frozenset()
    baseline_html: str | None = None   # the layout with an empty body: its own features are not the template's


class Report(msgspec.Struct, frozen=True, kw_only=True):
    passed: bool
    html_bytes: int
    message_bytes: int
    spam_score: float | None
    spam_report: str | None           # SpamAssassin's report, kept when the score reaches the limit
    findings: list[Finding]


# --- checks without tools ----------------------------------------------------------------------------------

class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.links: list[tuple[str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if (tag, name) in (("a", "href"), ("img", "src"), ("link", "href"), ("area", "href")):
                self.links.append((tag, (value or "").strip()))


_ABSOLUTE = re.compile(r"^(https?://[^/\s?#]+|mailto:[^\s]+|tel:[^\s]+)", re.I)


def static_findings(message: Message) -> list[Finding]:
    """Size against Gmail's clipping, absolute links, and every variable documented in the template."""
    found = []
    size = len(message.html.encode())
    if size > GMAIL_CLIP_BYTES:
        found.append(Finding(check="size", severity="error", field="body_html",
                             message=f"the HTML part is {size} bytes: Gmail clips messages past "
                                     f"{GMAIL_CLIP_BYTES} bytes and hides the rest, unsubscribe link included"))
    parser = _Links()
    parser.feed(message.html)
    for tag, link in parser.links:
        if not _ABSOLUTE.match(link):
            found.append(Finding(check="links", severity="error", field="body_html",
                                 message=f"<{tag}> link {link!r} is not absolute (https://host/..., mailto:)"))
    used = template_variables(message.subject, message.body_html, message.body_text) - message.provided
    for name in sorted(used - set(message.variables)):
        found.append(Finding(check="variables", severity="error", field="variables",
                             message=f"{name!r} is used but not listed in the template's variables"))
    return found


# --- tools ---------------------------------------------------------------------------------------------------

class _ToolFailed(Exception):
    pass


async def _run(argv: list[str], stdin: bytes | None, deadline: float,
               env: dict[str, str] | None = None) -> bytes:
    """Run a tool in its own process group; the group is killed when it outlives the deadline."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            start_new_session=True, env=env)
    except OSError as exc:
        raise _ToolFailed(f"{argv[0]}: {exc.strerror}") from None
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin), deadline)
    except (TimeoutError, asyncio.CancelledError):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        raise _ToolFailed(f"{Path(argv[1]).name}: no answer within {deadline:.0f} s") from None
    if proc.returncode != 0:
        raise _ToolFailed(f"{Path(argv[1]).name} exited {proc.returncode}: {err.decode(errors='replace')[-300:]}")
    return out


def doiuse_entry(node_modules: Path | None = None) -> Path | None:
    entry = (node_modules or DEFAULT_NODE_MODULES) / DOIUSE_ENTRY
    return entry if entry.is_file() else None


async def client_support(htmls: Sequence[str], node_modules: Path | None = None,
                         deadline: float = TOOL_TIMEOUT) -> list[tuple[list[str], list[str]]]:
    """(errors, warnings) of each document against the caniemail data, from one node process."""
    entry = doiuse_entry(node_modules)
    if entry is None:
        raise _ToolFailed("@jsx-email/doiuse-email is not installed (npm ci in tests/clients)")
    payload = json.dumps({"clients": list(CLIENTS), "documents": list(htmls)}).encode()
    out = await _run(["node", str(DOIUSE_SCRIPT), str(entry)], payload, deadline)
    try:
        answers = json.loads(out)
        return [(list(a["errors"]), list(a["warnings"])) for a in answers]
    except (ValueError, KeyError, TypeError):
        raise _ToolFailed(f"doiuse.mjs: unreadable answer {out[:200]!r}") from None


class SpamScore(msgspec.Struct, frozen=True, kw_only=True):
    score: float
    tests: dict[str, float]
    report: str


async def spam_scores(raws: Sequence[bytes], deadline: float = TOOL_TIMEOUT) -> list[SpamScore]:
    """SpamAssassin's local rules (no network tests) over every message, from one perl process."""
    with tempfile.TemporaryDirectory(prefix="ee-spam-") as tmp:
        files = []
        for i, raw in enumerate(raws):
            path = Path(tmp) / f"{i:05d}.eml"
            path.write_bytes(raw)
            files.append(str(path))
        # SpamAssassin keeps its per-user state under a home of its own, thrown away with the messages.
        out = await _run(["perl", str(SPAM_SCRIPT), *files], None, deadline, {**os.environ, "SPAMCHECK_HOME": tmp})
    scores = []
    for line in out.splitlines():
        try:
            d = json.loads(line)
            scores.append(SpamScore(score=float(d["score"]), tests={k: float(v) for k, v in d["tests"].items()},
                                    report=str(d["report"])))
        except (ValueError, KeyError, TypeError, AttributeError):
            raise _ToolFailed(f"spamassassin.pl: unreadable line {line[:200]!r}") from None
    if len(scores) != len(raws):
        raise _ToolFailed(f"spamassassin.pl: {len(scores)} answers for {len(raws)} messages")
    return scores


def _client_findings(errors: list[str], warnings: list[str], baseline: set[str]) -> list[Finding]:
    found, seen = [], set()
    for line in errors:
        if line in baseline or line in seen:
            continue
        seen.add(line)
        match = _FEATURE.match(line)
        found.append(Finding(check="clients", severity="error", message=line, field="body_html",
                             client=match.group(2) if match else None))
    return found


def spam_findings(score: SpamScore) -> list[Finding]:
    found = []
    rules = sorted(score.tests.items(), key=lambda kv: -kv[1])
    if score.score >= SPAM_LIMIT:
        named = ", ".join(f"{k} {v:+.1f}" for k, v in rules if v > 0)
        found.append(Finding(check="spam", severity="error", field="subject",
                             message=f"SpamAssassin scores {score.score:.1f} (limit {SPAM_LIMIT}): {named}"))
    for rule, points in rules:
        if points >= SPAM_RULE_NOTE:
            found.append(Finding(check="spam", severity="warning", message=f"{rule} {points:+.1f}",
                                 field="subject" if rule.startswith("SUBJ") or "SUBJECT" in rule else None))
    return found


async def check_messages(messages: Sequence[Message], *, node_modules: Path | None = None, clients: bool = True,
                         spam: bool = True, deadline: float = TOOL_TIMEOUT) -> list[Report]:
    """Every check for every message; the client and spam checks in one process each for the whole batch."""
    tool_notes: list[Finding] = []
    support: list[tuple[list[str], list[str]]] | None = None
    baselines: dict[str, set[str]] = {}
    if clients:
        extra = sorted({m.baseline_html for m in messages if m.baseline_html})
        try:
            answers = await client_support([m.html for m in messages] + extra, node_modules, deadline)
            support = answers[:len(messages)]
            baselines = {html: set(answers[len(messages) + i][0]) for i, html in enumerate(extra)}
        except _ToolFailed as exc:
            tool_notes.append(Finding(check="clients", severity="warning", message=f"not run: {exc}"))
    scores: list[SpamScore] | None = None
    if spam:
        try:
            scores = await spam_scores([m.raw for m in messages], deadline)
        except _ToolFailed as exc:
            tool_notes.append(Finding(check="spam", severity="warning", message=f"not run: {exc}"))
    reports = []
    for i, m in enumerate(messages):
        findings = static_findings(m)
        if support is not None:
            findings += _client_findings(*support[i], baselines.get(m.baseline_html or "", set()))
        score = scores[i] if scores is not None else None
        if score is not None:
            findings += spam_findings(score)
        findings += tool_notes
        reports.append(Report(
            passed=not any(f.severity == "error" for f in findings), html_bytes=len(m.html.encode()),
            message_bytes=len(m.raw), spam_score=score.score if score else None,
            spam_report=score.report if score and score.score >= SPAM_LIMIT else None, findings=findings))
    return reports


# --- building what is checked ------------------------------------------------------------------------------

# The envelope of a checked message: documentation names only, as in the seed.
CHECK_FROM = "outreach@sender.example"
CHECK_TO = "recipient@example.com"
CHECK_UNSUBSCRIBE = "https://engine.example/u/check"


def build_check_message(*, subject: str, body_html: str, body_text: str | None, variables: Sequence[str],
                        language: str, layout: str | None, preheader: str | None, title: str | None,
                        context: dict[str, object], sender: dict[str, str]) -> Message:
    """The message as the dispatcher builds it (layout, identity, unsubscribe headers), ready to check.

    MissingVariable and TemplateRejected pass through: a template that cannot render is a 422, not a finding.
    """
    from engine.layout import build_email
    from engine.sending.messages import build_message
    from engine.templates import PROVIDED
    from engine.unsubscribe import ONE_CLICK

    email = build_email(subject, body_html, body_text, context, language=language, unsubscribe_url=CHECK_UNSUBSCRIBE,
                        layout=layout, preheader=preheader, title=title, sender=sender)
    empty = build_email("-", "", None, {}, language=language, unsubscribe_url=CHECK_UNSUBSCRIBE, layout=layout,
                        sender=sender)
    raw, _ = build_message(
        from_name=sender.get("sender_name") or sender.get("sender_company") or "", from_email=CHECK_FROM,
        to_email=CHECK_TO, subject=email.subject, html=email.html, text=email.text, envelope_id="1", campaign_id=1,
        headers={"List-Unsubscribe": f"<{CHECK_UNSUBSCRIBE}>", "List-Unsubscribe-Post": ONE_CLICK})
    return Message(html=email.html, raw=raw, subject=subject, body_html=body_html, body_text=body_text,
                   variables=variables, provided=PROVIDED, baseline_html=empty.html)


class TemplateCheck(msgspec.Struct, frozen=True, kw_only=True):
    """What `POST /templates/{tenant}/{id}/check` answers: the checks of one stored template."""

    template_id: int
    version: int
    language: str
    layout: str
    passed: bool
    html_bytes: int
    message_bytes: int
    spam_score: float | None
    spam_report: str | None
    findings: list[Finding]


async def check_template(db: Any, tenant_id: int, template_id: int, *, layout: str | None = None,
                         node_modules: Path | None = None) -> TemplateCheck:
    """A tenant's template built as a campaign would send it (sample contact, the tenant's identity), checked."""
    from engine import templates
    from engine.identities import resolve_identity
    from engine.rendering import CONTACT_FIELDS, render_context

    t = await templates.get_template(db, tenant_id, template_id)
    sender = (await resolve_identity(db, tenant_id)).context()
    contact_names = {n for pair in CONTACT_FIELDS for n in pair if n}
    used = set(t.variables) | template_variables(t.subject, t.body_html, t.body_text)
    fields = {n: f"[{n}]" for n in used - templates.PROVIDED - contact_names} | templates.SAMPLE_CONTACT
    if "sender_name" in used and "sender_name" not in sender:
        fields["sender_name"] = "[sender_name]"  # a tenant without an identity yet: checked as a preview shows it
    shape = layout or t.layout
    try:
        built = build_check_message(subject=t.subject, body_html=t.body_html, body_text=t.body_text,
                                    variables=t.variables, language=t.language, layout=shape,
                                    preheader=t.preheader, title=t.title, context=render_context(fields),
                                    sender=sender)
    except TemplateRejected as exc:
        raise Unprocessable(exc.message, field=exc.field) from None
    [report] = await check_messages([built], node_modules=node_modules)
    return TemplateCheck(template_id=t.id, version=t.version, language=t.language, layout=str(shape),
                         passed=report.passed, html_bytes=report.html_bytes, message_bytes=report.message_bytes,
                         spam_score=report.spam_score, spam_report=report.spam_report, findings=report.findings)
