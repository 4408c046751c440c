"""MX lookups for address validation: resolver configuration, per-domain answers, a bounded cache."""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence

import aiodns
import msgspec
from aiodns import error as dns_error

# How long one domain's answer is trusted, in seconds. Positive answers follow the record TTL within
# bounds: at least 5 minutes so one batch of 10,000 contacts never asks twice even for TTL-0 zones, at
# most an hour so a domain that moves is seen the same day. Hard negatives (NXDOMAIN, null MX, no
# mail host) are cached for 15 minutes: RFC 2308 lets resolvers keep negative answers up to the SOA
# minimum, and scraped lists repeat the same dead domains. Temporary failures are kept only briefly
# so a retry of the batch soon asks again.
CACHE_TTL_MIN = 300
CACHE_TTL_MAX = 3600
CACHE_TTL_NEGATIVE = 900
CACHE_TTL_TEMPORARY = 30

# c-ares error numbers that mean "the DNS did not answer", never "the domain is bad".
# (ENOTFOUND is NXDOMAIN, ENODATA is NOERROR with no record of the asked type.)
_TEMPORARY = {
    dns_error.ARES_ETIMEOUT: "dns_timeout",
    dns_error.ARES_ESERVFAIL: "dns_servfail",
    dns_error.ARES_EREFUSED: "dns_servfail",
    dns_error.ARES_ECONNREFUSED: "dns_servfail",
}


class DomainCheck(msgspec.Struct, frozen=True, kw_only=True):
    """What DNS says about one mail domain; `reason` is None when it has a usable MX."""

    domain: str
    reason: str | None  # no_mx_a_fallback | null_mx | no_domain | no_mx | dns_timeout | dns_servfail
    mx_host: str | None = None
    ttl: int = CACHE_TTL_MIN


def parse_dns_servers(text: str) -> list[tuple[str, int]]:
    """Parse `EMAIL_ENGINE_DNS_SERVERS` ("127.0.0.1:5353,[::1]:53,192.0.2.53"); blank means system default."""
    return [_parse_server(entry.strip()) for entry in text.split(",") if entry.strip()]


def _parse_server(entry: str) -> tuple[str, int]:
    """One `ip[:port]` entry; IPv6 takes the `[addr]:port` form when it carries a port."""
    host, port_text = entry, ""
    if entry.startswith("["):
        host, sep, rest = entry[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"DNS server {entry!r}: expected [ipv6]:port")
        port_text = rest[1:]
    elif entry.count(":") == 1:
        host, port_text = entry.split(":")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        # c-ares takes addresses only: a name server given by name would itself need resolving.
        raise ValueError(f"DNS server {entry!r}: {host!r} is not an IP address") from None
    if not port_text:
        return host, 53
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"DNS server {entry!r}: port must be a number from 1 to 65535")
    return host, int(port_text)


def _server_csv_entry(host: str, port: int) -> str:
    """The form c-ares `ares_set_servers_csv` expects."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def make_resolver(
    servers: Sequence[str | tuple[str, int]] = (),
    *,
    timeout: float = 3.0,
    tries: int = 2,
    concurrency: int = 50,
    cache_size: int = 10_000,
    clock: Callable[[], float] = time.monotonic,
) -> MxResolver:
    """Build an MxResolver on `servers` (`host[:port]` or pairs; empty = resolv.conf); call inside the loop."""
    pairs = [_parse_server(s) if isinstance(s, str) else (s[0], int(s[1])) for s in servers]
    kwargs: dict = {"nameservers": [_server_csv_entry(h, p) for h, p in pairs]} if pairs else {}
    resolver = aiodns.DNSResolver(timeout=timeout, tries=tries, **kwargs)
    return MxResolver(
        resolver, query_timeout=timeout * tries + 1.0, concurrency=concurrency,
        cache_size=cache_size, clock=clock,
    )


def _host(name: str) -> str:
    return name.rstrip(".").lower()


class MxResolver:
    """Answers "can this domain receive mail, and where" once per domain: cache, in-flight sharing, a bound."""

    def __init__(
        self,
        resolver: aiodns.DNSResolver,
        *,
        query_timeout: float,
        concurrency: int,
        cache_size: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.resolver = resolver
        self.query_timeout = query_timeout
        self.cache_size = cache_size
        self.clock = clock
        self.queries_sent = 0  # DNS queries actually sent, so tests and metrics can see the cache work
        self._semaphore = asyncio.Semaphore(concurrency)
        self._cache: OrderedDict[str, tuple[float, DomainCheck]] = OrderedDict()
        self._inflight: dict[str, asyncio.Task[DomainCheck]] = {}

    async def check(self, domain: str) -> DomainCheck:
        """Return the (possibly cached) DNS verdict for an ASCII, lower-case domain."""
        cached = self._cache.get(domain)
        if cached is not None:
            if cached[0] > self.clock():
                self._cache.move_to_end(domain)
                return cached[1]
            del self._cache[domain]
        task = self._inflight.get(domain)
        if task is None:
            task = asyncio.ensure_future(self._resolve(domain))
            self._inflight[domain] = task
            task.add_done_callback(lambda _t: self._inflight.pop(domain, None))
        # shield: one caller giving up must not cancel the lookup the others are waiting on.
        return await asyncio.shield(task)

    async def close(self) -> None:
        """Release the c-ares channel."""
        await self.resolver.close()

    async def _resolve(self, domain: str) -> DomainCheck:
        result = await self._lookup(domain)
        if result.reason in ("dns_timeout", "dns_servfail"):
            ttl = CACHE_TTL_TEMPORARY
        elif result.reason in ("null_mx", "no_domain", "no_mx"):
            ttl = CACHE_TTL_NEGATIVE
        else:
            ttl = min(max(result.ttl, CACHE_TTL_MIN), CACHE_TTL_MAX)
        self._cache[domain] = (self.clock() + ttl, result)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return result

    async def _lookup(self, domain: str) -> DomainCheck:
        """MX first; with no MX fall back to A/AAAA (RFC 5321 §5.1 implicit MX)."""
        mx, failure = await self._query(domain, "MX")
        if failure == "no_data":
            return await self._implicit_mx(domain)
        if failure is not None:
            return DomainCheck(domain=domain, reason=failure)
        records = sorted((r.data.priority, _host(r.data.exchange), r.ttl) for r in mx)
        if not records:
            return await self._implicit_mx(domain)
        usable = [r for r in records if r[1]]
        if not usable:
            # RFC 7505: "MX 0 ." says the domain accepts no mail. A null MX mixed with real ones is a
            # misconfiguration the RFC forbids; the real ones still work, so they win.
            return DomainCheck(domain=domain, reason="null_mx", ttl=records[0][2])
        return DomainCheck(domain=domain, reason=None, mx_host=usable[0][1], ttl=min(r[2] for r in usable))

    async def _implicit_mx(self, domain: str) -> DomainCheck:
        (a, a_fail), (aaaa, aaaa_fail) = await asyncio.gather(
            self._query(domain, "A"), self._query(domain, "AAAA")
        )
        if a or aaaa:
            ttl = min(r.ttl for r in a + aaaa)
            return DomainCheck(domain=domain, reason="no_mx_a_fallback", mx_host=domain, ttl=ttl)
        for failure in (a_fail, aaaa_fail):
            if failure not in (None, "no_data"):
                return DomainCheck(domain=domain, reason=failure)
        return DomainCheck(domain=domain, reason="no_mx")

    async def _query(self, domain: str, qtype: str) -> tuple[list, str | None]:
        """Records of `qtype` and None, or [] and a failure: no_data | no_domain | dns_* | syntax."""
        async with self._semaphore:
            self.queries_sent += 1
            try:
                result = await asyncio.wait_for(self.resolver.query_dns(domain, qtype), self.query_timeout)
            except TimeoutError:
                return [], "dns_timeout"
            except dns_error.DNSError as exc:
                code = exc.args[0] if exc.args else None
                if code == dns_error.ARES_ENOTFOUND:
                    return [], "no_domain"
                if code == dns_error.ARES_ENODATA:
                    return [], "no_data"
                if code in (dns_error.ARES_EBADNAME, dns_error.ARES_EBADSTR):
                    return [], "syntax"
                # Anything else (including errors we do not know) is treated as an outage: a DNS
                # problem must never turn into an invalid address.
                return [], _TEMPORARY.get(code, "dns_servfail")
        wanted = aiodns.query_type_map[qtype]
        return [r for r in result.answer if r.type == wanted], None
