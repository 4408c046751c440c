"""Settings: one frozen Struct read once from `EMAIL_ENGINE_*` environment variables."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import msgspec

PREFIX = "EMAIL_ENGINE_"


class SettingsError(Exception):
    """A bad environment value; the message is one line naming the variable and the expected form."""


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    database_url: str | None = None     # None: start the embedded PostgreSQL under `home`
    redis_url: str | None = None        # None: start the embedded Redis under `home`
    home: Path = Path(".email-engine")
    http_host: str = "127.0.0.1"
    http_port: int = 8000
    admin_key: str | None = None        # None: generated on the first `up`, kept in `home`/admin_key
    pmta_host: str | None = None        # None: `up` runs a local stand-in that keeps every message
    pmta_port: int = 25
    pmta_pool_size: int = 8
    secret_key: str | None = None       # None: generated on first start, kept in `home`/secret_key
    public_url: str = "http://127.0.0.1:8000"
    dns_servers: tuple[str, ...] = ()   # host[:port] resolvers for validation; () = the system's
    redis_namespace: str = "ee"         # prefix of every Redis key and of the arq queue
    warmup_hour: int = 6                # hour (tenant's timezone) at which the daily warmup runs
    worker_timeout: int = 10            # seconds a sending worker may go unheard before its rows are taken back
    pmta_accounting_dir: Path | None = None  # PowerMTA's accounting files (acct-*.csv), read every minute
    arf_dir: Path | None = None         # the FBL mailbox's complaint reports (maildir or *.eml), read every minute
    log_level: str = "INFO"
    log_format: str = "text"            # text, or json: one JSON object per line with the context ids
    # a worker's Prometheus metrics on this port (at http_host); `up` gives its Nth worker port + N - 1
    worker_metrics_port: int | None = None
    # PowerMTA config generation (pmta/generate.py): where the worker keeps the generated file (None: it
    # does not), where the DKIM private keys go, what to run after a change, who may inject.
    pmta_config_file: Path | None = None
    pmta_dkim_dir: Path = Path("/etc/pmta/dkim")
    pmta_reload: str | None = None      # e.g. "pmta reload"; its failure raises an alert event
    pmta_injectors: tuple[str, ...] = ("127.0.0.1",)
    pmta_listener: str = "127.0.0.1:25"
    pmta_fbl_address: str | None = None  # the complaint (feedback-loop) address PowerMTA processes
    blocklists_file: Path | None = None  # None: the bundled engine/blocklists.toml
    telegram_api_url: str = "https://api.telegram.org"  # the Bot API's base (a local Bot API server works too)
    pmta_unreachable_minutes: int = 5   # PowerMTA unreachable this long raises a pmta_unreachable alert

    @property
    def queue_name(self) -> str:
        return f"{self.redis_namespace}:queue"


def _url(name: str, value: str, schemes: tuple[str, ...]) -> str:
    parts = urlsplit(value)
    if parts.scheme not in schemes:
        raise SettingsError(f"{PREFIX}{name}: expected a URL starting with {' or '.join(s + '://' for s in schemes)}, got {value!r}")
    return value


def _int(name: str, value: str, lo: int, hi: int) -> int:
    try:
        number = int(value)
    except ValueError:
        number = None
    if number is None or not lo <= number <= hi:
        raise SettingsError(f"{PREFIX}{name}: expected a whole number from {lo} to {hi}, got {value!r}")
    return number


def _dns(name: str, value: str) -> tuple[str, ...]:
    servers = tuple(part.strip() for part in value.split(",") if part.strip())
    for server in servers:
        host, _, port = server.rpartition(":") if server.count(":") == 1 else (server, "", "")
        if not (host or server) or (port and not port.isdigit()):
            raise SettingsError(f"{PREFIX}{name}: expected comma-separated host[:port], got {value!r}")
    return servers


def _addresses(name: str, value: str) -> tuple[str, ...]:
    """Comma-separated IPs or CIDR blocks (PowerMTA <source> names)."""
    import ipaddress

    found = tuple(part.strip() for part in value.split(",") if part.strip())
    try:
        for part in found:
            ipaddress.ip_network(part, strict=False)
    except ValueError:
        raise SettingsError(f"{PREFIX}{name}: expected comma-separated IP addresses or CIDR blocks, got {value!r}") from None
    return found


# Hosts for which a plain-http public URL is fine: links that only this machine follows, and the names RFC 6761
# reserves for testing, which no real recipient can reach.
LOCAL_HOSTS = frozenset({"localhost", "::1"})
LOCAL_SUFFIXES = (".localhost", ".test")


def is_local_url(url: str) -> bool:
    host = (urlsplit(url).hostname or "").lower().rstrip(".")
    return host in LOCAL_HOSTS or host.endswith(LOCAL_SUFFIXES) or host.startswith("127.")


def public_url_warning(settings: Settings) -> str | None:
    """What `up` says loudly when unsubscribe links are plain http (allowed for a local URL only)."""
    if not settings.public_url.lower().startswith("http://"):
        return None
    return (f"WARNING: {PREFIX}PUBLIC_URL is {settings.public_url}: List-Unsubscribe links are plain http, which "
            "RFC 8058 one-click unsubscribe does not allow; set an https:// public URL before sending real mail")


def _url_base(name: str, value: str) -> str:
    """The public base URL; http:// only for a local host: RFC 8058 one-click unsubscribe needs HTTPS."""
    url = _url(name, value, ("http", "https")).rstrip("/")
    if url.lower().startswith("http://") and not is_local_url(url):
        raise SettingsError(f"{PREFIX}{name}: must be https:// (List-Unsubscribe links need HTTPS, RFC 8058); "
                            f"http:// is accepted only for localhost, got {value!r}")
    return url


# variable -> (field, parser); the parsers raise SettingsError naming the variable.
_PARSERS: dict[str, tuple[str, Any]] = {
    "DATABASE_URL": ("database_url", lambda n, v: _url(n, v, ("postgresql", "postgres"))),
    "REDIS_URL": ("redis_url", lambda n, v: _url(n, v, ("redis", "rediss", "unix"))),
    "HOME": ("home", lambda n, v: Path(v)),
    "HTTP_HOST": ("http_host", lambda n, v: v),
    "HTTP_PORT": ("http_port", lambda n, v: _int(n, v, 1, 65535)),
    "ADMIN_KEY": ("admin_key", lambda n, v: v if len(v) >= 16 else _short(n)),
    "PMTA_HOST": ("pmta_host", lambda n, v: v),
    "PMTA_PORT": ("pmta_port", lambda n, v: _int(n, v, 1, 65535)),
    "PMTA_POOL_SIZE": ("pmta_pool_size", lambda n, v: _int(n, v, 1, 256)),
    "SECRET_KEY": ("secret_key", lambda n, v: v if len(v) >= 16 else _short(n)),
    "PUBLIC_URL": ("public_url", _url_base),
    "DNS_SERVERS": ("dns_servers", _dns),
    "REDIS_NAMESPACE": ("redis_namespace", lambda n, v: v if v.replace("-", "").replace("_", "").isalnum() else _bad(n, "letters, digits, - or _", v)),
    "WARMUP_HOUR": ("warmup_hour", lambda n, v: _int(n, v, 0, 23)),
    "WORKER_TIMEOUT": ("worker_timeout", lambda n, v: _int(n, v, 2, 3600)),
    "PMTA_ACCOUNTING_DIR": ("pmta_accounting_dir", lambda n, v: Path(v)),
    "ARF_DIR": ("arf_dir", lambda n, v: Path(v)),
    "PMTA_CONFIG": ("pmta_config_file", lambda n, v: Path(v)),
    "PMTA_DKIM_DIR": ("pmta_dkim_dir", lambda n, v: Path(v)),
    "PMTA_RELOAD": ("pmta_reload", lambda n, v: v),
    "PMTA_INJECTORS": ("pmta_injectors", lambda n, v: _addresses(n, v)),
    "PMTA_LISTENER": ("pmta_listener", lambda n, v: v if v.rpartition(":")[2].isdigit() else _bad(n, "IP:PORT", v)),
    "PMTA_FBL_ADDRESS": ("pmta_fbl_address", lambda n, v: v if "@" in v else _bad(n, "an email address", v)),
    "BLOCKLISTS": ("blocklists_file", lambda n, v: Path(v)),
    "LOG_FORMAT": ("log_format", lambda n, v: v.lower() if v.lower() in {"text", "json"} else _bad(n, "text or json", v)),
    "WORKER_METRICS_PORT": ("worker_metrics_port", lambda n, v: _int(n, v, 1, 65535)),
    "TELEGRAM_API_URL": ("telegram_api_url", _url_base),
    "PMTA_UNREACHABLE_MINUTES": ("pmta_unreachable_minutes", lambda n, v: _int(n, v, 1, 1440)),
    "LOG_LEVEL": ("log_level", lambda n, v: v.upper() if v.upper() in {"DEBUG", "INFO", "WARNING", "ERROR"} else _bad(n, "DEBUG, INFO, WARNING or ERROR", v)),
}


def _short(name: str) -> str:
    raise SettingsError(f"{PREFIX}{name}: expected at least 16 characters")


def _bad(name: str, expected: str, value: str) -> str:
    raise SettingsError(f"{PREFIX}{name}: expected {expected}, got {value!r}")


def load_settings(environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Read the settings once from the environment (empty values count as unset)."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for var, (field, parse) in _PARSERS.items():
        raw = env.get(PREFIX + var)
        if raw is not None and raw.strip() != "":
            values[field] = parse(var, raw.strip())
    values.update(overrides)
    if "public_url" not in values:
        # Links in emails point at this API unless a public address is configured.
        values["public_url"] = f"http://{values.get('http_host', '127.0.0.1')}:{values.get('http_port', 8000)}"
    return Settings(**values)
