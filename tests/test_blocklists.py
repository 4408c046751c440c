"""The blocklist watch against a loopback DNS server: listings pause, refusals and failures never do."""

from __future__ import annotations

import pytest

from engine import alert_events, blocklists, dns_checks
from engine.blocklists import Blocklist, Policy
from engine.dns_lookup import Resolver, blocklist_name
from tests.conftest import tenant_key
from tests.dnsserver import DnsServer

ZEN = Blocklist(name="Spamhaus ZEN", zone="zen.test",
                errors={"127.255.255.254": "query through a public or open resolver",
                        "127.255.255.255": "excessive number of queries"})
COP = Blocklist(name="SpamCop", zone="bl.spamcop.test")
DBL = Blocklist(name="Spamhaus DBL", zone="dbl.test", errors={"127.0.1.255": "IP queries prohibited"})
POLICY = Policy(ip=[ZEN, COP], domain=[DBL])


async def run_watch(db, zones, tenant_id=1, failures=()):
    async with DnsServer(zones) as dns, Resolver([dns.address], timeout=1.5, tries=2) as resolver:
        for name, mode in failures:
            dns.fail(name, mode)
        return await blocklists.watch(db, resolver, POLICY, tenant_id)


def test_bundled_policy_loads_and_names_the_refusal_codes() -> None:
    policy = blocklists.load_policy()
    names = {b.name for b in policy.ip} | {b.name for b in policy.domain}
    assert {"Spamhaus ZEN", "SpamCop", "Barracuda", "Spamhaus DBL", "SURBL"} <= names
    zen = next(b for b in policy.ip if b.name == "Spamhaus ZEN")
    assert set(zen.errors) == {"127.255.255.252", "127.255.255.254", "127.255.255.255"}
    assert blocklist_name("192.0.2.11", "zen.spamhaus.org") == "11.2.0.192.zen.spamhaus.org"


def test_a_malformed_policy_names_its_file(tmp_path) -> None:
    bad = tmp_path / "b.toml"
    bad.write_text("[[ip]]\nzone = 'x.test'\n")
    with pytest.raises(ValueError, match="b.toml.*name"):
        blocklists.load_policy(bad)


async def test_a_listed_ip_is_paused_within_one_cycle_with_the_list_name(db, seeded) -> None:
    zones = {blocklist_name("192.0.2.11", "zen.test"): {"A": ["127.0.0.2"]},
             blocklist_name("192.0.2.12", "zen.test"): {"A": ["127.255.255.254"]},
             blocklist_name("192.0.2.13", "bl.spamcop.test"): {"A": ["127.0.0.2"]},
             blocklist_name("192.0.2.13", "zen.test"): {"A": ["127.0.0.4", "127.0.0.10"]}}
    result = await run_watch(db, zones, failures=[(blocklist_name("192.0.2.14", "zen.test"), "servfail")])
    status = {r["address"]: (r["status"], r["status_reason"]) for r in await db.fetch(
        "SELECT host(address) AS address, status::text AS status, status_reason FROM ips WHERE tenant_id = 1")}
    assert status["192.0.2.11"] == ("blacklisted", "listed on Spamhaus ZEN (zen.test) 127.0.0.2")
    assert status["192.0.2.13"] == ("blacklisted", "listed on Spamhaus ZEN (zen.test) 127.0.0.10, 127.0.0.4; "
                                                   "listed on SpamCop (bl.spamcop.test) 127.0.0.2")
    # the refusal code and the DNS failure are errors of the check: those IPs keep sending
    assert status["192.0.2.12"] == ("warming", None) and status["192.0.2.14"] == ("warming", None)
    assert sum(s == "blacklisted" for s, _ in status.values()) == 2
    assert result.errors == ["192.0.2.12: Spamhaus ZEN refused the query: 127.255.255.254 (query through a "
                             "public or open resolver)",
                             "192.0.2.14: Spamhaus ZEN: DNS did not answer (servfail)"]
    report = await db.fetchval("SELECT blocklist_report FROM ips WHERE address = '192.0.2.12'")
    assert report["Spamhaus ZEN"]["status"] == "error" and report["SpamCop"]["status"] == "clear"
    alerts = await alert_events.list_alerts(db, 1)
    assert [a.subject for a in alerts] == [
        "IP 192.0.2.13 (mta03.sos-expat-mail.example) listed on Spamhaus ZEN (zen.test) 127.0.0.10, 127.0.0.4; "
        "listed on SpamCop (bl.spamcop.test) 127.0.0.2",
        "IP 192.0.2.11 (mta01.sos-expat-mail.example) listed on Spamhaus ZEN (zen.test) 127.0.0.2"]
    assert alerts[0].kind == "blocklist_listing" and alerts[0].delivered_at is None
    assert result.checked_ips == 50 and len(result.paused) == 2
    # the next cycle finds them still listed: no second pause, no second alert
    again = await run_watch(db, zones)
    assert len(again.listed) == 2 and again.paused == []
    assert len(await alert_events.list_alerts(db, 1)) == 2
    # only this tenant's IPs were looked at
    assert await db.fetchval("SELECT count(*) FROM ips WHERE tenant_id = 2 AND blocklist_checked_at IS NOT NULL") == 0


async def test_refusal_only_pauses_nothing(db, seeded) -> None:
    zones = {blocklist_name(f"192.0.2.{n}", "zen.test"): {"A": ["127.255.255.254"]} for n in range(11, 61)}
    result = await run_watch(db, zones)
    assert result.listed == [] and result.paused == [] and len(result.errors) == 50
    assert await db.fetchval("SELECT count(*) FROM ips WHERE status = 'blacklisted'") == 0
    assert await alert_events.list_alerts(db, None) == []


async def test_a_listed_domain_is_held_until_released(client, admin, db, seeded) -> None:
    zones = {"sos-expat-mail-03.example.dbl.test": {"A": ["127.0.1.2"]},
             "sos-expat-mail-04.example.dbl.test": {"A": ["127.0.1.255"]},
             "sos-expat-mail-05.example.dbl.test": {"A": ["203.0.113.9"]}}  # an NXDOMAIN-rewriting resolver
    result = await run_watch(db, zones)
    assert result.checked_domains == 50
    assert result.paused == ["sos-expat-mail-03.example: listed on Spamhaus DBL (dbl.test) 127.0.1.2"]
    assert [e.split(":")[0] for e in result.errors] == ["sos-expat-mail-04.example", "sos-expat-mail-05.example"]
    hold = await dns_checks.sending_hold(db, 1, "hello@sos-expat-mail-03.example")
    assert hold == "domain sos-expat-mail-03.example is held: listed on Spamhaus DBL (dbl.test) 127.0.1.2"
    assert await dns_checks.sending_hold(db, 1, "hello@sos-expat-mail-04.example") is None
    domain_id = await db.fetchval("SELECT id FROM domains WHERE name = 'sos-expat-mail-03.example'")
    r = await client.get(f"/api/v2/domains/1/{domain_id}/dns", headers=admin)
    assert r.json()["sending_hold"] == hold
    key2 = await tenant_key(client, admin, 2)
    assert (await client.post(f"/api/v2/domains/1/{domain_id}/release", headers=key2)).status_code == 404
    r = await client.post(f"/api/v2/domains/1/{domain_id}/release", headers=admin)
    assert r.status_code == 200 and r.json()["sending_hold"] is None, r.text
    assert await dns_checks.sending_hold(db, 1, "hello@sos-expat-mail-03.example") is None


async def test_ip_status_api(client, admin, db, seeded) -> None:
    await run_watch(db, {blocklist_name("192.0.2.11", "zen.test"): {"A": ["127.0.0.2"]}})
    r = await client.get("/api/v2/ips/1/1/dns", headers=admin)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "blacklisted" and body["status_reason"] == "listed on Spamhaus ZEN (zen.test) 127.0.0.2"
    assert body["blocklist_report"]["Spamhaus ZEN"] == {"status": "listed", "codes": ["127.0.0.2"],
                                                        "detail": "listed on Spamhaus ZEN (zen.test) 127.0.0.2"}
    assert body["ptr_status"] == "unchecked"
    key2 = await tenant_key(client, admin, 2)
    assert (await client.get("/api/v2/ips/1/1/dns", headers=key2)).status_code == 404
    assert (await client.get("/api/v2/ips/2/1/dns", headers=key2)).status_code == 404


async def test_the_worker_job_reads_the_configured_list_and_resolvers(db, seeded, settings, tmp_path) -> None:
    import msgspec

    from engine import db as dbm
    from workers.blocklists import watch_blocklists

    policy = tmp_path / "blocklists.toml"
    policy.write_text('[[ip]]\nname = "Loopback BL"\nzone = "bl.test"\n')
    async with DnsServer({blocklist_name("198.51.100.20", "bl.test"): {"A": ["127.0.0.2"]}}) as dns:
        ctx = {"settings": msgspec.structs.replace(settings, dns_servers=(dns.address,), blocklists_file=policy),
               "pool": await dbm.create_pool(settings.database_url, min_size=1, max_size=2)}
        try:
            assert await watch_blocklists(ctx) == {"listed": 1, "paused": 1, "errors": 0}
        finally:
            await ctx["pool"].close()
    row = await db.fetchrow("SELECT status::text, status_reason FROM ips WHERE address = '198.51.100.20'")
    assert tuple(row) == ("blacklisted", "listed on Loopback BL (bl.test) 127.0.0.2")


async def test_cli_check(db, seeded, settings, tmp_path) -> None:
    from tests.test_dns import run_cli

    policy = tmp_path / "blocklists.toml"
    policy.write_text('[[ip]]\nname = "Loopback BL"\nzone = "bl.test"\n[ip.errors]\n"127.255.255.254" = "public resolver"\n')
    zones = {blocklist_name("198.51.100.11", "bl.test"): {"A": ["127.0.0.2"]},
             blocklist_name("198.51.100.12", "bl.test"): {"A": ["127.255.255.254"]}}
    async with DnsServer(zones) as dns:
        code, out, err = await run_cli(settings, "blocklist", "check", "--tenant", "2",
                                       env={"EMAIL_ENGINE_DNS_SERVERS": dns.address,
                                            "EMAIL_ENGINE_BLOCKLISTS": str(policy)})
    assert code == 0, err
    assert out.splitlines() == [
        "listed 198.51.100.11: listed on Loopback BL (bl.test) 127.0.0.2",
        "paused 198.51.100.11: listed on Loopback BL (bl.test) 127.0.0.2",
        "error 198.51.100.12: Loopback BL refused the query: 127.255.255.254 (public resolver)",
        "50 IP(s) and 50 domain(s) checked: 1 listed, 1 newly paused, 1 check error(s)"]
