"""DNS reads for the operations checks (records, FCrDNS, blocklists): every answer is a value, never a raise."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Sequence

import aiodns
import msgspec
from aiodns import error as dns_error

from engine.mx import parse_dns_servers

# c-ares error number -> what the check reports. NXDOMAIN and NODATA are answers ("nothing published");
# everything else means DNS itself did not answer, which must never read as "record missing".
_FAILURES = {
    dns_error.ARES_ENOTFOUND: "nxdomain",
    dns_error.ARES_ENODATA: "nodata",
    dns_error.ARES_ETIMEOUT: "timeout",
    dns_error.ARES_ESERVFAIL: "servfail",
    dns_error.ARES_EREFUSED: "refused",
    dns_error.ARES_ECONNREFUSED: "connection refused",
    dns_error.ARES_EBADRESP: "malformed answer",
    dns_error.ARES_EFORMERR: "malformed answer",
    dns_error.ARES_EBADNAME: "bad name",
}
ABSENT = frozenset({"nxdomain", "nodata"})


class Answer(msgspec.Struct, frozen=True, kw_only=True):
    """The records of one name and type, or why there are none (`failure`: nxdomain, nodata, timeout, ...)."""

    values: tuple[str, ...] = ()
    failure: str | None = None

    @property
    def absent(self) -> bool:
        """DNS answered that nothing of this type is published."""
        return self.failure in ABSENT

    @property
    def error(self) -> bool:
        """DNS itself failed: the question is unanswered."""
        return self.failure is not None and self.failure not in ABSENT


class Resolver:
    """aiodns on the configured servers, with a deadline on every query (c-ares' own retries included)."""

    def __init__(self, servers: Sequence[str] = (), *, timeout: float = 2.0, tries: int = 2,
                 concurrency: int = 32) -> None:
        pairs = parse_dns_servers(",".join(servers))
        # c-ares' server list form: [v6]:port or v4:port
        kwargs: dict = {"nameservers": [f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in pairs]} if pairs else {}
        self._resolver = aiodns.DNSResolver(timeout=timeout, tries=tries, **kwargs)
        self.deadline = timeout * tries + 1.0
        self._semaphore = asyncio.Semaphore(concurrency)

    async def close(self) -> None:
        await self._resolver.close()

    async def __aenter__(self) -> Resolver:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def query(self, name: str, qtype: str) -> Answer:
        """TXT values (strings of one record joined), A/AAAA addresses or PTR names, lowercase without the dot."""
        async with self._semaphore:
            try:
                result = await asyncio.wait_for(self._resolver.query_dns(name, qtype), self.deadline)
            except TimeoutError:
                return Answer(failure="timeout")
            except dns_error.DNSError as exc:
                code = exc.args[0] if exc.args else None
                return Answer(failure=_FAILURES.get(code, f"dns error {code}"))
            except Exception as exc:  # a broken answer or a bad name must not kill the job that asked
                return Answer(failure=f"dns error: {exc}")
        wanted = aiodns.query_type_map[qtype]
        values = []
        for record in result.answer:
            if record.type != wanted:
                continue  # CNAMEs on the way are not the answer
            data = record.data
            if qtype == "TXT":
                values.append(data.data.decode("utf-8", errors="replace"))
            elif qtype == "PTR":
                values.append(data.dname.rstrip(".").lower())
            else:
                values.append(data.addr)
        if not values:
            return Answer(failure="nodata")
        return Answer(values=tuple(sorted(values)))


def reverse_name(address: str) -> str:
    """The PTR name of an IP: 10.2.0.192.in-addr.arpa, or the nibble form for IPv6."""
    return ipaddress.ip_address(address).reverse_pointer


def blocklist_name(address: str, zone: str) -> str:
    """The name a DNSBL answers for an IP: reversed octets (nibbles for IPv6) under the list's zone."""
    reverse = ipaddress.ip_address(address).reverse_pointer
    return reverse.rsplit(".", 2)[0] + "." + zone
