"""Destination mailbox providers: recognised by MX host, each with default per-IP sending caps."""

from __future__ import annotations

import msgspec

OTHER = "other"

# MX host suffix -> provider. Receivers throttle by the MX family, not by the recipient's domain (Gmail:
# "domains with Google MX hosts count together", deliverability.md §1.1; PowerMTA rolls queues up by MX,
# powermta.md §3 `<mx-rollup-list>`), so a Workspace domain on Google's MX counts as gmail. A host matches a
# suffix when it equals it or ends with "." + suffix; the longest matching suffix wins.
# These are the providers' public MX names (they are what the table recognises, not test data).
MX_SUFFIXES: dict[str, str] = {
    "google.com": "gmail",               # aspmx.l.google.com, alt1.aspmx.l.google.com, smtp.google.com
    "googlemail.com": "gmail",           # gmail-smtp-in.l.googlemail.com (legacy)
    "protection.outlook.com": "outlook",  # *.mail.protection.outlook.com (Microsoft 365 tenants)
    "olc.protection.outlook.com": "outlook",  # hotmail-com.olc.protection.outlook.com (consumer)
    "hotmail.com": "outlook",            # mx1.hotmail.com (legacy consumer MX)
    "outlook.com": "outlook",
    "yahoodns.net": "yahoo",             # mta5.am0.yahoodns.net; AOL mail also lands here
    "icloud.com": "icloud",              # mx01.mail.icloud.com
    "gmx.net": "gmx",                    # mx00.gmx.net
    "gmx.com": "gmx",
    "web.de": "gmx",                     # same operator (United Internet) and the same throttles
    "orange.fr": "orange",               # smtp-in.orange.fr
    "wanadoo.fr": "orange",
    "free.fr": "free",                   # mx1.free.fr
    "mail.ru": "mailru",                 # mxs.mail.ru
    "yandex.ru": "yandex",               # mx.yandex.ru
    "yandex.net": "yandex",              # mx.yandex.net
    "qq.com": "qq",                      # mx1.qq.com
}


class ProviderCap(msgspec.Struct, frozen=True, kw_only=True):
    """How much one sending IP may send to one provider; None means no cap of that kind."""

    per_hour: int | None = None
    per_day: int | None = None


# Default caps per IP x provider. No provider publishes a number; these are the engine's conservative
# starting points, meant to be overridden per tenant once Postmaster data exists:
# - 500/h is the PowerMTA guide's own `max-msg-rate 500/h` example (powermta.md §3); Outlook's figure is the
#   guide's `83/10m` example, which is the same 500 an hour, spread.
# - 4,000/day for Gmail keeps one IP alone under the 5,000-a-day mark that makes a sender "bulk" at Gmail
#   (deliverability.md §1.1); Outlook's authentication rules start at 5,000 a day (§1.3).
# - The smaller European and Russian/Chinese providers throttle new IPs harder (PowerMTA practice of giving
#   them their own `<domain>` blocks), hence 300/h and 3,000/day.
# - Anything unrecognised has no provider cap: the IP's own daily quota and rate still apply.
DEFAULT_CAPS: dict[str, ProviderCap] = {
    "gmail": ProviderCap(per_hour=500, per_day=4_000),
    "outlook": ProviderCap(per_hour=500, per_day=5_000),
    "yahoo": ProviderCap(per_hour=500, per_day=5_000),
    "icloud": ProviderCap(per_hour=300, per_day=3_000),
    "gmx": ProviderCap(per_hour=300, per_day=3_000),
    "orange": ProviderCap(per_hour=300, per_day=3_000),
    "free": ProviderCap(per_hour=300, per_day=3_000),
    "mailru": ProviderCap(per_hour=300, per_day=3_000),
    "yandex": ProviderCap(per_hour=300, per_day=3_000),
    "qq": ProviderCap(per_hour=300, per_day=3_000),
}

# Longest suffix first, so "olc.protection.outlook.com" is tried before "outlook.com".
_ORDERED = sorted(MX_SUFFIXES.items(), key=lambda item: -len(item[0]))


def provider_for_mx(mx_host: str | None) -> str:
    """The provider an MX host belongs to, or "other"."""
    if not mx_host:
        return OTHER
    host = mx_host.strip().rstrip(".").lower()
    for suffix, provider in _ORDERED:
        if host == suffix or host.endswith("." + suffix):
            return provider
    return OTHER


def default_cap(provider: str) -> ProviderCap | None:
    """The default per-IP cap for a provider, or None when it has none."""
    return DEFAULT_CAPS.get(provider)
