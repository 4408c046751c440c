"""A local SMTP server standing in for PowerMTA on a newcomer's machine: accepts all, keeps .eml files."""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import time
from email.parser import BytesHeaderParser
from pathlib import Path

from aiosmtpd.smtp import SMTP

log = logging.getLogger(__name__)

# DSN parameters (RFC 3461) that aiosmtpd would otherwise refuse with 555; PowerMTA accepts them.
_DSN_PARAMS = ("ENVID", "RET", "NOTIFY", "ORCPT")
_UNSAFE = re.compile(r"[^A-Za-z0-9._@+-]+")


class DsnSMTP(SMTP):
    """aiosmtpd's SMTP session that also advertises PIPELINING and DSN and accepts DSN parameters."""

    mail_params: str = ""   # the MAIL FROM parameters exactly as sent (aiosmtpd upper-cases its copy)

    async def smtp_MAIL(self, arg: str | None) -> None:
        self.mail_params = (arg or "").partition(">")[2].strip()
        await super().smtp_MAIL(arg)

    def _getparams(self, params):
        result = super()._getparams(params)
        if result is not None:
            for name in _DSN_PARAMS:
                result.pop(name, None)
        return result


def advertise(responses: list[str], *, pipelining: bool = True, dsn: bool = True) -> list[str]:
    """Insert PIPELINING/DSN before the last line of aiosmtpd's EHLO reply."""
    extra = (["250-PIPELINING"] if pipelining else []) + (["250-DSN"] if dsn else [])
    return responses[:-1] + extra + responses[-1:]


def envid_of(mail_params: str) -> str:
    """The ENVID=… value of MAIL FROM parameters, xtext left as is ("" when absent)."""
    for param in mail_params.split():
        if param[:6].upper() == "ENVID=":
            return param[6:]
    return ""


class _Keeper:
    """aiosmtpd handler writing one .eml per recipient into a directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._serial = itertools.count(1)

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        return advertise(responses)

    async def handle_DATA(self, server: DsnSMTP, session, envelope):
        raw = bytes(envelope.original_content)
        headers = BytesHeaderParser().parsebytes(raw)
        label = envid_of(server.mail_params) or str(headers.get("Message-ID", "")).strip("<> ") or "no-id"
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        names = []
        for rcpt in envelope.rcpt_tos:
            name = f"{stamp}-{next(self._serial):06d}-{_UNSAFE.sub('_', label)[:80]}.eml"
            trace = f"Return-Path: <{envelope.mail_from}>\r\nDelivered-To: {rcpt}\r\n".encode()
            (self.directory / name).write_bytes(trace + raw)
            names.append(name)
        return f"250 2.0.0 Ok: queued as {names[0].removesuffix('.eml')}"


class StandIn:
    """A running stand-in server; `await stop()` ends it."""

    def __init__(self, server: asyncio.Server, directory: Path, host: str, port: int) -> None:
        self._server = server
        self.directory = directory
        self.host = host
        self.port = port

    async def stop(self) -> None:
        """Stop listening; sessions still open end when their clients hang up."""
        self._server.close()
        await self._server.wait_closed()


async def start_standin(directory: Path, host: str = "127.0.0.1", port: int = 2525) -> StandIn:
    """Listen on host:port (0 picks a free port) and keep every delivery under `directory`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    keeper = _Keeper(directory)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: DsnSMTP(keeper, hostname="pmta-standin.test"), host, port)
    port = server.sockets[0].getsockname()[1]
    log.info("PowerMTA stand-in listening on %s:%d, keeping mail in %s", host, port, directory)
    return StandIn(server, directory, host, port)


async def _serve_until_stopped(directory: Path, host: str, port: int) -> None:
    import signal

    stand = await start_standin(directory, host=host, port=port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await stand.stop()


def main(argv: list[str] | None = None) -> None:
    """`python -m pmta.standin DIR [--host H] [--port P]`: the stand-in as its own process (`up` runs it so)."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m pmta.standin", description=main.__doc__)
    p.add_argument("directory", type=Path)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=2525)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(_serve_until_stopped(args.directory, args.host, args.port))


if __name__ == "__main__":
    main()
