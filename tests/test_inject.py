"""The SMTP injector against real loopback sockets (tests/smtpserver.py), and the PowerMTA stand-in."""

from __future__ import annotations

import asyncio
import datetime
import random
import ssl
from collections import Counter
from pathlib import Path

import pytest

from engine.sending.retry import MAX_ATTEMPTS, RETRY_DELAYS, next_retry_delay
from engine.sending.transport import Outcome, OutgoingMessage, SendResult
from pmta import inject
from pmta.inject import Injector
from pmta.smtp import accepted, dot_stuff, failure, parse_enhanced, parse_reply, reply_code, xtext
from pmta.standin import start_standin
from tests.faultyserver import Fault, FaultyListener
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


async def timed_send(injector: Injector, msgs: list[OutgoingMessage]) -> list[SendResult]:
    """send_many, checked to return one SendResult per message within the injector's own bound."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    results = await injector.send_many(msgs)
    elapsed = loop.time() - started
    assert elapsed < injector.bound(len(msgs)), (elapsed, injector.bound(len(msgs)))
    assert len(results) == len(msgs) and all(isinstance(r, SendResult) for r in results)
    assert all(r.text for r in results if not r.ok)
    return results


# Small timeouts keep the fault tests fast; every timed check is against bound() derived from them.
FAST = {"timeout": 0.2, "data_timeout": 0.3, "connect_timeout": 0.3, "backoff": 0.05, "backoff_cap": 0.2}


# pure helpers

@pytest.mark.parametrize(("raw", "code", "says"), [
    (b"250 2.0.0 Ok\r\n", 250, "2.0.0 Ok"),
    (b"250-first\r\n250-second\r\n250 last\r\n", 250, "first second last"),
    (b"354\r\n", 354, ""),
    (b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n", 0, "not an SMTP reply"),
    (b"\x16\x03\x01\x02\x00\x01\x00\xff\r\n", 0, "not an SMTP reply"),
    (b"", 0, "empty reply"),
    (b"250 no line end", 0, "not ended by CRLF"),
    (b"250-more to come\r\n", 0, "truncated multi-line reply"),
    (b"250-one\r\n251 two\r\n", 0, "changed its code"),
    (b"250-one\r\nnot a reply line\r\n", 0, "not an SMTP reply"),
    (b"2500 run-on\r\n", 0, "not an SMTP reply line"),
    (b"250 one\r\n250 two\r\n", 0, "continues after its last line"),
    (b"650 out of range\r\n", 0, "not an SMTP reply"),
    (b"250 " + b"x" * 5000 + b"\r\n", 0, "over-long"),
])
def test_parse_reply_gives_a_code_or_a_reason(raw, code, says):
    got_code, text = parse_reply(raw)
    assert got_code == code
    assert says in text


def test_parsing_never_raises_on_random_bytes():
    rng = random.Random(20261201)
    alphabet = b"0123456789 -\r\n2345abcHTTP\x00\xff"
    for _ in range(3000):
        size = rng.randrange(0, 40)
        raw = bytes(rng.choice(alphabet) for _ in range(size))
        code, text = parse_reply(raw)
        assert code == 0 and text or 200 <= code < 600
        assert reply_code(raw) in {0} | set(range(200, 600))
        failure(raw)  # the result for any reply, without raising
        raw = rng.randbytes(size)
        parse_reply(raw)
        failure(raw)



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


# faults: whatever the peer does, every message gets a result within bound(), and the pool recovers

HTTP_PAGE = b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/html\r\nContent-Length: 11\r\n\r\nBad Request"


async def test_non_smtp_greeting_never_hangs_and_the_pool_recovers():
    msgs = [message(i) for i in range(12)]
    async with SmtpTestServer() as backend, \
            FaultyListener(backend, Fault("greeting", HTTP_PAGE), faulty=3) as listener:
        async with Injector(listener.host, listener.port, pool_size=2, **FAST) as injector:
            first = await timed_send(injector, msgs)
            assert {r.outcome for r in first} == {Outcome.SOFT}
            assert not any(r.transmitted for r in first)
            assert "not an SMTP reply" in first[0].text
            todo, calls = msgs, 0
            while todo and calls < 30:
                await asyncio.sleep(0.1)
                results = await timed_send(injector, todo)
                calls += 1
                assert {r.outcome for r in results} <= {Outcome.SENT, Outcome.SOFT}
                assert all(not r.transmitted for r in results if not r.ok)
                todo = [m for m, r in zip(todo, results, strict=True) if not r.ok]
            assert todo == []
        assert listener.fired == 3
        assert by_rcpt(backend) == {m.rcpt_to: 1 for m in msgs}


async def test_backoff_answers_at_once_without_connecting():
    async with SmtpTestServer() as backend, \
            FaultyListener(backend, Fault("greeting", HTTP_PAGE), faulty=100) as listener:
        async with Injector(listener.host, listener.port, pool_size=2, timeout=0.2, backoff=30.0) as injector:
            await timed_send(injector, [message(i) for i in range(4)])
            tried = listener.connections
            assert 1 <= tried <= 2
            again = await timed_send(injector, [message(i) for i in range(4, 10)])
            assert listener.connections == tried                  # no connection during the backoff
            assert {r.outcome for r in again} == {Outcome.SOFT}
            assert not any(r.transmitted for r in again)


SETUP, SESSION, IDLE = "setup", "session", "idle"

FAULTS = {
    # (fault, when it strikes: before any envelope is written, in a transaction, or on an idle connection,
    #  what the first SOFT result says)
    "greeting-421": (Fault("greeting", b"421 4.3.2 too busy\r\n"), SETUP, "421 4.3.2 too busy"),
    "greeting-silence": (Fault("greeting", then="hang"), SETUP, "no complete set-up"),
    "greeting-binary": (Fault("greeting", bytes(range(256)) + b"\r\n"), SETUP, "not an SMTP reply"),
    "ehlo-421": (Fault("ehlo", b"421 4.3.2 going away\r\n"), SETUP, "EHLO: 421"),
    "ehlo-truncated-multiline": (Fault("ehlo", b"250-faulty.test\r\n250-PIPELINING\r\n"), SETUP,
                                 "truncated multi-line reply"),
    "ehlo-bad-continuation": (Fault("ehlo", b"250-faulty.test\r\n251 SIZE\r\n", then="hang"), SETUP, "changed its code"),
    "mail-garbage": (Fault("mail", b"\x00\xff garbage \xfe\r\n", then="hang"), SESSION, "not an SMTP reply"),
    "mail-over-long-line": (Fault("mail", b"250 " + b"x" * 100_000 + b"\r\n", then="hang"), SESSION, "over-long reply line"),
    "mail-long-line": (Fault("mail", b"250 " + b"x" * 5_000 + b"\r\n", then="hang"), SESSION, "over-long reply line"),
    "mail-421": (Fault("mail", b"421 4.3.2 going away\r\n"), SESSION, "421"),
    "rcpt-421": (Fault("rcpt", b"421 4.3.2 going away\r\n"), SESSION, "421"),
    "rcpt-truncated-multiline": (Fault("rcpt", b"250-2.1.5 Ok\r\n250-still going\r\n"), SESSION,
                                 "truncated multi-line reply"),
    "data-421": (Fault("data", b"421 4.3.2 going away\r\n"), SESSION, "421"),
    "data-silence": (Fault("data", then="hang"), SESSION, "timed out"),
    "close-mid-data": (Fault("middata"), SESSION, "closed by the server"),
    "dot-421": (Fault("dot", b"421 4.3.2 going away\r\n"), SESSION, "421"),
    "dot-silence": (Fault("dot", then="hang"), SESSION, "timed out"),
    "dot-garbage": (Fault("dot", b"OK THANKS\r\n"), SESSION, "not an SMTP reply"),
    "rset-421": (Fault("rset", b"421 4.3.2 going away\r\n"), SESSION, "421"),
    "noop-421": (Fault("noop", b"421 4.4.2 idle too long\r\n"), IDLE, ""),
    "starttls-refused": (Fault("starttls", b"454 4.7.0 TLS not available\r\n", then="hang"), SETUP, "STARTTLS: 454"),
    "starttls-handshake-garbage": (Fault("starttls", b"220 2.0.0 go ahead\r\n", then="hang",
                                         after=b"this is not a TLS record\r\n"), SETUP, "TLS handshake failed"),
    "starttls-handshake-closed": (Fault("starttls", b"220 2.0.0 go ahead\r\n"), SETUP, "TLS handshake failed"),
}


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelined", "lockstep"])
@pytest.mark.parametrize("name", list(FAULTS))
async def test_fault_gives_every_message_a_result_and_the_pool_recovers(name, pipelining, tmp_path):
    fault, when, says = FAULTS[name]
    if fault.step == "rset" and not pipelining:
        when = SETUP  # lock-step RSET goes before the next envelope: that message was never written
    tls = fault.step == "starttls"
    server_ctx, client_ctx = _self_signed(tmp_path) if tls else (None, None)
    # RSET only follows a failed transaction: the first message of each connection is refused.
    msgs = ([message(0, rcpt="refuse0@inbox.test"), message(1, rcpt="refuse1@inbox.test")]
            if fault.step == "rset" else []) + [message(i) for i in range(2, 10)]
    wanted = [m for m in msgs if not m.rcpt_to.startswith("refuse")]
    async with SmtpTestServer(tls_context=server_ctx, pipelining=pipelining) as backend, \
            FaultyListener(backend, fault, faulty=2, starttls=tls, pipelining=pipelining) as listener:
        async with Injector(listener.host, listener.port, pool_size=2, starttls=tls, tls_context=client_ctx,
                            idle_check=0.0 if when == IDLE else 10.0, **FAST) as injector:
            first = await timed_send(injector, msgs)
            for msg, result in zip(msgs, first, strict=True):
                if msg.rcpt_to.startswith("refuse"):
                    assert result.outcome is Outcome.HARD and result.code == 550
                else:
                    assert result.outcome in (Outcome.SENT, Outcome.SOFT)
            failed = [r for r in first if r.outcome is Outcome.SOFT]
            if when == SETUP:
                assert failed and not any(r.transmitted for r in failed)
            elif when == SESSION:
                assert any(r.transmitted for r in failed)  # the message in flight when the fault struck
            else:
                assert failed == []  # NOOP goes before a message is written: it goes out on a new connection
            if failed:
                assert says in f"{failed[0].code} {failed[0].text}"
            # Retry what came back SOFT until the listener behaves (connections after the first two).
            todo = [m for m, r in zip(msgs, first, strict=True) if r.outcome is Outcome.SOFT]
            calls = 0
            while todo and calls < 30:
                await asyncio.sleep(0.1)
                results = await timed_send(injector, todo)
                calls += 1
                todo = [m for m, r in zip(todo, results, strict=True) if r.outcome is not Outcome.SENT]
            assert todo == []
            # And it goes on working: a fresh batch (on an idle connection for the NOOP fault) is all SENT.
            later = [message(i) for i in range(10, 16)]
            assert all(r.ok for r in await timed_send(injector, later))
        assert listener.fired >= 1
        delivered = Counter(listener.accepted) + Counter(by_rcpt(backend))
        assert delivered == {m.rcpt_to: 1 for m in wanted + later}


async def test_killed_pool_tasks_are_restarted():
    async with SmtpTestServer() as server:
        async with Injector(server.host, server.port, pool_size=3, **FAST) as injector:
            assert all(r.ok for r in await timed_send(injector, [message(i) for i in range(10)]))
            victim = injector._workers[0]
            victim.cancel()
            await asyncio.gather(victim, return_exceptions=True)
            assert victim.cancelled()
            batch = [message(i) for i in range(10, 40)]
            assert all(r.ok for r in await timed_send(injector, batch))
            assert victim not in injector._workers and len(injector._workers) == 3
            # Every task killed in the middle of a call: that call still returns within its bound (what
            # the killed tasks held comes back SOFT), and the next call restarts the pool.
            middle = [message(i) for i in range(40, 49)]
            call = asyncio.ensure_future(timed_send(injector, middle))
            for _ in range(3):
                await asyncio.sleep(0)
            for task in injector._workers:
                task.cancel()
            results = await call
            assert {r.outcome for r in results} <= {Outcome.SENT, Outcome.SOFT}
            assert any(not r.ok for r in results)
            sent = {m.rcpt_to for m, r in zip(middle, results, strict=True) if r.ok}
            assert sent <= set(by_rcpt(server))
            after = [message(i) for i in range(100, 130)]
            assert all(r.ok for r in await timed_send(injector, after))
        counts = by_rcpt(server)
        assert all(counts[m.rcpt_to] == 1 for m in batch + after)
        assert set(counts.values()) == {1}


async def test_a_bug_in_a_worker_fails_only_what_it_held(monkeypatch):
    real = inject._envelope

    def envelope(session, msg):
        if msg.rcpt_to.startswith("boom"):
            raise RuntimeError("a bug")
        return real(session, msg)

    monkeypatch.setattr(inject, "_envelope", envelope)
    msgs = [message(0), message(1), message(2, rcpt="boom@inbox.test"), message(3), message(4)]
    async with SmtpTestServer() as server:
        async with Injector(server.host, server.port, pool_size=1, **FAST) as injector:
            results = await timed_send(injector, msgs)
            assert results[2].outcome is Outcome.SOFT and not results[2].transmitted
            # At most the message whose data was to go out with the broken write is lost with it.
            assert sum(not r.ok for r in results) <= 2
            assert {r.outcome for r in results} <= {Outcome.SENT, Outcome.SOFT}
            assert [w for w in injector._workers if w.done()] == []
            again = await timed_send(injector, [message(i) for i in range(5, 9)])
            assert all(r.ok for r in again)
        assert set(by_rcpt(server)) == {m.rcpt_to for m, r in zip(msgs, results, strict=True) if r.ok} | {
            f"user{i}@inbox.test" for i in range(5, 9)}


async def test_deadline_answers_what_is_left_and_late_results_are_ignored():
    # A server that greets, then answers nothing: with a watchdog far slower than the call's deadline...
    writers = []

    async def mute(reader, writer):
        writers.append(writer)
        writer.write(b"220 mute.test ESMTP\r\n250-mute.test\r\n250 PIPELINING\r\n")
        await asyncio.Event().wait()

    server = await asyncio.start_server(mute, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        async with Injector("127.0.0.1", port, pool_size=1, **FAST) as injector:
            injector._deadline = lambda n: 0.1  # ... the call's own deadline is what answers
            msgs = [message(i) for i in range(5)]
            results = await timed_send(injector, msgs)
            assert {r.outcome for r in results} == {Outcome.SOFT}
            assert all("deadline" in r.text for r in results)
            assert results[0].transmitted and not results[-1].transmitted
            await asyncio.sleep(0.5)  # the watchdog drops the connection; its late result changes nothing
            assert all("deadline" in r.text for r in results)
    finally:
        server.close()
        for writer in writers:
            writer.transport.abort()
        await server.wait_closed()
