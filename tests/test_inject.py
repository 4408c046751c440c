"""The SMTP injector against real loopback sockets (tests/smtpserver.py), and the PowerMTA stand-in."""

from __future__ import annotations

import asyncio
import datetime
import ssl
from pathlib import Path

import pytest

from engine.sending.retry import MAX_ATTEMPTS, RETRY_DELAYS, next_retry_delay
from engine.sending.transport import Outcome, OutgoingMessage
from pmta.inject import Injector
from pmta.smtp import accepted, dot_stuff, parse_enhanced, xtext
from pmta.standin import start_standin
from tests.smtpserver import SmtpTestServer


def message(i: int, *, rcpt: str | None = None, data: bytes | None = None, vmta: str = "") -> OutgoingMessage:
    body = data if data is not None else (
        b"From: <news@sender.example>\r\nTo: <user%d@inbox.test>\r\nSubject: hello %d\r\n"
        b"Message-ID: <m%d@sender.example>\r\n\r\nline one\r\n" % (i, i, i))
    return OutgoingMessage(envelope_id=f"send-{i}", mail_from="bounce@sender.example",
                           rcpt_to=rcpt or f"user{i}@inbox.test", data=body, vmta=vmta)


def by_rcpt(server: SmtpTestServer) -> dict[str, int]:
    counts: dict[str, int] = {}
    for received in server.messages:
        for rcpt in received.rcpt_tos:
            counts[rcpt] = counts.get(rcpt, 0) + 1
    return counts


# pure helpers

def test_dot_stuff_escapes_leading_dots_and_ends_with_crlf():
    assert dot_stuff(b".a\r\n.\r\nb\r\n..c") == b"..a\r\n..\r\nb\r\n...c\r\n"
    clean = b"no dots here\r\n"
    assert dot_stuff(clean) is clean


def test_accepted_keeps_the_enhanced_status_and_the_queue_id():
    postfix = accepted(b"250 2.0.0 Ok: queued as 4Xyz9\r\n")
    assert (postfix.code, postfix.enhanced, postfix.transport_id) == (250, "2.0.0", "4Xyz9")
    pmta = accepted(b"250 ok id=1abc-02\r\n")
    assert (pmta.code, pmta.enhanced, pmta.transport_id) == (250, "", "1abc-02")


def test_parse_enhanced():
    assert parse_enhanced("5.1.1 <x@y.test>: User unknown") == "5.1.1"
    assert parse_enhanced("4.7.0 try later") == "4.7.0"
    assert parse_enhanced("Ok") == ""
    assert parse_enhanced("1.2.3 not a class") == ""


def test_xtext_encodes_plus_equals_and_controls():
    assert xtext("send-42") == "send-42"
    assert xtext("a+b=c d") == "a+2Bb+3Dc+20d"


def test_retry_table_then_give_up():
    assert [next_retry_delay(n) for n in range(1, MAX_ATTEMPTS)] == list(RETRY_DELAYS)
    assert next_retry_delay(MAX_ATTEMPTS) is None
    assert list(RETRY_DELAYS) == sorted(RETRY_DELAYS)
    with pytest.raises(ValueError):
        next_retry_delay(0)


# the injector against the scripted server

@pytest.mark.parametrize("pipelining", [True, False])
async def test_many_messages_over_few_connections(pipelining):
    msgs = [message(i, vmta=f"vmta{i % 3}") for i in range(120)]
    async with SmtpTestServer(pipelining=pipelining) as server:
        async with Injector(server.host, server.port, pool_size=3) as injector:
            results = await injector.send_many(msgs)
        assert [r.outcome for r in results] == [Outcome.SENT] * 120
        assert server.connections <= 3
        assert by_rcpt(server) == {m.rcpt_to: 1 for m in msgs}
        # results come back in input order: each carries the queue id of the delivery of its own message
        delivered = {f"Q{n}": rec for n, rec in enumerate(server.messages, 1)}
        for msg, result in zip(msgs, results, strict=True):
            received = delivered[result.transport_id]
            assert received.rcpt_tos == [msg.rcpt_to]
            assert received.data == b"X-Virtual-MTA: " + msg.vmta.encode() + b"\r\n" + msg.data
        if pipelining:
            assert server.pipelined_mail > 0
        else:
            assert server.pipelined_mail == 0


async def test_envid_and_ret_sent_only_when_dsn_is_offered():
    async with SmtpTestServer(dsn=True) as with_dsn, SmtpTestServer(dsn=False) as without:
        for server in (with_dsn, without):
            async with Injector(server.host, server.port, pool_size=1) as injector:
                assert (await injector.send(message(7))).ok
        assert with_dsn.messages[0].mail_params == "RET=HDRS ENVID=send-7"
        assert without.messages[0].mail_params == ""


async def test_dot_stuffing_round_trips_the_body():
    data = b"Subject: dots\r\n\r\n.starts with a dot\r\n.\r\n..two\r\nno final crlf"
    async with SmtpTestServer() as server:
        async with Injector(server.host, server.port, pool_size=1) as injector:
            assert (await injector.send(message(1, data=data))).ok
        assert server.messages[0].data == data + b"\r\n"


async def test_451_then_250_is_soft_then_sent():
    rcpt = "greylisted@inbox.test"
    async with SmtpTestServer(rcpt_replies={rcpt: ["451 4.7.1 Greylisted, try again"]},
                              data_replies={"slow@inbox.test": ["451 4.3.0 queue full"]}) as server:
        async with Injector(server.host, server.port, pool_size=1) as injector:
            first = await injector.send_many([message(1, rcpt=rcpt), message(2, rcpt="slow@inbox.test"),
                                              message(3)])
            assert [r.outcome for r in first] == [Outcome.SOFT, Outcome.SOFT, Outcome.SENT]
            assert (first[0].code, first[0].enhanced) == (451, "4.7.1")
            assert (first[1].code, first[1].enhanced) == (451, "4.3.0")
            second = await injector.send_many([message(1, rcpt=rcpt), message(2, rcpt="slow@inbox.test")])
            assert [r.outcome for r in second] == [Outcome.SENT, Outcome.SENT]
        assert by_rcpt(server) == {rcpt: 1, "slow@inbox.test": 1, "user3@inbox.test": 1}


async def test_550_5_1_1_marks_exactly_those_recipients_hard():
    msgs = [message(i) for i in range(40)]
    unknown = {msgs[i].rcpt_to for i in (0, 7, 8, 21, 39)}
    async with SmtpTestServer(hard_bounce=unknown) as server:
        async with Injector(server.host, server.port, pool_size=2) as injector:
            results = await injector.send_many(msgs)
        hard = {m.rcpt_to for m, r in zip(msgs, results, strict=True) if r.outcome is Outcome.HARD}
        assert hard == unknown
        assert all(r.enhanced == "5.1.1" and r.code == 550 for r in results if r.outcome is Outcome.HARD)
        assert all(r.outcome is Outcome.SENT for r in results if r.outcome is not Outcome.HARD)
        assert set(by_rcpt(server)) == {m.rcpt_to for m in msgs} - unknown


@pytest.mark.parametrize("stage", ["mail", "data"])
async def test_refusal_at_mail_or_data_is_hard_and_the_session_recovers(stage):
    refusal = {"mail": {"mail_reply": "550 5.7.1 sender not allowed"},
               "data": {"data_reply": "554 5.6.0 content refused"}}[stage]
    async with SmtpTestServer(**refusal) as server:
        async with Injector(server.host, server.port, pool_size=1) as injector:
            results = await injector.send_many([message(i) for i in range(5)])
        assert {r.outcome for r in results} == {Outcome.HARD}
        assert server.messages == []
        assert server.connections == 1


@pytest.mark.parametrize("pipelining", [True, False])
async def test_dropped_connections_never_report_unaccepted_mail_as_sent(pipelining):
    msgs = [message(i) for i in range(100)]
    async with SmtpTestServer(drop_after=7, pipelining=pipelining) as server:
        async with Injector(server.host, server.port, pool_size=2) as injector:
            results = await injector.send_many(msgs)
        sent = [m.rcpt_to for m, r in zip(msgs, results, strict=True) if r.outcome is Outcome.SENT]
        counts = by_rcpt(server)
        assert server.dropped > 0
        assert sorted(sent) == sorted(counts)           # SENT exactly for what the server accepted
        assert set(counts.values()) == {1}               # and each accepted once
        assert all(r.outcome is Outcome.SOFT for r in results if r.outcome is not Outcome.SENT)
        assert server.connections > 2                    # the pool reconnected after each drop


async def test_max_messages_per_connection_reconnects():
    async with SmtpTestServer() as server:
        async with Injector(server.host, server.port, pool_size=1, max_messages_per_connection=4) as injector:
            results = await injector.send_many([message(i) for i in range(10)])
        assert all(r.ok for r in results)
        assert server.connections == 3


async def test_auth_plain_accepted_and_refused():
    async with SmtpTestServer(users={"engine": "s3cret"}) as server:
        async with Injector(server.host, server.port, pool_size=1, username="engine",
                            password="s3cret") as injector:
            assert (await injector.send(message(1))).ok
        async with Injector(server.host, server.port, pool_size=1, username="engine",
                            password="wrong") as injector:
            refused = await injector.send(message(2))
        assert refused.outcome is Outcome.SOFT and "AUTH" in refused.text
        assert by_rcpt(server) == {"user1@inbox.test": 1}


async def test_nobody_listening_is_soft_not_an_exception():
    probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()
    async with Injector("127.0.0.1", port, pool_size=1) as injector:
        results = await injector.send_many([message(1), message(2)])
    assert [r.outcome for r in results] == [Outcome.SOFT, Outcome.SOFT]


async def test_silent_server_times_out_as_soft():
    writers = []

    async def greet_then_sleep(reader, writer):
        writers.append(writer)
        writer.write(b"220 silent.test ESMTP\r\n250 never mind\r\n")  # greeting, then nothing useful

    silent = await asyncio.start_server(greet_then_sleep, "127.0.0.1", 0)
    try:
        port = silent.sockets[0].getsockname()[1]
        async with Injector("127.0.0.1", port, pool_size=1, timeout=0.5) as injector:
            result = await injector.send(message(1))
        assert result.outcome is Outcome.SOFT
    finally:
        silent.close()
        for writer in writers:
            writer.close()
        await silent.wait_closed()


def _self_signed(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server context with a fresh self-signed cert for 127.0.0.1 and a client context trusting it."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "smtp.test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert_file, key_file)
    client = ssl.create_default_context(cafile=str(cert_file))
    return server, client


async def test_starttls_then_send(tmp_path):
    server_ctx, client_ctx = _self_signed(tmp_path)
    async with SmtpTestServer(tls_context=server_ctx) as server:
        async with Injector(server.host, server.port, pool_size=1, starttls=True,
                            tls_context=client_ctx) as injector:
            results = await injector.send_many([message(1), message(2)])
        assert all(r.ok for r in results)
        assert len(server.messages) == 2


# the stand-in for `email-engine up`

async def test_standin_keeps_one_eml_per_delivery(tmp_path):
    standin = await start_standin(tmp_path / "mail", port=0)
    try:
        async with Injector(standin.host, standin.port, pool_size=2) as injector:
            results = await injector.send_many([message(i) for i in range(3)])
    finally:
        await standin.stop()
    assert all(r.ok for r in results)
    files = sorted((tmp_path / "mail").glob("*.eml"))
    assert len(files) == 3
    for i in range(3):
        [kept] = [f for f in files if f"send-{i}" in f.name]
        content = kept.read_bytes()
        assert content.startswith(b"Return-Path: <bounce@sender.example>\r\nDelivered-To: user%d@inbox.test" % i)
        assert content.endswith(message(i).data)
