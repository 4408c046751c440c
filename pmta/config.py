"""PowerMTA configuration text generated from plain Structs (reference powermta.md §12)."""

from __future__ import annotations

import ipaddress
import re

import msgspec

from pmta import shaping
from pmta.shaping import Shaping

DEFAULT_ACCOUNTING_FILE = "/var/log/pmta/acct.csv"


class VmtaSpec(msgspec.Struct, frozen=True, kw_only=True):
    """One sending IP: `<virtual-mta name>` with `smtp-source-host address hostname`."""

    name: str
    address: str          # the sending IP (IPv4 or IPv6 literal)
    hostname: str         # HELO name; must match the IP's PTR (FCrDNS)
    max_per_day: int = 0  # today's warmup quota as `max-smtp-msg-rate N/d`; 0: no fence
    note: str = ""        # a comment line above the block (why a VMTA is out of its pool)


class PoolSpec(msgspec.Struct, frozen=True, kw_only=True):
    """One tenant's VMTAs as a `<virtual-mta-pool>` (round-robin only: weights are the engine's job)."""

    name: str
    vmtas: tuple[str, ...]


class DkimKeySpec(msgspec.Struct, frozen=True, kw_only=True):
    """`domain-key selector,domain,file`; domain "*" signs with the From domain."""

    selector: str
    domain: str
    key_file: str


class ConfigSpec(msgspec.Struct, frozen=True, kw_only=True):
    """Everything the generator needs; the caller reads it from the database."""

    vmtas: tuple[VmtaSpec, ...]
    pools: tuple[PoolSpec, ...] = ()
    dkim_keys: tuple[DkimKeySpec, ...] = ()
    injector_addresses: tuple[str, ...] = ("127.0.0.1",)   # who may inject and select VMTAs by header
    listener: str = "127.0.0.1:25"                          # smtp-listener CIDR:PORT for the engine
    accounting_file: str = DEFAULT_ACCOUNTING_FILE
    fbl_address: str | None = None                          # complaint address for <feedback-loop-processor>
    shaping: Shaping | None = None                          # None: pmta/shaping.toml


# Records the engine's accounting reader needs (reference §9.7), and per type the fields it reads back
# (pmta/accounting.py COLUMNS; a test keeps the two in step). Naming them keeps the files small: `t`
# records are many, and PowerMTA's `*` would write every field of every record.
ACCOUNTING_RECORDS = "d,b,t,tq,rb,f"
ACCOUNTING_FIELDS: tuple[tuple[str, str], ...] = (
    ("d", "timeLogged,timeQueued,orig,rcpt,dsnAction,dsnStatus,dsnDiag,dsnMta,vmta,jobId,envId,queue,dlvSourceIp"),
    ("b", "timeLogged,timeQueued,orig,rcpt,dsnAction,dsnStatus,dsnDiag,dsnMta,bounceCat,vmta,jobId,envId,queue"),
    ("t", "timeLogged,timeQueued,orig,rcpt,dsnAction,dsnStatus,dsnDiag,dsnMta,bounceCat,vmta,jobId,envId,queue,"
          "dlvSourceIp"),
    ("tq", "timeLogged,queue,vmta,dsnStatus,dsnDiag,dsnMta,dlvSourceIp"),
    ("rb", "timeLogged,orig,rcpt,dsnStatus,dsnDiag,dsnMta,bounceCat,envId,format"),
    ("f", "timeLogged,orig,rcpt,feedbackType,format,envId,dlvSourceIp"),
)


class ConfigError(ValueError):
    """The spec would produce a config PowerMTA rejects or that routes mail wrongly."""


def check(spec: ConfigSpec) -> None:
    """Raise ConfigError for duplicate or colliding names, bad IP literals and unknown pool members."""
    names = [v.name for v in spec.vmtas]
    if len(set(names)) != len(names):
        raise ConfigError("two virtual MTAs share a name")
    for vmta in spec.vmtas:
        try:
            ipaddress.ip_address(vmta.address)
        except ValueError:
            raise ConfigError(f"virtual MTA {vmta.name}: {vmta.address!r} is not an IP address") from None
        if not vmta.hostname or " " in vmta.hostname or _is_ip(vmta.hostname):
            raise ConfigError(f"virtual MTA {vmta.name}: {vmta.hostname!r} is not a host name")
    for vmta in spec.vmtas:
        if "\n" in vmta.note:
            raise ConfigError(f"virtual MTA {vmta.name}: a note is one line")
    if spec.fbl_address is not None and not re.match(r"^[^@\s,]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,63}$", spec.fbl_address):
        raise ConfigError(f"feedback-loop address {spec.fbl_address!r} is not an email address")
    for pool in spec.pools:
        if not pool.vmtas:  # a pool needs at least one member
            raise ConfigError(f"pool {pool.name} has no virtual MTA")
        if pool.name in names:  # pools and VMTAs share one name space (§2.1)
            raise ConfigError(f"pool {pool.name} has the name of a virtual MTA")
        unknown = set(pool.vmtas) - set(names)
        if unknown:
            raise ConfigError(f"pool {pool.name} names unknown virtual MTAs: {sorted(unknown)}")
    for key in spec.dkim_keys:
        if "," in key.selector or "," in key.domain or "," in key.key_file:
            raise ConfigError(f"domain-key {key.selector}: fields may not contain commas")


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def render_vmta(vmta: VmtaSpec) -> str:
    """`<virtual-mta>`: IP first, then the HELO host name (§2); the day's quota as a VMTA-wide rate."""
    note = f"# {vmta.note}\n" if vmta.note else ""
    # max-smtp-msg-rate caps the VMTA as a whole (§3.3.12.2); a max-msg-rate in its <domain *> would cap
    # each destination queue separately and let the VMTA's total run past the quota.
    fence = f"    max-smtp-msg-rate {vmta.max_per_day}/d\n" if vmta.max_per_day else ""
    return (f"{note}<virtual-mta {vmta.name}>\n    smtp-source-host {vmta.address} {vmta.hostname}\n{fence}"
            "</virtual-mta>\n")


def render_pool(pool: PoolSpec) -> str:
    """`<virtual-mta-pool>` with plain member lines (no weight token exists, §2.2)."""
    members = "".join(f"    virtual-mta {name}\n" for name in pool.vmtas)
    return f"<virtual-mta-pool {pool.name}>\n{members}</virtual-mta-pool>\n"


def render_dkim(keys: tuple[DkimKeySpec, ...]) -> str:
    """`domain-key` lines, wildcard entries last because they match before later specific ones (§6)."""
    ordered = sorted(keys, key=lambda k: k.domain == "*")
    return "".join(f"domain-key {k.selector},{k.domain},{k.key_file}\n" for k in ordered)


def render_sources(injectors: tuple[str, ...], listener: str) -> str:
    """The injection listener, relaying and header processing for the engine only, none for the world."""
    blocks = [f"smtp-listener {listener}\n"]
    for address in injectors:
        blocks.append(
            f"<source {address}>\n"
            "    always-allow-relaying yes\n"
            "    process-x-virtual-mta yes\n"
            "    process-x-job yes\n"
            "    process-x-envid yes\n"
            "</source>\n")
    blocks.append("<source 0/0>\n    always-allow-relaying no\n</source>\n")
    return "".join(blocks)


def render_accounting(path: str) -> str:
    """The accounting file the engine ingests; envId and jobId tie records back to sends rows."""
    fields = "".join(f"    record-fields {kind} {names}\n" for kind, names in ACCOUNTING_FIELDS)
    return (f"<acct-file {path}>\n    records {ACCOUNTING_RECORDS}\n{fields}    move-interval 5m\n"
            "</acct-file>\n")


def render_feedback_loop(address: str | None) -> str:
    """PowerMTA takes the complaint mailbox's mail itself and writes `f` records (reference §11)."""
    if not address:
        return ""
    domain = address.rpartition("@")[2]
    return (f"relay-domain {domain}\n<feedback-loop-processor>\n    deliver-unmatched-email no\n"
            f"    <address-list>\n        address {address}\n    </address-list>\n</feedback-loop-processor>\n")


def render_config(spec: ConfigSpec) -> str:
    """The whole engine-managed part of a PowerMTA config, checked first; apply with `pmta reload`."""
    check(spec)
    sections = [
        "# Generated by email-engine (pmta/config.py); edits here are overwritten.\n",
        render_sources(spec.injector_addresses, spec.listener),
        render_dkim(spec.dkim_keys),
        "".join(render_vmta(v) for v in spec.vmtas),
        "".join(render_pool(p) for p in spec.pools),
        shaping.render(spec.shaping or shaping.load()),
        render_accounting(spec.accounting_file),
        render_feedback_loop(spec.fbl_address),
    ]
    return "\n".join(section for section in sections if section)
