"""A small loopback DNS server for tests: answers MX/A/AAAA/TXT/PTR from a dict and fails on request."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Literal

from dnslib import AAAA, MX, PTR, QTYPE, RCODE, RR, TXT, A, DNSRecord

Failure = Literal["servfail", "refused", "timeout", "malformed"]

# Record types the zone dict understands, with the dnslib rdata class that encodes each.
_RDATA = {
    "A": lambda value: A(value),
    "AAAA": lambda value: AAAA(value),
    # MX values are (preference, exchange); (0, ".") is a null MX (RFC 7505).
    "MX": lambda value: MX(value[1], value[0]),
    # TXT values are one string, or a list of strings making one record; a string past 255 octets is
    # split the way DNS hosts publish a 2048-bit DKIM key (RFC 1035 §3.3.14: at most 255 per string).
    "TXT": lambda value: TXT([value[i:i + 255] for i in range(0, len(value), 255)] if isinstance(value, str)
                             else list(value)),
    "PTR": lambda value: PTR(value),
}


def _key(name: str) -> str:
    """Names compare case-insensitively and without the trailing root dot."""
    return str(name).rstrip(".").lower()


class DnsServer:
    """UDP DNS server on 127.0.0.1 answering from `zones`; use as `async with DnsServer(zones) as dns:`.

    zones: {"mx.example": {"MX": [(10, "mx1.mx.example")], "A": ["192.0.2.1"], "TXT": ["v=spf1 -all"]}}.
    A name absent from `zones` gets NXDOMAIN; a present name without the asked type gets an empty
    NOERROR answer (NODATA). `failures[name]` makes that name answer SERVFAIL / REFUSED, a malformed packet, or not at all.
    `queries[name]` counts every query received for a name, `queries_by_type[(name, "MX")]` per type.
    """

    def __init__(self, zones: dict[str, dict[str, list]] | None = None, *, ttl: int = 300) -> None:
        self.zones = {_key(name): records for name, records in (zones or {}).items()}
        self.failures: dict[str, Failure] = {}
        self.ttl = ttl
        self.queries: Counter[str] = Counter()
        self.queries_by_type: Counter[tuple[str, str]] = Counter()
        self.host = "127.0.0.1"
        self.port = 0
        self._transport: asyncio.DatagramTransport | None = None

    @property
    def address(self) -> str:
        """The `host:port` form that `EMAIL_ENGINE_DNS_SERVERS` takes."""
        return f"{self.host}:{self.port}"

    def fail(self, name: str, mode: Failure) -> None:
        """Make `name` fail from now on."""
        self.failures[_key(name)] = mode

    def answer(self, packet: bytes) -> bytes | None:
        """Build the reply to one query packet; None means stay silent (a timeout for the client)."""
        request = DNSRecord.parse(packet)
        reply = request.reply()  # sets QR, AA and RD, copies id and question
        qname = _key(request.q.qname)
        qtype = QTYPE.get(request.q.qtype)
        self.queries[qname] += 1
        self.queries_by_type[(qname, qtype)] += 1
        failure = self.failures.get(qname)
        if failure == "timeout":
            return None
        if failure == "malformed":
            return reply.pack()[:7]  # a header cut short: no resolver can parse it
        if failure is not None:
            reply.header.rcode = RCODE.SERVFAIL if failure == "servfail" else RCODE.REFUSED
            return reply.pack()
        records = self.zones.get(qname)
        if records is None:
            reply.header.rcode = RCODE.NXDOMAIN
            return reply.pack()
        make = _RDATA.get(qtype)
        for value in records.get(qtype, []) if make else []:
            reply.add_answer(RR(qname + ".", request.q.qtype, rdata=make(value), ttl=self.ttl))
        return reply.pack()

    async def __aenter__(self) -> DnsServer:
        loop = asyncio.get_running_loop()
        server = self

        class _Protocol(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                reply = server.answer(data)
                if reply is not None and server._transport is not None:
                    server._transport.sendto(reply, addr)

        self._transport, _ = await loop.create_datagram_endpoint(_Protocol, local_addr=(self.host, 0))
        self.port = self._transport.get_extra_info("sockname")[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None
