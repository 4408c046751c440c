"""Per-provider shaping (pmta/shaping.toml) and its rendering into <domain>, <smtp-pattern-list> and
<mx-rollup-list> blocks. The file is validated on load against the guide's rules (powermta.md §3, §5)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import msgspec

DEFAULT_FILE = Path(__file__).with_name("shaping.toml")
GENERAL = "general"   # the pattern list of every destination without a provider block

# §3: {unlimited|0|N/[M]{d|day|h|hr|m|min|s|sec}}
RATE = re.compile(r"^(unlimited|0|\d+/\d*(d|day|h|hr|m|min|s|sec))$")
NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
HOST = re.compile(r"^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")
TIME = re.compile(r"^\d+[smhd]$")
# §5: the actions a `reply` rule may take.
ACTIONS = frozenset({"mode=normal", "mode=backoff", "skip-mx", "bounce-queue", "bounce-rcpt", "disable-source-ip",
                     "defer-queue"})


class Pattern(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    reply: str
    action: str
    hold: str | None = None   # the engine's provider hold (engine/sending/backoff.py); not rendered


class Defaults(msgspec.Struct, frozen=True, kw_only=True, rename="kebab", forbid_unknown_fields=True):
    max_smtp_out: int
    retry_after: str
    bounce_after: str
    backoff_retry_after: str
    backoff_to_normal_after: str
    hold_after: int = 3
    hold_window: str = "10m"
    hold_max: str = "24h"
    patterns: list[Pattern] = []


class Provider(msgspec.Struct, frozen=True, kw_only=True, rename="kebab", forbid_unknown_fields=True):
    name: str
    domains: list[str] = []
    mx: list[str] = []
    max_smtp_out: int | None = None
    max_msg_per_connection: int | None = None
    max_msg_rate: str | None = None
    max_connect_rate: str | None = None
    patterns: list[Pattern] = []


class Shaping(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    defaults: Defaults
    provider: list[Provider] = []


class ShapingError(ValueError):
    """The shaping file would render a config PowerMTA rejects; the message names the entry."""


def load(path: Path | None = None) -> Shaping:
    source = path or DEFAULT_FILE
    try:
        shaping = msgspec.convert(tomllib.loads(source.read_text("utf-8")), Shaping)
    except (OSError, tomllib.TOMLDecodeError, msgspec.ValidationError) as exc:
        raise ShapingError(f"{source}: {exc}") from exc
    check(shaping)
    return shaping


def check_action(action: str) -> None:
    """§5's rules for one action list."""
    parts = action.split(",")
    names = [p.split("=")[0] if p.startswith("reenable-after=") else p for p in parts]
    for part, name in zip(parts, names, strict=True):
        if name == "reenable-after":
            if not TIME.match(part.split("=", 1)[1]):
                raise ShapingError(f"action {action!r}: reenable-after needs a time such as 1h")
        elif name not in ACTIONS:
            raise ShapingError(f"action {action!r}: unknown action {part!r}")
    if {"mode=backoff", "mode=normal"} <= set(names) or {"skip-mx", "bounce-queue"} <= set(names):
        raise ShapingError(f"action {action!r}: these actions may not be combined (§5)")
    if names.count("reenable-after") > 1 or ("reenable-after" in names and (
            "disable-source-ip" not in names or names.index("disable-source-ip") > names.index("reenable-after"))):
        raise ShapingError(f"action {action!r}: one reenable-after, after disable-source-ip (§5)")


def _check_pattern(pattern: Pattern, where: str) -> None:
    # The pattern sits between slashes on one line: an unescaped slash or a line break would end it early.
    if re.search(r"(?<!\\)/", pattern.reply) or "\n" in pattern.reply or not pattern.reply:
        raise ShapingError(f"{where}: pattern {pattern.reply!r} may not be empty or hold / or a line break")
    check_action(pattern.action)
    if pattern.hold is not None and not TIME.match(pattern.hold):
        raise ShapingError(f"{where}: pattern {pattern.reply!r}: hold {pattern.hold!r} is not a time such as 1h")


def check(shaping: Shaping) -> None:
    d = shaping.defaults
    if d.hold_after < 1 or not TIME.match(d.hold_window) or not TIME.match(d.hold_max):
        raise ShapingError("defaults: hold-after is at least 1, hold-window and hold-max are times such as 1h")
    for pattern in shaping.defaults.patterns:
        _check_pattern(pattern, "defaults")
    seen_names, seen_domains = {GENERAL}, set()
    for p in shaping.provider:
        if not NAME.match(p.name) or p.name in seen_names:
            raise ShapingError(f"provider {p.name!r}: names are unique lowercase labels (and not {GENERAL!r})")
        seen_names.add(p.name)
        if not p.domains and not p.mx:
            raise ShapingError(f"provider {p.name}: give domains or mx hosts")
        for host in [*p.domains, *p.mx]:
            if not HOST.match(host) or host in seen_domains:
                raise ShapingError(f"provider {p.name}: {host!r} is not a host name, or is listed twice")
            seen_domains.add(host)
        for rate in (p.max_msg_rate, p.max_connect_rate):
            if rate is not None and not RATE.match(rate):
                raise ShapingError(f"provider {p.name}: rate {rate!r} is not N/[M]{{d|h|m|s}}")
        for pattern in p.patterns:
            _check_pattern(pattern, f"provider {p.name}")


def _pattern_list(name: str, patterns: list[Pattern]) -> str:
    lines = "".join(f"    reply /{p.reply}/ {p.action}\n" for p in patterns)
    return f"<smtp-pattern-list {name}>\n{lines}</smtp-pattern-list>\n"


def _domain_block(name: str, provider: Provider, pattern_list: str) -> str:
    lines = [f"<domain {name}>"]
    for directive, value in (("max-smtp-out", provider.max_smtp_out),
                             ("max-msg-per-connection", provider.max_msg_per_connection),
                             ("max-msg-rate", provider.max_msg_rate), ("max-connect-rate", provider.max_connect_rate)):
        if value is not None:
            lines.append(f"    {directive} {value}")
    # dkim-sign is stated in every block, not left to inheritance from <domain *>: unsigned mail is the
    # one mistake no later setting repairs.
    lines += ["    dkim-sign yes", f"    smtp-pattern-list {pattern_list}", "</domain>"]
    return "\n".join(lines) + "\n"


def render(shaping: Shaping) -> str:
    """Pattern lists, MX rollups, `<domain *>` and one block per provider domain, in the file's order."""
    d = shaping.defaults
    parts = [_pattern_list(GENERAL, d.patterns)]
    for p in shaping.provider:
        own = {x.reply for x in p.patterns}
        parts.append(_pattern_list(p.name, [*p.patterns, *(x for x in d.patterns if x.reply not in own)]))
    rollups = [f"    mx {host} {p.name}.rollup\n" for p in shaping.provider for host in p.mx]
    if rollups:
        # §10.17: one queue per MX family; the queue (and its <domain> block) is named NAME.rollup.
        parts.append("<mx-rollup-list>\n" + "".join(rollups) + "</mx-rollup-list>\n")
    parts.append("<domain *>\n"
                 f"    max-smtp-out {d.max_smtp_out}\n"
                 f"    retry-after {d.retry_after}\n"
                 f"    bounce-after {d.bounce_after}\n"
                 f"    backoff-retry-after {d.backoff_retry_after}\n"
                 f"    backoff-to-normal-after {d.backoff_to_normal_after}\n"
                 "    dkim-sign yes\n"
                 f"    smtp-pattern-list {GENERAL}\n"
                 "</domain>\n")
    for p in shaping.provider:
        parts += [_domain_block(name, p, p.name) for name in p.domains]
        if p.mx:
            parts.append(_domain_block(f"{p.name}.rollup", p, p.name))
    return "".join(parts)
