"""Address validation against a loopback DNS server: syntax, lists, MX outcomes, cache, threshold."""

from __future__ import annotations

import asyncio

import pytest

from engine.mx import CACHE_TTL_MIN, make_resolver, parse_dns_servers
from engine.validation import (
    assess,
    check_syntax,
    is_disposable,
    normalise_email,
    suggest_domain,
    validate_batch,
)
from tests.dnsserver import DnsServer

ZONES = {
    "mx.example": {"MX": [(20, "mx2.mx.example."), (10, "MX1.mx.example.")]},
    "aonly.example": {"A": ["192.0.2.10"]},
    "v6only.example": {"AAAA": ["2001:db8::25"]},
    "nullmx.example": {"MX": [(0, ".")]},
    "nomail.example": {"TXT": ["nothing here"]},
    "broken.example": {"MX": [(10, "mx.broken.example")]},
    "slow.example": {"MX": [(10, "mx.slow.example")]},
    "xn--bcher-kva.example": {"MX": [(10, "mx.xn--bcher-kva.example")]},
    "outlok.com": {"MX": [(10, "mx.typo.test")]},  # served on loopback only: a typo-trap stand-in
}


@pytest.fixture
async def dns():
    async with DnsServer(ZONES) as server:
        server.fail("broken.example", "servfail")
        server.fail("slow.example", "timeout")
        yield server


@pytest.fixture
async def resolver(dns):
    mx = make_resolver([dns.address], timeout=0.2, tries=1)
    try:
        yield mx
    finally:
        await mx.close()


async def one(resolver, email, **kwargs):
    (verdict,) = await validate_batch([email], resolver=resolver, **kwargs)
    return verdict


# --- normalisation and syntax -------------------------------------------------------------------------

def test_normalise_trims_lowercases_and_punycodes():
    assert normalise_email("  John.Doe@MX.Example \n") == "john.doe@mx.example"
    assert normalise_email("user@bücher.example") == "user@xn--bcher-kva.example"
    assert normalise_email("<a@b.example>") == "a@b.example"
    for hopeless in ("", "no-at-sign", "@b.example", "a@", "a@-bad-.example", "a@b..example"):
        assert normalise_email(hopeless) is None, hopeless


def test_length_limits_64_and_254():
    assert check_syntax("a" * 64 + "@mx.example") is None
    assert check_syntax("a" * 65 + "@mx.example") == "too_long"
    domain = ".".join(["d" * 60] * 3) + ".example"  # 191 octets
    local = "l" * (254 - len(domain) - 1)
    assert len(f"{local}@{domain}") == 254 and check_syntax(f"{local}@{domain}") is None
    assert check_syntax(f"{local}x@{domain}") == "too_long"
    assert check_syntax("a@" + "d" * 64 + ".example") == "too_long"


@pytest.mark.parametrize("email, reason", [
    ("a..b@mx.example", "syntax"),
    (".ab@mx.example", "syntax"),
    ("ab.@mx.example", "syntax"),
    ("a b@mx.example", "syntax"),
    ("a@b@mx.example", "syntax"),
    ('"john doe"@mx.example', "quoted_local"),
    ("a@localhost", "syntax"),
    ("a@192.0.2.1", "syntax"),
    ("a@under_score.example", "syntax"),
])
def test_syntax_failures(email, reason):
    assert check_syntax(email) == reason


def test_dot_atom_specials_are_allowed():
    assert check_syntax("o'brien+news!#$%&*/=?^_`{|}~-@mx.example") is None


async def test_syntax_failure_is_invalid_without_asking_dns(resolver, dns):
    verdict = await one(resolver, "a..b@mx.example")
    assert (verdict.status, verdict.score, verdict.reasons) == ("invalid", 0.0, ("syntax",))
    assert dns.queries["mx.example"] == 0


# --- DNS outcomes -------------------------------------------------------------------------------------

async def test_mx_found_is_valid_with_preferred_host(resolver):
    verdict = await one(resolver, "Jane@MX.example")
    assert verdict.status == "valid" and verdict.score == 1.0 and verdict.reasons == ()
    assert verdict.email == "jane@mx.example"
    assert verdict.mx_host == "mx1.mx.example"


async def test_idn_domain_is_looked_up_in_punycode(resolver, dns):
    verdict = await one(resolver, "user@bücher.example")
    assert verdict.email == "user@xn--bcher-kva.example"
    assert verdict.status == "valid"
    assert dns.queries["xn--bcher-kva.example"] == 1


@pytest.mark.parametrize("domain", ["aonly.example", "v6only.example"])
async def test_no_mx_falls_back_to_address_records(resolver, domain):
    verdict = await one(resolver, f"user@{domain}")
    assert verdict.reasons == ("no_mx_a_fallback",)
    assert verdict.status == "valid" and verdict.score == pytest.approx(0.9)
    assert verdict.mx_host == domain


@pytest.mark.parametrize("domain, reason", [
    ("nullmx.example", "null_mx"),
    ("missing.example", "no_domain"),
    ("nomail.example", "no_mx"),
])
async def test_undeliverable_domains_are_invalid(resolver, domain, reason):
    verdict = await one(resolver, f"user@{domain}")
    assert (verdict.status, verdict.score, verdict.reasons) == ("invalid", 0.0, (reason,))


@pytest.mark.parametrize("domain, reason", [
    ("broken.example", "dns_servfail"),
    ("slow.example", "dns_timeout"),
])
async def test_dns_outage_is_pending_never_invalid(resolver, domain, reason):
    verdict = await one(resolver, f"info@{domain}")
    assert verdict.status == "pending"
    assert reason in verdict.reasons


async def test_unreachable_dns_server_is_pending():
    async with DnsServer({}) as dead:
        address = dead.address
    mx = make_resolver([address], timeout=0.2, tries=1)  # nothing listens there any more
    try:
        verdict = await one(mx, "user@mx.example")
    finally:
        await mx.close()
    assert verdict.status == "pending"


# --- list checks --------------------------------------------------------------------------------------

async def test_disposable_domain_is_risky(resolver, dns):
    dns.zones["mailinator.com"] = {"MX": [(10, "mx.disposable.test")]}
    verdict = await one(resolver, "someone@mailinator.com")
    assert verdict.status == "risky" and "disposable" in verdict.reasons
    assert is_disposable("deep.sub.mailinator.com")
    assert not is_disposable("mx.example")


async def test_role_account_is_risky_at_default_threshold(resolver):
    for local in ("info", "no-reply", "postmaster", "sales+eu"):
        verdict = await one(resolver, f"{local}@mx.example")
        assert verdict.status == "risky" and verdict.reasons == ("role_account",), local
    person = await one(resolver, "martina@mx.example")
    assert "role_account" not in person.reasons


async def test_tenant_role_list_extends_the_default(resolver):
    verdict = await one(resolver, "press-desk@mx.example", role_accounts={"press-desk"})
    assert verdict.reasons == ("role_account",)


async def test_typo_domain_gets_a_suggestion(resolver):
    verdict = await one(resolver, "ann@outlok.com")
    assert verdict.status == "risky" and "typo" in verdict.reasons
    assert verdict.suggestion == "ann@outlook.com"


@pytest.mark.parametrize("domain, expected", [
    ("gmial.com", "gmail.com"), ("hotmial.com", "hotmail.com"), ("yaho.com", "yahoo.com"),
    ("outlok.com", "outlook.com"), ("gmail.co", "gmail.com"),
    ("gmaik.com", "gmail.com"), ("hotmaill.com", "hotmail.com"), ("yahoo.cmo", "yahoo.com"),
    ("gmail.com", None), ("email.com", None), ("mx.example", None), ("live.com", None),
])
def test_suggest_domain(domain, expected):
    assert suggest_domain(domain) == expected


# --- cache, dedupe, threshold -------------------------------------------------------------------------

async def test_many_contacts_on_one_domain_make_one_query(resolver, dns):
    emails = [f"person{i}@mx.example" for i in range(500)] + [f"p{i}@aonly.example" for i in range(300)]
    verdicts = await validate_batch(emails, resolver=resolver)
    assert len(verdicts) == 800 and {v.status for v in verdicts} == {"valid"}
    assert [v.email for v in verdicts[:2]] == ["person0@mx.example", "person1@mx.example"]
    assert dns.queries["mx.example"] == 1
    assert dns.queries_by_type[("aonly.example", "MX")] == 1
    # A second batch inside the TTL asks nothing.
    sent = resolver.queries_sent
    await validate_batch(emails[:10], resolver=resolver)
    assert resolver.queries_sent == sent and dns.queries["mx.example"] == 1


async def test_concurrent_checks_share_one_query(resolver, dns):
    answers = await asyncio.gather(*(resolver.check("mx.example") for _ in range(50)))
    assert {a.mx_host for a in answers} == {"mx1.mx.example"}
    assert dns.queries["mx.example"] == 1 and resolver.queries_sent == 1


async def test_cache_expires_and_is_bounded(dns):
    now = [1000.0]
    mx = make_resolver([dns.address], timeout=0.2, tries=1, cache_size=2, clock=lambda: now[0])
    try:
        await mx.check("mx.example")
        now[0] += CACHE_TTL_MIN - 1
        await mx.check("mx.example")
        assert mx.queries_sent == 1
        now[0] += 2 + 3600
        await mx.check("mx.example")
        assert mx.queries_sent == 2
        await mx.check("nullmx.example")
        await mx.check("missing.example")  # evicts the least recently used: mx.example
        await mx.check("mx.example")
        assert mx.queries_sent == 5
    finally:
        await mx.close()


async def test_threshold_is_respected(resolver):
    strict = await one(resolver, "user@aonly.example", threshold=0.95)
    lenient = await one(resolver, "info@mx.example", threshold=0.7)
    assert strict.status == "risky" and strict.score == pytest.approx(0.9)
    assert lenient.status == "valid" and lenient.score == pytest.approx(0.7)


def test_soft_problems_add_up_to_invalid():
    checked = assess("info@mailinator.com", None)
    assert checked.reasons == ("role_account", "disposable")
    assert checked.status == "invalid" and checked.score < 0.2


# --- resolver configuration ---------------------------------------------------------------------------

def test_parse_dns_servers():
    assert parse_dns_servers("127.0.0.1:5353, 192.0.2.53,[::1]:5300,::1") == [
        ("127.0.0.1", 5353), ("192.0.2.53", 53), ("::1", 5300), ("::1", 53),
    ]
    assert parse_dns_servers("  ") == []
    for bad in ("dns.example:53", "127.0.0.1:0", "127.0.0.1:x", "127.0.0.1:70000", "[::1"):
        with pytest.raises(ValueError, match="DNS server"):
            parse_dns_servers(bad)
