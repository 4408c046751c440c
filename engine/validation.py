"""Email address validation: normalise, syntax and length limits, list checks, MX, one scored verdict."""

from __future__ import annotations

import asyncio
import functools
import re
import unicodedata
from collections.abc import Iterable
from typing import Literal

import idna
import msgspec
from disposable_email_domains import allowlist as _disposable_allowlist
from disposable_email_domains import blocklist as _disposable_blocklist

from engine.mx import DomainCheck, MxResolver, make_resolver, parse_dns_servers

__all__ = [
    "Verdict", "normalise_email", "check_syntax", "suggest_domain", "is_disposable", "is_role_account",
    "assess", "validate_batch", "make_resolver", "parse_dns_servers", "MxResolver", "DomainCheck",
]

# Score policy: every address starts at 1.0 and each reason takes its penalty off. A HARD reason means
# the address cannot receive mail and sets the score to 0 (status invalid). PENDING reasons mean DNS did
# not answer: the status is `pending` (retry later), never invalid (deliverability.md §2.2). The soft
# numbers are ours, chosen so that with the default threshold 0.8 a role account (0.7), a typo (0.5) or
# a disposable domain (0.4) is `risky`, an A-record-only domain (0.9) stays `valid` with its reason shown,
# and two soft problems together fall under the floor. Tenants tune the threshold, not these numbers.
HARD_REASONS = frozenset({"syntax", "too_long", "quoted_local", "no_domain", "null_mx", "no_mx"})
PENDING_REASONS = frozenset({"dns_timeout", "dns_servfail"})
PENALTIES = {
    "no_mx_a_fallback": 0.1,  # implicit MX (RFC 5321 §5.1) works, but real mail domains publish MX
    "role_account": 0.3,  # RFC 2142 mailboxes reach a team or nobody; verifiers flag them too
    "utf8_local": 0.4,  # legal with SMTPUTF8 (RFC 6531), which many receivers still refuse
    "typo": 0.5,  # probably a mistyped big provider: the suggestion is the address that works
    "disposable": 0.6,  # throwaway inbox: no one reads it a week later
}
DEFAULT_THRESHOLD = 0.8
INVALID_FLOOR = 0.2  # under this the soft problems add up to "do not send"

# RFC 5321 §4.5.3.1 limits, in octets (254 for the address: RFC 3696 erratum 1690).
MAX_LOCAL = 64
MAX_ADDRESS = 254
MAX_DOMAIN = 253
MAX_LABEL = 63

# RFC 2142 mailbox names plus the role names cold-email tools skip (deliverability.md §2.4).
ROLE_ACCOUNTS = frozenset({
    "info", "marketing", "sales", "support", "abuse", "noc", "security", "postmaster", "hostmaster",
    "usenet", "news", "webmaster", "www", "uucp", "ftp",
    "admin", "administrator", "billing", "contact", "hello", "hr", "jobs", "careers", "office", "team",
    "noreply", "no-reply", "no_reply", "donotreply", "do-not-reply", "mailer-daemon", "root", "help",
    "enquiries", "inquiries", "accounts", "press", "media", "privacy", "legal", "service", "feedback",
})

# Mistyped domains of big mailbox providers, seen in scraped and form-filled lists.
TYPO_DOMAINS = {
    "gmial.com": "gmail.com", "gmai.com": "gmail.com", "gamil.com": "gmail.com", "gnail.com": "gmail.com",
    "gmaill.com": "gmail.com", "gmail.co": "gmail.com", "gmail.cm": "gmail.com", "gmail.con": "gmail.com",
    "gmail.om": "gmail.com", "gmailcom": "gmail.com", "hotmial.com": "hotmail.com",
    "hotmal.com": "hotmail.com", "hotmai.com": "hotmail.com", "hotmail.co": "hotmail.com",
    "hotmail.con": "hotmail.com", "yaho.com": "yahoo.com", "yahooo.com": "yahoo.com",
    "yhaoo.com": "yahoo.com", "yahoo.con": "yahoo.com", "outlok.com": "outlook.com",
    "outloo.com": "outlook.com", "outlook.co": "outlook.com", "outlook.con": "outlook.com",
    "iclod.com": "icloud.com", "icloud.co": "icloud.com", "aol.co": "aol.com",
}
# Providers the edit-distance check compares against. Short names (aol.com, live.com, gmx.de) are left
# out: one letter away from them are real, unrelated domains.
BIG_PROVIDERS = ("gmail.com", "googlemail.com", "yahoo.com", "hotmail.com", "outlook.com", "icloud.com",
                 "protonmail.com")
NOT_TYPOS = frozenset({"email.com", "ymail.com", "gmx.com", "mail.com"})  # real providers near a big one

Status = Literal["valid", "risky", "invalid", "pending"]
# RFC 5322 §3.2.3 atext, plus non-ASCII non-space characters (RFC 6531 UTF8-non-ascii).
_ATOM = r"(?:[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]|[^\x00-\x7f\s])+"
_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
# Whole parts in one match each (a dot-atom local part, LDH labels): the check runs twice per ingested
# address, once at ingest and once in its validation batch, so one regex beats a split and a match per piece.
_LOCAL = re.compile(rf"{_ATOM}(?:\.{_ATOM})*\Z")
_DOMAIN = re.compile(rf"(?:{_LABEL}\.)+{_LABEL}\Z")


class Verdict(msgspec.Struct, frozen=True, kw_only=True):
    """The outcome of validating one address."""

    email: str
    status: Status
    score: float
    reasons: tuple[str, ...] = ()
    suggestion: str | None = None
    mx_host: str | None = None  # the preferred MX, to recognise the mailbox provider later


def normalise_email(raw: str) -> str | None:
    """Trimmed, lower-cased, punycoded address, or None when no address can be made of it."""
    text = raw.strip().removeprefix("mailto:").strip("<> \t")
    local, at, domain = text.rpartition("@")
    if not at or not local or not domain:
        return None
    # The local part is case-sensitive in RFC 5321, but no mailbox provider treats it so; lowering it
    # is cold-email practice and makes "John@x" and "john@x" one contact.
    local = local.lower()
    if not local.isascii():
        local = unicodedata.normalize("NFC", local)  # RFC 6532 §3.1: one spelling of each accented letter
    ascii_domain = _ascii_domain(domain.rstrip("."))
    return None if ascii_domain is None else f"{local}@{ascii_domain}"


@functools.lru_cache(maxsize=4096)
def _ascii_domain(domain: str) -> str | None:
    """UTS 46 mapping + punycode; cached because a batch repeats a few domains thousands of times."""
    try:
        return idna.encode(domain, uts46=True).decode("ascii")
    except (idna.IDNAError, UnicodeError):
        return None


# Letters of these scripts look alike ("о" is Cyrillic in "jоhn"): a local part mixing them is a spoof's shape.
_CONFUSABLE_SCRIPTS = frozenset({"LATIN", "CYRILLIC", "GREEK"})


def _look_alike(local: str) -> bool:
    """True when a non-ASCII local part hides characters (format, control, private use, unassigned) or mixes
    Latin, Cyrillic and Greek letters. Domains need no such check: UTS 46 drops invisible characters and a
    mixed-script domain becomes its own punycode name."""
    scripts = set()
    for ch in local:
        if unicodedata.category(ch) in ("Cf", "Cc", "Co", "Cn", "Zs", "Zl", "Zp"):
            return True
        if ch.isalpha():
            script = unicodedata.name(ch, "").split(" ", 1)[0]
            if script in _CONFUSABLE_SCRIPTS:
                scripts.add(script)
    return len(scripts) > 1


def check_syntax(email: str) -> str | None:
    """The hard reason a normalised address is unusable (syntax | too_long | quoted_local), or None."""
    local, _, domain = email.rpartition("@")
    if local.startswith('"'):
        return "quoted_local"  # legal in RFC 5322, but ESPs and forms choke on it; not worth the risk
    if len(local.encode()) > MAX_LOCAL or len(email.encode()) > MAX_ADDRESS or len(domain) > MAX_DOMAIN:
        return "too_long"
    if not _LOCAL.match(local):
        return "syntax"  # an empty atom = a leading, trailing or doubled dot
    if not local.isascii() and _look_alike(local):
        return "syntax"
    if "." not in domain or domain.rpartition(".")[2].isdigit():
        return "syntax"  # dotless domains and numeric TLDs (RFC 3696 §2) take no mail
    if not _DOMAIN.match(domain):
        return "too_long" if any(len(label) > MAX_LABEL for label in domain.split(".")) else "syntax"
    return None


def _distance_one(a: str, b: str) -> bool:
    """True when a and b differ by one edit: insert, delete, substitute or swap neighbours."""
    if a == b or abs(len(a) - len(b)) > 1:
        return False
    i = 0
    while i < min(len(a), len(b)) and a[i] == b[i]:
        i += 1
    if len(a) == len(b):
        return a[i + 1:] == b[i + 1:] or (a[i + 2:] == b[i + 2:] and a[i:i + 2] == b[i:i + 2][::-1])
    longer, shorter = (a, b) if len(a) > len(b) else (b, a)
    return longer[i + 1:] == shorter[i:]


def suggest_domain(domain: str) -> str | None:
    """The big-provider domain this one is probably a typo of, or None."""
    if domain in TYPO_DOMAINS:
        return TYPO_DOMAINS[domain]
    if domain in NOT_TYPOS or domain in BIG_PROVIDERS:
        return None
    return next((big for big in BIG_PROVIDERS if _distance_one(domain, big)), None)


def is_disposable(domain: str) -> bool:
    """True for a throwaway-inbox domain or any subdomain of one (the list holds registrable domains)."""
    labels = domain.split(".")
    parents = (".".join(labels[i:]) for i in range(len(labels) - 1))
    return any(p in _disposable_blocklist and p not in _disposable_allowlist for p in parents)


def is_role_account(local: str, role_accounts: Iterable[str] = ROLE_ACCOUNTS) -> bool:
    """True when the local part (sub-address tag ignored) names a role, not a person."""
    return local.partition("+")[0] in role_accounts


def _score(reasons: Iterable[str]) -> float:
    reasons = set(reasons)
    if reasons & HARD_REASONS:
        return 0.0
    return round(max(0.0, 1.0 - sum(PENALTIES.get(r, 0.0) for r in reasons)), 3)


def _status(reasons: Iterable[str], score: float, threshold: float) -> Status:
    reasons = set(reasons)
    if reasons & HARD_REASONS:
        return "invalid"
    if reasons & PENDING_REASONS:
        return "pending"  # a DNS outage says nothing about the address: ask again later
    if score >= threshold:
        return "valid"
    return "invalid" if score < INVALID_FLOOR else "risky"


class _Checked(msgspec.Struct, frozen=True, kw_only=True):
    """An address after the checks that need no DNS."""

    email: str
    domain: str
    reasons: tuple[str, ...]
    suggestion: str | None


def _domain_facts(domain: str) -> tuple[bool, str | None]:
    """(disposable, typo suggestion) of one domain: the per-domain half of the pure checks."""
    return is_disposable(domain), suggest_domain(domain)


def _check_offline(raw: str, role_accounts: Iterable[str],
                   facts: dict[str, tuple[bool, str | None]] | None = None) -> _Checked | Verdict:
    """Pure checks; a Verdict when the address already failed, so DNS is not asked.

    `facts` memoises the per-domain checks over a batch: a scraped batch has a few hundred distinct domains
    for thousands of addresses, so the disposable and typo checks run once per domain, not per address.
    """
    email = normalise_email(raw)
    if email is None:
        return Verdict(email=raw.strip(), status="invalid", score=0.0, reasons=("syntax",))
    hard = check_syntax(email)
    if hard is not None:
        return Verdict(email=email, status="invalid", score=0.0, reasons=(hard,))
    local, _, domain = email.rpartition("@")
    reasons: list[str] = []
    if not local.isascii():
        reasons.append("utf8_local")
    if is_role_account(local, role_accounts):
        reasons.append("role_account")
    known = None if facts is None else facts.get(domain)
    if known is None:
        known = _domain_facts(domain)
        if facts is not None:
            facts[domain] = known
    disposable, suggestion = known
    if disposable:
        reasons.append("disposable")
    if suggestion is not None:
        reasons.append("typo")
    suggested = f"{local}@{suggestion}" if suggestion else None
    return _Checked(email=email, domain=domain, reasons=tuple(reasons), suggestion=suggested)


def _finish(checked: _Checked, domain_check: DomainCheck | None, threshold: float) -> Verdict:
    reasons = checked.reasons
    if domain_check is not None and domain_check.reason is not None:
        reasons += (domain_check.reason,)
    score = _score(reasons)
    return Verdict(
        email=checked.email, status=_status(reasons, score, threshold), score=score, reasons=reasons,
        suggestion=checked.suggestion, mx_host=domain_check.mx_host if domain_check else None,
    )


def assess(
    raw: str,
    domain_check: DomainCheck | None,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    role_accounts: Iterable[str] = ROLE_ACCOUNTS,
) -> Verdict:
    """Verdict for one address from its pure checks plus its domain's DNS answer (None: not looked up)."""
    checked = _check_offline(raw, role_accounts)
    return checked if isinstance(checked, Verdict) else _finish(checked, domain_check, threshold)


async def validate_batch(
    emails: list[str],
    *,
    resolver: MxResolver,
    threshold: float = DEFAULT_THRESHOLD,
    role_accounts: Iterable[str] = ROLE_ACCOUNTS,
) -> list[Verdict]:
    """Verdicts in input order; DNS is asked once per distinct domain, the rest is pure Python."""
    roles = frozenset(role_accounts)
    facts: dict[str, tuple[bool, str | None]] = {}
    checked = [_check_offline(raw, roles, facts) for raw in emails]
    domains = sorted({c.domain for c in checked if isinstance(c, _Checked)})
    answers = dict(zip(domains, await asyncio.gather(*(resolver.check(d) for d in domains)), strict=True))
    return [c if isinstance(c, Verdict) else _finish(c, answers[c.domain], threshold) for c in checked]
