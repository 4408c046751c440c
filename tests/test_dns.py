"""DNS records to publish and their checks, against a loopback DNS server; the sending hold they decide."""

from __future__ import annotations

import json

import pytest

from engine import dns_checks, dns_records, domains
from engine.dns_checks import sending_hold
from engine.dns_lookup import Resolver, reverse_name
from engine.errors import Invalid
from tests.conftest import SECRET_KEY, tenant_key
from tests.dnsserver import DnsServer

NAME = "news.sos-expat-mail.example"


async def new_domain(db, *, ip_ids=(1, 2)) -> domains.Domain:
    return await domains.create_domain(db, SECRET_KEY, 1, name=NAME, ip_ids=list(ip_ids))


def published(records: dns_records.DomainRecords, *purposes: str) -> dict[str, dict[str, list]]:
    """The zone dict a correct DNS would serve for the given purposes."""
    zones: dict[str, dict[str, list]] = {}
    for r in records.records:
        if r.purpose in purposes:
            value = r.value.rstrip(".") if r.type == "PTR" else r.value
            if r.type == "TXT" and len(value) > 255:  # as a DNS host publishes a long key: several strings
                value = [value[i:i + 255] for i in range(0, len(value), 255)]
            zones.setdefault(r.name, {}).setdefault(r.type, []).append(value)
    return zones


async def records_of(db, domain_id: int) -> dns_records.DomainRecords:
    (records,) = await dns_records.list_records(db, 1, domain_id=domain_id)
    return records


async def test_records_of_a_domain(db, seeded) -> None:
    d = await new_domain(db)
    records = await records_of(db, d.id)
    by_purpose = {r.purpose: r for r in records.records}
    assert by_purpose["spf"].name == NAME and by_purpose["spf"].value == "v=spf1 ip4:192.0.2.11 ip4:192.0.2.12 -all"
    assert by_purpose["dkim"].name == f"ee1._domainkey.{NAME}" and by_purpose["dkim"].value == d.dkim_public_key
    assert by_purpose["dmarc"].value == f"v=DMARC1; p=none; rua=mailto:dmarc@{NAME}"
    assert [(r.name, r.type, r.value) for r in records.records if r.purpose in ("ptr", "a")] == [
        ("11.2.0.192.in-addr.arpa", "PTR", "mta01.sos-expat-mail.example."),
        ("mta01.sos-expat-mail.example", "A", "192.0.2.11"),
        ("12.2.0.192.in-addr.arpa", "PTR", "mta02.sos-expat-mail.example."),
        ("mta02.sos-expat-mail.example", "A", "192.0.2.12"),
    ]
    assert records.problems == []
    # the seeded domains send through all 50 of the tenant's IPs: .11-.60 fold into a few CIDR blocks
    seeded_spf = next(r for r in (await records_of(db, 1)).records if r.purpose == "spf").value
    assert seeded_spf == ("v=spf1 ip4:192.0.2.11 ip4:192.0.2.12/30 ip4:192.0.2.16/28 ip4:192.0.2.32/28 "
                          "ip4:192.0.2.48/29 ip4:192.0.2.56/30 ip4:192.0.2.60 -all")
    bind = dns_records.to_bind([records])
    dkim_line = next(line for line in bind.splitlines() if line.startswith("ee1._domainkey."))
    strings = json.loads("[" + dkim_line.split(" IN TXT ", 1)[1].replace('" "', '", "') + "]")
    assert "".join(strings) == d.dkim_public_key and all(len(s) <= 255 for s in strings) and len(strings) == 2
    assert f'{NAME}. 3600 IN TXT "v=spf1 ip4:192.0.2.11 ip4:192.0.2.12 -all"' in bind
    assert "11.2.0.192.in-addr.arpa. 3600 IN PTR mta01.sos-expat-mail.example." in bind


async def test_tenant_choices_and_the_ten_lookup_limit(db, seeded) -> None:
    d = await new_domain(db)
    await db.execute("UPDATE tenants SET settings = $1 WHERE id = 1",
                     {"dmarc_policy": "quarantine", "dmarc_rua": "mailto:reports@sos-expat.example",
                      "spf_include": ["_spf.crm.example"]})
    await db.execute("UPDATE domains SET return_path = $1 WHERE id = $2", f"bounces.{NAME}", d.id)
    by_purpose = {r.purpose: r for r in (await records_of(db, d.id)).records}
    assert by_purpose["dmarc"].value == "v=DMARC1; p=quarantine; rua=mailto:reports@sos-expat.example"
    assert by_purpose["spf"].value.endswith("include:_spf.crm.example -all")
    assert by_purpose["return_path"].name == f"bounces.{NAME}" and by_purpose["return_path"].value == \
        by_purpose["spf"].value
    await db.execute("UPDATE tenants SET settings = $1 WHERE id = 1",
                     {"spf_include": [f"_spf{n}.example" for n in range(11)]})
    records = await records_of(db, d.id)
    assert not [r for r in records.records if r.purpose in ("spf", "return_path")]
    assert "11 DNS lookups" in records.problems[0]
    with pytest.raises(Invalid, match="11 DNS lookups"):
        dns_records.spf_value(["192.0.2.1"], [f"i{n}.example" for n in range(11)])
    assert dns_records.spf_lookups("v=spf1 a mx include:x.example ip4:192.0.2.1 ~all redirect=y.example") == 4


async def test_a_rotated_key_stays_published_while_powermta_holds_mail_signed_with_it(db, seeded) -> None:
    d = await new_domain(db)
    old_key = d.dkim_public_key
    campaign = await db.fetchval(
        "INSERT INTO campaigns (tenant_id, name, from_name, from_email) VALUES (1, 'c', 'n', $1) RETURNING id",
        f"hello@{NAME}")
    await db.execute("INSERT INTO sends (tenant_id, campaign_id, contact_id, status, injected_at) "
                     "VALUES (1, $1, 1, 'injected', now())", campaign)
    await domains.rotate_dkim(db, SECRET_KEY, 1, d.id)
    dkim = {r.purpose: r for r in (await records_of(db, d.id)).records if r.purpose.startswith("dkim")}
    assert dkim["dkim"].name == f"ee2._domainkey.{NAME}" and dkim["dkim"].value != old_key
    assert dkim["dkim_previous"].name == f"ee1._domainkey.{NAME}" and dkim["dkim_previous"].value == old_key
    await db.execute("UPDATE sends SET status = 'delivered'")
    assert not [r for r in (await records_of(db, d.id)).records if r.purpose == "dkim_previous"]


async def test_check_reports_each_record(db, seeded) -> None:
    """Correct SPF and DKIM, a wrong DMARC and no PTR: exactly that, and the domain may send."""
    d = await new_domain(db)
    records = await records_of(db, d.id)
    zones = published(records, "spf", "dkim")
    zones[f"_dmarc.{NAME}"] = {"TXT": ["v=DMARC1; p=reject"]}
    async with DnsServer(zones) as dns, Resolver([dns.address], timeout=0.5, tries=1) as resolver:
        reports = await dns_checks.run_checks(db, resolver, 1, d.id)
    report = reports[NAME]
    assert {k: f.status for k, f in report.items()} == {"spf": "ok", "dkim": "ok", "dmarc": "wrong", "ptr": "missing"}
    assert report["dmarc"].found == ["v=DMARC1; p=reject"] and "p=reject" in report["dmarc"].detail
    stored = await domains.get_domain(db, 1, d.id)
    assert (stored.spf_status, stored.dkim_status, stored.dmarc_status, stored.ptr_status) == \
        ("ok", "ok", "wrong", "missing")
    assert await db.fetchval("SELECT ptr_status FROM ips WHERE id = 1") == "missing"
    assert await sending_hold(db, 1, f"hello@{NAME.upper()}") is None


async def test_a_wrong_dkim_holds_the_domain_until_fixed(db, seeded) -> None:
    d = await new_domain(db)
    records = await records_of(db, d.id)
    zones = published(records, "spf", "dmarc", "ptr", "a")
    other = domains.generate_key_pair().txt_value
    zones[f"ee1._domainkey.{NAME}"] = {"TXT": [other]}
    async with DnsServer(zones) as dns, Resolver([dns.address], timeout=0.5, tries=1) as resolver:
        report = (await dns_checks.run_checks(db, resolver, 1, d.id))[NAME]
        assert {k: f.status for k, f in report.items()} == {"spf": "ok", "dkim": "wrong", "dmarc": "ok",
                                                           "ptr": "ok"}
        assert report["dkim"].found == [other]
        hold = await sending_hold(db, 1, f"hello@{NAME}")
        assert hold.startswith(f"DKIM of {NAME} is wrong: the record at ee1._domainkey.{NAME} holds another key")
        dns.zones.update(published(records, "dkim"))
        async with Resolver([dns.address], timeout=0.5, tries=1) as fresh:  # each hourly run starts afresh
            report = (await dns_checks.run_checks(db, fresh, 1, d.id))[NAME]
    assert report["dkim"].status == "ok"
    assert await sending_hold(db, 1, f"hello@{NAME}") is None


async def test_wrong_dkim_reason_names_the_record(db, seeded) -> None:
    d = await new_domain(db)
    zones = published(await records_of(db, d.id), "spf")
    zones[f"ee1._domainkey.{NAME}"] = {"TXT": ["v=DKIM1; k=rsa; p=AAAA"]}
    async with DnsServer(zones) as dns, Resolver([dns.address], timeout=0.5, tries=1) as resolver:
        await dns_checks.run_checks(db, resolver, 1, d.id)
    hold = await sending_hold(db, 1, f"hello@{NAME}")
    assert hold == (f"DKIM of {NAME} is wrong: the record at ee1._domainkey.{NAME} holds another key than the "
                    "one PowerMTA signs with")
    assert await sending_hold(db, 2, f"hello@{NAME}") is None  # another tenant's domain is not this one's rule
    assert await sending_hold(db, 1, "hello@elsewhere.example") is None


@pytest.mark.parametrize("failure", ["timeout", "servfail", "malformed"])
async def test_dns_failures_are_errors_never_exceptions_nor_holds(db, seeded, failure) -> None:
    d = await new_domain(db, ip_ids=[1])
    async with DnsServer({}) as dns, Resolver([dns.address], timeout=0.3, tries=1) as resolver:
        for name in (NAME, f"ee1._domainkey.{NAME}", f"_dmarc.{NAME}", reverse_name("192.0.2.11")):
            dns.fail(name, failure)
        report = (await dns_checks.run_checks(db, resolver, 1, d.id))[NAME]
    assert {f.status for f in report.values()} == {"error"}, report
    assert "DNS did not answer" in report["spf"].detail
    assert await sending_hold(db, 1, f"hello@{NAME}") is None


async def test_fcrdns_needs_the_hostname_to_point_back(db, seeded) -> None:
    zones = {reverse_name("192.0.2.11"): {"PTR": ["mta01.sos-expat-mail.example"]},
             "mta01.sos-expat-mail.example": {"A": ["192.0.2.99"]},
             reverse_name("192.0.2.12"): {"PTR": ["generic-12.isp.example"]}}
    async with DnsServer(zones) as dns, Resolver([dns.address], timeout=0.5, tries=1) as resolver:
        back = await dns_checks.check_fcrdns(resolver, "192.0.2.11", "mta01.sos-expat-mail.example")
        other = await dns_checks.check_fcrdns(resolver, "192.0.2.12", "mta02.sos-expat-mail.example")
    assert back.status == "wrong" and back.found == ["192.0.2.99"] and "does not resolve back" in back.detail
    assert other.status == "wrong" and other.found == ["generic-12.isp.example"]


async def test_api_records_and_status(client, admin, seeded, db, settings) -> None:
    d = await new_domain(db)
    r = await client.get("/api/v2/dns/records/1", params={"domain": NAME}, headers=admin)
    assert r.status_code == 200, r.text
    (body,) = r.json()
    assert body["domain"] == NAME and {x["purpose"] for x in body["records"]} == {"spf", "dkim", "dmarc", "ptr", "a"}
    assert "PRIVATE" not in r.text
    r = await client.get("/api/v2/dns/records/1", params={"domain": NAME, "format": "bind"}, headers=admin)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    assert f"_dmarc.{NAME}. 3600 IN TXT" in r.text
    r = await client.get("/api/v2/dns/records/1", params={"format": "yaml"}, headers=admin)
    assert r.status_code == 400 and r.json()["field"] == "format"
    r = await client.get(f"/api/v2/domains/1/{d.id}/dns", headers=admin)
    assert r.status_code == 200 and r.json()["spf_status"] == "unchecked" and r.json()["sending_hold"] is None
    key2 = await tenant_key(client, admin, 2)
    assert (await client.get(f"/api/v2/domains/1/{d.id}/dns", headers=key2)).status_code == 404
    assert (await client.get(f"/api/v2/domains/2/{d.id}/dns", headers=key2)).status_code == 404
    assert (await client.get("/api/v2/dns/records/1", headers=key2)).status_code == 404


async def run_cli(settings, *args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """`email-engine ARGS` in a subprocess against this test's database."""
    import asyncio
    import os
    import sys

    environ = {**os.environ, "EMAIL_ENGINE_DATABASE_URL": settings.database_url,
               "EMAIL_ENGINE_REDIS_URL": settings.redis_url, "EMAIL_ENGINE_SECRET_KEY": SECRET_KEY,
               "EMAIL_ENGINE_ADMIN_KEY": "x" * 20, "EMAIL_ENGINE_HOME": str(settings.home), **(env or {})}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "api.cli", *args, env=environ,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    return proc.returncode, out.decode(), err.decode()


async def test_cli_keygen_records_and_check(db, seeded, settings) -> None:
    code, out, err = await run_cli(settings, "dns", "keygen", "--tenant", "2")
    assert code == 0 and out.strip() == "50 DKIM key pair(s) generated", err
    assert await db.fetchval("SELECT count(*) FROM domains WHERE dkim_public_key IS NOT NULL AND tenant_id = 2") == 50
    assert await db.fetchval("SELECT count(*) FROM domains WHERE dkim_public_key IS NOT NULL") == 50
    code, out, err = await run_cli(settings, "dns", "records", "--domain", "ulixai-mail-07.example")
    assert code == 0, err
    assert out.startswith("; ulixai-mail-07.example\n")
    assert "ee1._domainkey.ulixai-mail-07.example. 3600 IN TXT \"v=DKIM1; k=rsa; p=" in out
    assert "_dmarc.ulixai-mail-07.example. 3600 IN TXT \"v=DMARC1; p=none; rua=mailto:dmarc@ulixai-mail-07.example\"" in out
    code, out, err = await run_cli(settings, "dns", "records", "--domain", "nowhere.example")
    assert code == 1 and "no sending domain nowhere.example" in err
    (records,) = await dns_records.list_records(db, 2, name="ulixai-mail-07.example")
    zones = published(records, "spf", "dkim", "dmarc")
    zones["ulixai-mail-08.example"] = {"TXT": ["v=spf1 ip4:203.0.113.0/24 -all"]}
    async with DnsServer(zones) as dns:
        code, out, err = await run_cli(settings, "dns", "check", "--tenant", "2",
                                       env={"EMAIL_ENGINE_DNS_SERVERS": dns.address})
    assert code == 0, err
    lines = out.splitlines()
    assert "ulixai-mail-07.example spf=ok dkim=ok dmarc=ok ptr=missing" in lines
    assert "ulixai-mail-08.example spf=wrong dkim=missing dmarc=missing ptr=missing" in lines
    assert "    spf: does not authorise 198.51.100.11, 198.51.100.12, 198.51.100.13, 198.51.100.14, " \
           "198.51.100.15 and 45 more" in lines
    assert "ulixai-mail-09.example spf=missing dkim=missing dmarc=missing ptr=missing" in lines
    assert lines[-1] == "50 domain(s) checked, 1 held from sending (SPF or DKIM wrong)"


async def test_api_sets_the_tenant_policy_and_return_path(client, admin, seeded, db) -> None:
    d = await new_domain(db)
    body = {"dmarc_policy": "quarantine", "dmarc_rua": "mailto:dmarc@sos-expat.example", "spf_include": ["_spf.crm.example"]}
    r = await client.put("/api/v2/dns/policy/1", json=body, headers=admin)
    assert r.status_code == 200 and r.json() == body, r.text
    for bad, field in [({"dmarc_policy": "strict"}, "dmarc_policy"), ({"dmarc_rua": "dmarc@x.example"}, "dmarc_rua"),
                       ({"spf_include": ["not a host"]}, "spf_include"), ({"p": "none"}, None),
                       ({"spf_include": [f"i{n}.example" for n in range(11)]}, None)]:
        r = await client.put("/api/v2/dns/policy/1", json=bad, headers=admin)
        assert r.status_code == 400, (bad, r.text)
        if field:
            assert r.json()["field"] == field, r.json()
    r = await client.put(f"/api/v2/domains/1/{d.id}/return-path", json={"return_path": f"Bounces.{NAME}."}, headers=admin)
    assert r.status_code == 200, r.text
    purposes = {x["purpose"]: x for x in r.json()["records"]}
    assert purposes["return_path"]["name"] == f"bounces.{NAME}" and "include:_spf.crm.example" in purposes["spf"]["value"]
    assert purposes["dmarc"]["value"] == "v=DMARC1; p=quarantine; rua=mailto:dmarc@sos-expat.example"
    r = await client.put(f"/api/v2/domains/1/{d.id}/return-path", json={"return_path": "no_dots"}, headers=admin)
    assert r.status_code == 400 and r.json()["field"] == "return_path"
    key2 = await tenant_key(client, admin, 2)
    assert (await client.put("/api/v2/dns/policy/1", json=body, headers=key2)).status_code == 404
    assert (await client.put(f"/api/v2/domains/2/{d.id}/return-path", json={"return_path": None},
                             headers=key2)).status_code == 404
    r = await client.put("/api/v2/dns/policy/1", json={}, headers=admin)
    assert r.json() == {"dmarc_policy": None, "dmarc_rua": None, "spf_include": None}
    assert "dmarc_policy" not in await db.fetchval("SELECT settings FROM tenants WHERE id = 1")


async def test_a_record_that_turns_bad_raises_one_alert(db, seeded) -> None:
    d = await new_domain(db)
    records = await records_of(db, d.id)
    zones = published(records, "spf", "dkim", "dmarc", "ptr", "a")
    async with DnsServer(zones) as dns:
        async with Resolver([dns.address], timeout=0.5, tries=1) as resolver:
            await dns_checks.run_checks(db, resolver, 1, d.id)            # all ok: nothing to say
        assert await db.fetchval("SELECT count(*) FROM alert_events") == 0
        dns.zones[f"ee1._domainkey.{NAME}"] = {"TXT": [domains.generate_key_pair().txt_value]}
        for _ in range(2):                                              # still wrong the next hour: no repeat
            async with Resolver([dns.address], timeout=0.5, tries=1) as resolver:
                await dns_checks.run_checks(db, resolver, 1, d.id)
    alerts = await db.fetch("SELECT tenant_id, kind, subject, detail FROM alert_events")
    assert [(a["tenant_id"], a["kind"], a["subject"]) for a in alerts] == [(1, "dns_check_bad", f"domain:{d.id}")]
    assert alerts[0]["detail"]["domain"] == NAME and alerts[0]["detail"]["dkim"].startswith("wrong: ")
    assert set(alerts[0]["detail"]) == {"domain", "dkim"}
