"""The PowerMTA config generated from the database: the seeded tenants' file, checked against the guide's
directives; what rewrites it (and reloads PowerMTA once) and what does not; key files; API and CLI."""

from __future__ import annotations

import re
import stat
from pathlib import Path

import msgspec
import pytest

from engine import alert_events, domains, ips
from pmta import accounting, config, generate, shaping
from tests.conftest import SECRET_KEY, tenant_key

# Extracted from the PowerMTA v5.0 guide's digest (the project's reference notes): every directive it documents.
DIRECTIVES = Path(__file__).parent / "data" / "powermta_directives.txt"


def guide_directives() -> set[str]:
    """Every directive and block name the guide documents, leaving out the forms PowerMTA would reject."""
    lines = DIRECTIVES.read_text("utf-8").splitlines()
    return {line.strip() for line in lines if line.strip() and not line.startswith("#")}


def directives_of(text: str) -> list[str]:
    found = []
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#") or stripped.startswith("</"):
            continue
        found.append(stripped.split()[0].strip("<>"))
    return found


@pytest.fixture
def pmta_settings(settings, tmp_path):
    return msgspec.structs.replace(settings, pmta_dkim_dir=tmp_path / "dkim",
                                   pmta_reload=f"echo reload >> {tmp_path / 'reloads'}")


def reloads(tmp_path) -> int:
    path = tmp_path / "reloads"
    return len(path.read_text().splitlines()) if path.exists() else 0


async def test_the_seeded_tenants_config(db, seeded, pmta_settings) -> None:
    assert await domains.generate_missing_keys(db, SECRET_KEY) == 100
    text, keys = await generate.build(db, pmta_settings, SECRET_KEY)
    again, _ = await generate.build(db, pmta_settings, SECRET_KEY)
    assert text == again  # same database, same bytes
    assert len(re.findall(r"^<virtual-mta ", text, flags=re.M)) == 100
    assert re.findall(r"^<virtual-mta-pool (\S+)>", text, flags=re.M) == ["sos-expat-pool", "ulixai-pool"]
    domain_keys = re.findall(r"^domain-key (.*)$", text, flags=re.M)
    assert len(domain_keys) == 100 and len(keys) == 100
    assert "domain-key ee1,sos-expat-mail-01.example," + str(pmta_settings.pmta_dkim_dir / "sos-expat-mail-01.example.ee1.pem") in text
    # every directive is one the guide documents, and none of the forms it rejects (§2.2) appears
    unknown = set(directives_of(text)) - guide_directives()
    assert not unknown, unknown
    assert " weight" not in text and "{" not in text and "}" not in text and "throttle" not in text
    assert "<bind" not in text and 'name="' not in text
    for line in re.findall(r"^\s*smtp-source-host (.*)$", text, flags=re.M):
        address, hostname = line.split()
        assert re.match(r"^\d+\.\d+\.\d+\.\d+$", address) and not re.match(r"^\d", hostname)
    assert all(len(k.split(",")) == 3 for k in domain_keys)
    # warming IPs carry today's quota (the curve's first step) as the VMTA-wide fence
    assert text.count("    max-smtp-msg-rate 50/d\n") == 100
    assert "PRIVATE KEY" not in text
    sources = dict(re.findall(r"<source (\S+)>\n(.*?)</source>", text, flags=re.S))
    assert set(sources) == {"127.0.0.1", "0/0"} and "always-allow-relaying no" in sources["0/0"]
    assert "<feedback-loop-processor>" not in text


def test_directive_check_can_fail() -> None:
    assert {"throttle", "weight"}.isdisjoint(guide_directives())
    assert {"max-smtp-msg-rate", "domain-key", "smtp-pattern-list", "mx-rollup-list", "record-fields",
            "feedback-loop-processor"} <= guide_directives()


def test_accounting_fields_are_those_the_reader_knows() -> None:
    for _kind, fields in config.ACCOUNTING_FIELDS:
        assert {f.lower() for f in fields.split(",")} <= set(accounting.COLUMNS), fields


def test_shaping_file_covers_the_providers_and_is_checked(tmp_path) -> None:
    table = shaping.load()
    names = {p.name for p in table.provider}
    assert {"gmail", "google-workspace", "outlook", "yahoo", "icloud", "gmx-webde", "orange", "free", "mailru",
            "yandex", "qq"} <= names
    patterns = {p.name: " ".join(x.reply for x in p.patterns) for p in table.provider}
    assert "4\\.7\\.28" in patterns["gmail"] and "TSS04" in patterns["yahoo"] and "4\\.7\\.650" in patterns["outlook"]
    assert "S3150" in patterns["outlook"]
    text = shaping.render(table)
    assert "mx aspmx.l.google.com google-workspace.rollup" in text and "<domain google-workspace.rollup>" in text
    for bad, message in [("mode=backoff,mode=normal", "combined"), ("reenable-after=1h", "after disable"),
                         ("pause", "unknown action"), ("disable-source-ip,reenable-after=soon", "needs a time")]:
        with pytest.raises(shaping.ShapingError, match=message):
            shaping.check_action(bad)
    broken = tmp_path / "s.toml"
    broken.write_text(shaping.DEFAULT_FILE.read_text().replace('max-msg-rate = "1000/h"', 'max-msg-rate = "fast"'))
    with pytest.raises(shaping.ShapingError, match="rate 'fast'"):
        shaping.load(broken)
    broken.write_text(shaping.DEFAULT_FILE.read_text().replace("max-smtp-out = 3", "max-smtp-outs = 3", 1))
    with pytest.raises(shaping.ShapingError, match="max-smtp-outs"):
        shaping.load(broken)


async def test_what_rewrites_the_file_and_reloads_once(db, seeded, pmta_settings, tmp_path) -> None:
    out = tmp_path / "pmta" / "email-engine.conf"
    first = await generate.sync(db, pmta_settings, SECRET_KEY, path=out)
    assert first.changed and first.reloaded and reloads(tmp_path) == 1
    assert stat.S_IMODE(out.stat().st_mode) == 0o644
    before = out.read_bytes()
    # nothing changed; a weight change is the engine's business: no rewrite, no reload
    await ips.update_ip(db, 1, 1, weight=40)
    again = await generate.sync(db, pmta_settings, SECRET_KEY, path=out)
    assert not again.changed and not again.reloaded and out.read_bytes() == before and reloads(tmp_path) == 1

    await ips.create_ip(db, 1, address="203.0.113.10", hostname="mta51.sos-expat-mail.example",
                        vmta_name="sos-expat-vmta51")
    added = await generate.sync(db, pmta_settings, SECRET_KEY, path=out)
    assert added.changed and reloads(tmp_path) == 2
    assert "smtp-source-host 203.0.113.10 mta51.sos-expat-mail.example" in out.read_text()

    await ips.change_status(db, 1, 2, "pause", "listed\non a blocklist")
    paused = await generate.sync(db, pmta_settings, SECRET_KEY, path=out)
    assert paused.changed and reloads(tmp_path) == 3
    text = out.read_text()
    assert "# paused: kept for mail already queued, out of sos-expat-pool\n<virtual-mta sos-expat-vmta02>" in text
    pool = re.search(r"<virtual-mta-pool sos-expat-pool>\n(.*?)</virtual-mta-pool>", text, flags=re.S).group(1)
    assert "sos-expat-vmta02" not in pool and "sos-expat-vmta01" in pool and "on a blocklist" not in text

    domain = await domains.create_domain(db, SECRET_KEY, 1, name="news.sos-expat-mail.example", ip_ids=[1])
    created = await generate.sync(db, pmta_settings, SECRET_KEY, path=out)
    assert created.changed and created.keys_written == 1 and reloads(tmp_path) == 4
    key_file = pmta_settings.pmta_dkim_dir / "news.sos-expat-mail.example.ee1.pem"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(pmta_settings.pmta_dkim_dir.stat().st_mode) == 0o700
    assert key_file.read_text() == (await domains.dkim_private_key(db, SECRET_KEY, 1, domain.id))[1]

    await domains.rotate_dkim(db, SECRET_KEY, 1, domain.id)
    rotated = await generate.sync(db, pmta_settings, SECRET_KEY, path=out)
    assert rotated.changed and rotated.keys_written == 1 and rotated.keys_removed == 1 and reloads(tmp_path) == 5
    assert "domain-key ee2,news.sos-expat-mail.example," in out.read_text() and not key_file.exists()
    assert not (await generate.sync(db, pmta_settings, SECRET_KEY, path=out)).changed and reloads(tmp_path) == 5
    # the warmup moving an IP to its next step changes its fence
    await db.execute("UPDATE warmup_plans SET current_day = 1 WHERE ip_id = 3")
    assert (await generate.sync(db, pmta_settings, SECRET_KEY, path=out)).changed and reloads(tmp_path) == 6
    assert "smtp-source-host 192.0.2.13 mta03.sos-expat-mail.example\n    max-smtp-msg-rate 100/d" in out.read_text()
    # no temporary file is left behind: only the config and the digest of what was applied
    assert sorted(p.name for p in out.parent.iterdir()) == [".email-engine.conf.applied", "email-engine.conf"]


async def test_a_failed_reload_is_reported_and_retried(db, seeded, pmta_settings, tmp_path) -> None:
    out = tmp_path / "email-engine.conf"
    failing = msgspec.structs.replace(pmta_settings, pmta_reload="echo 'Error in line 11: argument missing' >&2; exit 3")
    outcome = await generate.sync(db, failing, SECRET_KEY, path=out)
    assert outcome.changed and not outcome.reloaded
    assert outcome.reload_error == ("`echo 'Error in line 11: argument missing' >&2; exit 3` exited with status 3: "
                                    "Error in line 11: argument missing")
    assert "reload failed" in outcome.summary()
    (alert,) = await alert_events.list_alerts(db, None)
    assert alert.kind == "pmta_reload_failed" and alert.tenant_id is None and "status 3" in alert.subject
    # the next run tries again (the file is already written) without a second alert
    assert (await generate.sync(db, failing, SECRET_KEY, path=out)).reload_error is not None
    assert len(await alert_events.list_alerts(db, None)) == 1
    fixed = await generate.sync(db, pmta_settings, SECRET_KEY, path=out)
    assert fixed.reloaded and not fixed.changed and reloads(tmp_path) == 1
    assert (await generate.sync(db, pmta_settings, SECRET_KEY, path=out)).reloaded is False


async def test_the_worker_job_and_the_fbl_address(db, seeded, pmta_settings, tmp_path) -> None:
    from engine import db as dbm
    from workers.pmta import sync_pmta_config

    out = tmp_path / "job.conf"
    job_settings = msgspec.structs.replace(pmta_settings, pmta_config_file=out, pmta_fbl_address="fbl@fbl.sos-expat.example",
                                           pmta_accounting_dir=tmp_path / "acct")
    ctx = {"settings": job_settings, "secret_key": SECRET_KEY,
           "pool": await dbm.create_pool(job_settings.database_url, min_size=1, max_size=2)}
    try:
        assert (await sync_pmta_config(ctx))["reloaded"] is True
        assert (await sync_pmta_config(ctx))["changed"] is False
    finally:
        await ctx["pool"].close()
    text = out.read_text()
    assert "relay-domain fbl.sos-expat.example\n<feedback-loop-processor>\n" in text
    assert "        address fbl@fbl.sos-expat.example\n" in text
    assert f"<acct-file {tmp_path / 'acct' / 'acct.csv'}>" in text and reloads(tmp_path) == 1


async def test_api_is_admin_only_and_narrows_by_tenant(client, admin, seeded, db) -> None:
    await domains.generate_missing_keys(db, SECRET_KEY, 2)
    r = await client.get("/api/v2/pmta/config", headers=admin)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    assert len(re.findall(r"^<virtual-mta ", r.text, flags=re.M)) == 100 and "PRIVATE KEY" not in r.text
    r = await client.get("/api/v2/pmta/config", params={"tenant_id": 2}, headers=admin)
    assert len(re.findall(r"^<virtual-mta ", r.text, flags=re.M)) == 50 and "sos-expat" not in r.text
    assert len(re.findall(r"^domain-key ", r.text, flags=re.M)) == 50
    assert (await client.get("/api/v2/pmta/config", params={"tenant_id": 0}, headers=admin)).status_code == 400
    key = await tenant_key(client, admin, 1)
    assert (await client.get("/api/v2/pmta/config", headers=key)).status_code == 403


async def test_cli_prints_and_writes(db, seeded, settings, tmp_path) -> None:
    from tests.test_dns import run_cli

    env = {"EMAIL_ENGINE_PMTA_DKIM_DIR": str(tmp_path / "keys"), "EMAIL_ENGINE_PMTA_RELOAD": "exit 1"}
    code, printed, err = await run_cli(settings, "pmta", "config", "--tenant", "1", env=env)
    assert code == 0, err
    assert len(re.findall(r"^<virtual-mta ", printed, flags=re.M)) == 50
    out = tmp_path / "pmta.conf"
    code, summary, err = await run_cli(settings, "pmta", "config", "--out", str(out), env=env)
    assert code == 1 and "reload failed: `exit 1` exited with status 1" in summary, (summary, err)
    assert out.read_text().count("<virtual-mta ") == 100
