"""PowerMTA configuration text generated from plain Structs (reference powermta.md §12)."""

from __future__ import annotations

import ipaddress

import msgspec


class VmtaSpec(msgspec.Struct, frozen=True, kw_only=True):
    """One sending IP: `<virtual-mta name>` with `smtp-source-host address hostname`."""

    name: str
    address: str          # the sending IP (IPv4 or IPv6 literal)
    hostname: str         # HELO name; must match the IP's PTR (FCrDNS)


class PoolSpec(msgspec.Struct, frozen=True, kw_only=True):
    """One tenant's VMTAs as a `<virtual-mta-pool>` (round-robin only: weights are the engine's job)."""

    name: str
    vmtas: tuple[str, ...]


class DkimKeySpec(msgspec.Struct, frozen=True, kw_only=True):
    """`domain-key selector,domain,file`; domain "*" signs with the From domain."""

    selector: str
    domain: str
    key_file: str


class DomainLimit(msgspec.Struct, frozen=True, kw_only=True):
    """Throttles for one destination domain, emitted as a `<domain>` block."""

    domain: str
    max_smtp_out: int
    max_msg_per_connection: int = 0     # 0: unlimited (PowerMTA's default)
    max_msg_rate: str = ""              # e.g. "500/h"; empty: unlimited


class ConfigSpec(msgspec.Struct, frozen=True, kw_only=True):
    """Everything the generator needs; the caller reads it from the database."""

    vmtas: tuple[VmtaSpec, ...]
    pools: tuple[PoolSpec, ...] = ()
    dkim_keys: tuple[DkimKeySpec, ...] = ()
    injector_addresses: tuple[str, ...] = ("127.0.0.1",)   # who may inject and select VMTAs by header
    listener: str = "127.0.0.1:25"                          # smtp-listener CIDR:PORT for the engine
    accounting_file: str = "/var/log/pmta/acct.csv"
    domain_limits: tuple[DomainLimit, ...] = ()             # empty: PROVIDER_LIMITS


# Per-provider throttles. Starting points from common PowerMTA practice, not figures the providers
# publish (none publish connection counts: deliverability.md §1): Gmail and Outlook tolerate more parallel
# sessions than Yahoo, which "accepts a limited number of messages per SMTP connection and closes the
# connection without an error" (deliverability.md §1.2), hence its per-connection cap. Tune per tenant
# from accounting `t`/`tq` records before raising any of them.
PROVIDER_LIMITS: tuple[DomainLimit, ...] = (
    DomainLimit(domain="gmail.com", max_smtp_out=10, max_msg_per_connection=100),
    DomainLimit(domain="googlemail.com", max_smtp_out=10, max_msg_per_connection=100),
    DomainLimit(domain="yahoo.com", max_smtp_out=5, max_msg_per_connection=20, max_msg_rate="1000/h"),
    DomainLimit(domain="aol.com", max_smtp_out=5, max_msg_per_connection=20, max_msg_rate="1000/h"),
    DomainLimit(domain="outlook.com", max_smtp_out=8, max_msg_per_connection=50),
    DomainLimit(domain="hotmail.com", max_smtp_out=8, max_msg_per_connection=50),
    DomainLimit(domain="live.com", max_smtp_out=8, max_msg_per_connection=50),
)

# Every other destination: PowerMTA's own defaults (§3.3.10: max-smtp-out 20, bounce-after 4d12h) with the
# guide's widening retry schedule (§3), and `dkim-sign yes`, which signing needs per destination (§6).
DEFAULT_DOMAIN: tuple[tuple[str, str], ...] = (
    ("max-smtp-out", "20"),
    ("retry-after", "10m,10m,10m,10m,10m,1h,1h,1h,4h,4h,12h"),
    ("bounce-after", "4d12h"),
    ("backoff-retry-after", "1h"),
    ("backoff-to-normal-after", "6h"),
    ("dkim-sign", "yes"),
    ("smtp-pattern-list", "backoff"),
)

# General-purpose reply patterns from the guide's example (§5); provider-specific ones belong to the operator.
BACKOFF_PATTERNS: tuple[tuple[str, str], ...] = (
    (r"^421 .* too many errors", "mode=backoff"),
    (r"too many connections", "skip-mx"),
    (r"resources temporarily unavailable", "defer-queue"),
    (r"Excessive unknown recipients", "mode=backoff"),
)

# Records the engine's accounting reader needs (reference §9.7).
ACCOUNTING_RECORDS = "d,b,t,tq,rb,f"


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
    for pool in spec.pools:
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
    """`<virtual-mta>`: IP first, then the HELO host name (§2)."""
    return f"<virtual-mta {vmta.name}>\n    smtp-source-host {vmta.address} {vmta.hostname}\n</virtual-mta>\n"


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


def render_domain(limit: DomainLimit) -> str:
    """One `<domain>` throttle block."""
    lines = [f"<domain {limit.domain}>", f"    max-smtp-out {limit.max_smtp_out}"]
    if limit.max_msg_per_connection:
        lines.append(f"    max-msg-per-connection {limit.max_msg_per_connection}")
    if limit.max_msg_rate:
        lines.append(f"    max-msg-rate {limit.max_msg_rate}")
    return "\n".join(lines) + "\n</domain>\n"


def render_defaults() -> str:
    """The backoff pattern list and the `<domain *>` block every other destination gets."""
    patterns = "".join(f"    reply /{pattern}/ {action}\n" for pattern, action in BACKOFF_PATTERNS)
    domain = "".join(f"    {name} {value}\n" for name, value in DEFAULT_DOMAIN)
    return (f"<smtp-pattern-list backoff>\n{patterns}</smtp-pattern-list>\n"
            f"<domain *>\n{domain}</domain>\n")


def render_accounting(path: str) -> str:
    """The accounting file the engine ingests; envId and jobId tie records back to sends rows."""
    return f"<acct-file {path}>\n    records {ACCOUNTING_RECORDS}\n    move-interval 5m\n</acct-file>\n"


def render_config(spec: ConfigSpec) -> str:
    """The whole engine-managed part of a PowerMTA config, checked first; apply with `pmta reload`."""
    check(spec)
    sections = [
        "# Generated by email-engine (pmta/config.py); edits here are overwritten.\n",
        render_sources(spec.injector_addresses, spec.listener),
        render_dkim(spec.dkim_keys),
        "".join(render_vmta(v) for v in spec.vmtas),
        "".join(render_pool(p) for p in spec.pools),
        render_defaults(),
        "".join(render_domain(d) for d in spec.domain_limits or PROVIDER_LIMITS),
        render_accounting(spec.accounting_file),
    ]
    return "\n".join(section for section in sections if section)
