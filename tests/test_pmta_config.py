"""The PowerMTA config generator: the sample spec's text, and specs it must refuse."""

from __future__ import annotations

import re

import pytest

from pmta import shaping
from pmta.config import (
    ConfigError,
    ConfigSpec,
    DkimKeySpec,
    PoolSpec,
    VmtaSpec,
    render_config,
)

SAMPLE = ConfigSpec(
    vmtas=(
        VmtaSpec(name="ip-192-0-2-10", address="192.0.2.10", hostname="mta1.sender.example"),
        VmtaSpec(name="ip-192-0-2-11", address="192.0.2.11", hostname="mta2.sender.example"),
        VmtaSpec(name="ip-198-51-100-7", address="198.51.100.7", hostname="out.other.example"),
    ),
    pools=(
        PoolSpec(name="tenant-acme", vmtas=("ip-192-0-2-10", "ip-192-0-2-11")),
        PoolSpec(name="tenant-other", vmtas=("ip-198-51-100-7",)),
    ),
    dkim_keys=(
        DkimKeySpec(selector="s1", domain="*", key_file="/etc/pmta/dkim/default.pem"),
        DkimKeySpec(selector="acme", domain="sender.example", key_file="/etc/pmta/dkim/acme.pem"),
    ),
)


def blocks(text: str, tag: str) -> dict[str, list[str]]:
    """`<tag NAME> ... </tag>` blocks as NAME -> stripped body lines."""
    found = re.findall(rf"<{tag} ([^>]+)>\n(.*?)</{tag}>", text, flags=re.S)
    return {name: [line.strip() for line in body.strip().splitlines()] for name, body in found}


def test_sample_config_text():
    text = render_config(SAMPLE)
    assert blocks(text, "virtual-mta") == {
        "ip-192-0-2-10": ["smtp-source-host 192.0.2.10 mta1.sender.example"],
        "ip-192-0-2-11": ["smtp-source-host 192.0.2.11 mta2.sender.example"],
        "ip-198-51-100-7": ["smtp-source-host 198.51.100.7 out.other.example"],
    }
    assert blocks(text, "virtual-mta-pool") == {
        "tenant-acme": ["virtual-mta ip-192-0-2-10", "virtual-mta ip-192-0-2-11"],
        "tenant-other": ["virtual-mta ip-198-51-100-7"],
    }
    sources = blocks(text, "source")
    assert sources["127.0.0.1"] == ["always-allow-relaying yes", "process-x-virtual-mta yes",
                                    "process-x-job yes", "process-x-envid yes"]
    assert sources["0/0"] == ["always-allow-relaying no"]
    assert "smtp-listener 127.0.0.1:25\n" in text
    # the wildcard key comes after the specific one, whatever the input order
    assert re.findall(r"^domain-key .*$", text, flags=re.M) == [
        "domain-key acme,sender.example,/etc/pmta/dkim/acme.pem",
        "domain-key s1,*,/etc/pmta/dkim/default.pem",
    ]
    domains = blocks(text, "domain")
    assert "dkim-sign yes" in domains["*"] and "smtp-pattern-list general" in domains["*"]
    providers = shaping.load().provider
    assert set(domains) == {"*"} | {d for p in providers for d in p.domains} | {
        f"{p.name}.rollup" for p in providers if p.mx}
    assert "max-msg-per-connection 20" in domains["yahoo.com"] and "smtp-pattern-list yahoo" in domains["yahoo.com"]
    assert all("dkim-sign yes" in body for body in domains.values())
    assert "records d,b,t,tq,rb,f" in blocks(text, "acct-file")["/var/log/pmta/acct.csv"]
    # every opened block is closed, and nothing PowerMTA would reject slipped in (§2.2)
    for tag in ("virtual-mta", "virtual-mta-pool", "source", "domain", "acct-file", "smtp-pattern-list"):
        assert len(re.findall(rf"^<{tag} ", text, flags=re.M)) == text.count(f"</{tag}>")
    assert "weight" not in text and "{" not in text


def test_a_shaping_table_replaces_the_bundled_one():
    table = shaping.Shaping(defaults=shaping.load().defaults,
                            provider=[shaping.Provider(name="inbox", domains=["inbox.test"], max_smtp_out=2)])
    domains = blocks(render_config(msgspec_replace(SAMPLE, shaping=table)), "domain")
    assert set(domains) == {"*", "inbox.test"}
    assert domains["inbox.test"] == ["max-smtp-out 2", "dkim-sign yes", "smtp-pattern-list inbox"]


@pytest.mark.parametrize("spec, message", [
    (ConfigSpec(vmtas=(VmtaSpec(name="a", address="mta1.sender.example", hostname="192.0.2.1"),)),
     "not an IP address"),
    (ConfigSpec(vmtas=(VmtaSpec(name="a", address="192.0.2.1", hostname="192.0.2.1"),)), "not a host name"),
    (ConfigSpec(vmtas=(VmtaSpec(name="a", address="192.0.2.1", hostname="a.example"),
                       VmtaSpec(name="a", address="192.0.2.2", hostname="b.example"))), "share a name"),
    (ConfigSpec(vmtas=(VmtaSpec(name="a", address="192.0.2.1", hostname="a.example"),),
                pools=(PoolSpec(name="a", vmtas=("a",)),)), "name of a virtual MTA"),
    (ConfigSpec(vmtas=(VmtaSpec(name="a", address="192.0.2.1", hostname="a.example"),),
                pools=(PoolSpec(name="p", vmtas=("a", "ghost")),)), "unknown virtual MTAs"),
    (ConfigSpec(vmtas=(VmtaSpec(name="a", address="192.0.2.1", hostname="a.example"),),
                pools=(PoolSpec(name="p", vmtas=()),)), "no virtual MTA"),
    (ConfigSpec(vmtas=(VmtaSpec(name="a", address="192.0.2.1", hostname="a.example", note="x\ny"),)), "one line"),
    (ConfigSpec(vmtas=(), fbl_address="fbl at example"), "not an email address"),
])
def test_refuses_specs_powermta_would_reject(spec, message):
    with pytest.raises(ConfigError, match=message):
        render_config(spec)


def msgspec_replace(spec: ConfigSpec, **changes) -> ConfigSpec:
    import msgspec

    return msgspec.structs.replace(spec, **changes)
