"""MailWizz client against a real local MailWizz stand-in (tests/fake_mailwizz.py)."""

from __future__ import annotations

import socket
import time
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest

import engine.mailwizz.client
from engine.errors import Invalid, Unavailable
from engine.mailwizz.client import (
    CampaignIn,
    CampaignStatus,
    MailWizzAuthError,
    MailWizzClient,
    MailWizzNotFound,
    MailWizzUnavailable,
    MailWizzValidationError,
    PushOutcome,
    RetryPolicy,
    SubscriberIn,
)
from engine.mailwizz.wire import http_build_query
from tests.fake_mailwizz import FakeMailWizz

FAST = RetryPolicy(first_delay=0.001, max_delay=0.01, jitter=0.0, max_retry_after=60.0)


class Sleeps(list):
    """Records the delays the client asked for instead of waiting them out."""

    async def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
async def fake():
    async with FakeMailWizz(api_key="pub-key") as server:
        yield server


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
async def client(fake: FakeMailWizz, sleeps: Sleeps):
    async with MailWizzClient(fake.base_url, "pub-key", retry=FAST, max_retries=3, sleep=sleeps) as mw:
        yield mw


async def new_list(client: MailWizzClient, name: str = "tenant-1") -> str:
    return await client.create_list(name, from_name="Sender", from_email="news@sender.example",
                                    reply_to="reply@sender.example", subject="Hello")


def test_http_build_query_matches_php() -> None:
    # PHP: http_build_query(['b' => 'x y~', 'a' => ['n' => 1, 't' => [1, null, true]]])
    assert http_build_query({"b": "x y~", "a": {"n": 1, "t": [1, None, True]}}) == (
        "b=x+y%7E&a%5Bn%5D=1&a%5Bt%5D%5B0%5D=1&a%5Bt%5D%5B2%5D=1")


async def test_lists_and_custom_fields(client: MailWizzClient, fake: FakeMailWizz) -> None:
    uids = [await new_list(client, f"list-{i}") for i in range(12)]
    assert [ml.uid for ml in await client.all_lists(per_page=10)] == uids   # two pages
    assert (await client.get_list(uids[3])).name == "list-3"
    fields = await client.ensure_fields(uids[0])
    assert {"EMAIL", "LANGUAGE", "CATEGORY", "TAGS"} <= set(fields)
    assert all(f.field_id for f in fields.values())
    again = await client.ensure_fields(uids[0])   # idempotent: nothing created twice
    assert again == fields
    assert sum(1 for m, p in fake.state.requests if m == "POST" and p.endswith("/fields")) == 3
    with pytest.raises(MailWizzNotFound):
        await client.get_list("nosuchlist")


async def test_create_subscriber_with_fields(client: MailWizzClient, fake: FakeMailWizz) -> None:
    list_uid = await new_list(client)
    await client.ensure_fields(list_uid)
    push = await client.create_subscriber(list_uid, SubscriberIn(
        email="ana@shop.example", fields={"FNAME": "Ana", "LANGUAGE": "pt", "TAGS": "seo,b2b"}))
    assert push.outcome is PushOutcome.CREATED and push.uid
    stored = fake.state.lists[list_uid].subscribers[push.uid]
    assert stored.email == "ana@shop.example" and stored.status == "confirmed"
    assert stored.fields == {"FNAME": "Ana", "LANGUAGE": "pt", "TAGS": "seo,b2b"}
    found = await client.find_subscriber(list_uid, "ana@shop.example")
    assert found is not None and found.uid == push.uid
    assert await client.find_subscriber(list_uid, "nobody@shop.example") is None


async def test_duplicate_409_is_already_there(client: MailWizzClient, fake: FakeMailWizz) -> None:
    list_uid = await new_list(client)
    first = await client.create_subscriber(list_uid, SubscriberIn(email="bo@shop.example"))
    second = await client.create_subscriber(list_uid, SubscriberIn(email="bo@shop.example"))
    assert second.outcome is PushOutcome.EXISTS and second.uid == first.uid
    assert len(fake.state.lists[list_uid].subscribers) == 1
    fake.state.blacklist.add("spam@shop.example")
    blocked = await client.create_subscriber(list_uid, SubscriberIn(email="spam@shop.example"))
    assert blocked.outcome is PushOutcome.BLACKLISTED and blocked.uid == ""


async def test_422_names_the_field(client: MailWizzClient) -> None:
    list_uid = await new_list(client)
    with pytest.raises(MailWizzValidationError) as err:
        await client.create_subscriber(list_uid, SubscriberIn(email="not-an-email"))
    assert set(err.value.fields) == {"EMAIL"} and err.value.field == "EMAIL"
    assert isinstance(err.value, Invalid) and err.value.status == 422
    with pytest.raises(MailWizzValidationError) as err:
        await client.create_campaign(CampaignIn(name="c", list_uid=list_uid, from_name="S", from_email="",
                                                reply_to="r@sender.example", subject="", html="<p>x</p>",
                                                send_at=datetime(2030, 1, 1)))
    assert {"from_email", "subject"} <= set(err.value.fields)


async def test_429_then_success_is_retried(client: MailWizzClient, fake: FakeMailWizz, sleeps: Sleeps) -> None:
    list_uid = await new_list(client)
    fake.fail_next(2, status=429, retry_after="7")
    push = await client.create_subscriber(list_uid, SubscriberIn(email="cy@shop.example"))
    assert push.outcome is PushOutcome.CREATED
    assert sleeps == [7.0, 7.0]            # Retry-After honoured, not the backoff table
    fake.fail_next(1, status=503)
    assert (await client.get_list(list_uid)).uid == list_uid
    assert len(sleeps) == 3 and sleeps[2] == pytest.approx(FAST.first_delay)


async def test_503_exhausted_is_unavailable(client: MailWizzClient, fake: FakeMailWizz, sleeps: Sleeps) -> None:
    list_uid = await new_list(client)
    before = len(fake.state.requests)
    fake.fail_next(10, status=503)
    with pytest.raises(MailWizzUnavailable) as err:
        await client.create_subscriber(list_uid, SubscriberIn(email="di@shop.example"))
    assert err.value.status == 503 and isinstance(err.value, Unavailable)
    assert len(fake.state.requests) - before == 4          # 1 try + max_retries=3
    assert sleeps == pytest.approx([0.001, 0.002, 0.004])  # exponential
    assert fake.state.lists[list_uid].subscribers == {}


async def test_retry_after_beyond_policy_gives_up_at_once(client: MailWizzClient, fake: FakeMailWizz,
                                                          sleeps: Sleeps) -> None:
    fake.fail_next(5, status=429, retry_after="3600")
    with pytest.raises(MailWizzUnavailable) as err:
        await client.all_lists()
    assert err.value.retry_after == pytest.approx(3600) and sleeps == []
    assert len(fake.state.failures) == 4


async def test_connection_refused_is_retried_then_unavailable(sleeps: Sleeps) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]          # bound but not listening: connections are refused
        async with MailWizzClient(f"http://127.0.0.1:{port}/api", "k", retry=FAST, max_retries=2,
                                  sleep=sleeps) as mw:
            with pytest.raises(MailWizzUnavailable):
                await mw.create_template("t", "<p>x</p>")    # a POST, retried: it never left
    assert len(sleeps) == 2


async def test_bulk_create_500_with_custom_fields(client: MailWizzClient, fake: FakeMailWizz) -> None:
    list_uid = await new_list(client)
    await client.ensure_fields(list_uid)
    old = await client.create_subscriber(list_uid, SubscriberIn(email="c7@shop.example"))
    subs = [SubscriberIn(email=f"c{i}@shop.example",
                         fields={"LANGUAGE": ["fr", "en", "ar"][i % 3], "CATEGORY": "shop", "TAGS": f"t{i}"})
            for i in range(500)] + [SubscriberIn(email="broken")]
    pushes = await client.create_subscribers(list_uid, subs)
    assert [p.email for p in pushes] == [s.email for s in subs]
    outcomes = [p.outcome for p in pushes]
    assert outcomes.count(PushOutcome.CREATED) == 499
    assert pushes[7].outcome is PushOutcome.EXISTS and pushes[7].uid == old.uid
    assert pushes[-1].outcome is PushOutcome.REJECTED and "email" in pushes[-1].error.lower()
    stored = fake.state.lists[list_uid]
    assert len(stored.subscribers) == 500
    assert stored.subscribers[pushes[42].uid].fields == {"LANGUAGE": "fr", "CATEGORY": "shop", "TAGS": "t42"}
    assert sum(1 for _, p in fake.state.requests if p.endswith("/bulk")) == 6     # 501 in chunks of 100


async def test_bulk_falls_back_to_single_creates(client: MailWizzClient, fake: FakeMailWizz) -> None:
    list_uid = await new_list(client)
    fake.state.bulk_supported = False     # a server older than 1.8.1
    pushes = await client.create_subscribers(list_uid, [SubscriberIn(email=f"e{i}@shop.example") for i in range(20)])
    assert {p.outcome for p in pushes} == {PushOutcome.CREATED}
    assert len(fake.state.lists[list_uid].subscribers) == 20
    with pytest.raises(MailWizzNotFound):
        await client.create_subscribers("nosuchlist", [SubscriberIn(email="x@shop.example")])


async def test_campaign_with_language_segment_polls_to_sent(client: MailWizzClient, fake: FakeMailWizz) -> None:
    list_uid = await new_list(client)
    fields = await client.ensure_fields(list_uid)
    await client.create_subscribers(list_uid, [
        SubscriberIn(email=f"f{i}@shop.example", fields={"LANGUAGE": "fr" if i < 3 else "de"}) for i in range(5)])
    segment_uid = await client.create_language_segment(list_uid, "fr", fields["LANGUAGE"])
    html = "<p>Bonjour {FNAME} — café ~ 100%</p>"
    template_uid = await client.create_template("fr-offer", html)
    assert fake.state.templates[template_uid]["content"] == html      # base64 on the wire, decoded by server
    campaign_uid = await client.create_campaign(CampaignIn(
        name="offer-fr", list_uid=list_uid, segment_uid=segment_uid, template_uid=template_uid,
        from_name="Sender", from_email="news@sender.example", reply_to="reply@sender.example",
        subject="Offre", send_at=datetime(2030, 5, 1, 8, 0, tzinfo=UTC), status=CampaignStatus.DRAFT))
    form = fake.state.campaigns[campaign_uid].form
    assert form["send_at"] == "2030-05-01 08:00:00" and form["segment_uid"] == segment_uid
    seen = []
    for _ in range(10):
        campaign = await client.get_campaign(campaign_uid)
        seen.append(campaign.status)
        if campaign.status is CampaignStatus.SENT:
            break
    assert seen == [CampaignStatus.PENDING_SENDING, CampaignStatus.SENDING, CampaignStatus.SENT]
    assert campaign.segment_uid == segment_uid and campaign.list_uid == list_uid
    stats = await client.campaign_stats(campaign_uid)
    assert stats.status is CampaignStatus.SENT
    assert (stats.subscribers_count, stats.delivery_success_count) == (3, 3)   # only the fr segment


async def test_campaign_inline_html_pause_resume_and_404(client: MailWizzClient, fake: FakeMailWizz) -> None:
    list_uid = await new_list(client)
    async with MailWizzClient(fake.base_url, "pub-key", customer_timezone="Europe/Paris") as paris:
        campaign_uid = await paris.create_campaign(CampaignIn(
            name="inline", list_uid=list_uid, from_name="S", from_email="news@sender.example",
            reply_to="reply@sender.example", subject="Hi", html="<b>hi</b>",
            send_at=datetime(2030, 1, 1, 8, 0, tzinfo=UTC)))
    stored = fake.state.campaigns[campaign_uid]
    assert stored.html == "<b>hi</b>" and stored.form["send_at"] == "2030-01-01 09:00:00"   # customer tz
    assert await client.pause_campaign(campaign_uid) is CampaignStatus.PAUSED
    assert await client.pause_campaign(campaign_uid) is CampaignStatus.PAUSED     # not toggled back
    assert await client.resume_campaign(campaign_uid) is not CampaignStatus.PAUSED
    with pytest.raises(MailWizzNotFound):
        await client.get_campaign("nosuchcampaign")


async def test_unsubscribe_propagated(client: MailWizzClient, fake: FakeMailWizz) -> None:
    first, second = await new_list(client, "a"), await new_list(client, "b")
    push = await client.create_subscriber(first, SubscriberIn(email="gi@shop.example"))
    await client.create_subscriber(second, SubscriberIn(email="gi@shop.example"))
    await client.unsubscribe(first, push.uid)
    assert fake.state.lists[first].subscribers[push.uid].status == "unsubscribed"
    assert fake.state.lists[second].by_email("gi@shop.example").status == "confirmed"
    await client.unsubscribe_everywhere("gi@shop.example")
    assert fake.state.lists[second].by_email("gi@shop.example").status == "unsubscribed"
    await client.update_subscriber(first, push.uid, SubscriberIn(email="gi@shop.example", fields={"FNAME": "Gi"}))
    assert fake.state.lists[first].subscribers[push.uid].fields["FNAME"] == "Gi"
    with pytest.raises(MailWizzNotFound):
        await client.unsubscribe(first, "nosuchsubscriber")


@pytest.mark.parametrize("status", [401, 400])
async def test_bad_key_is_auth_error(status: int, sleeps: Sleeps) -> None:
    async with FakeMailWizz(api_key="right", auth_error_status=status) as fake:
        async with MailWizzClient(fake.base_url, "wrong", retry=FAST, sleep=sleeps) as mw:
            with pytest.raises(MailWizzAuthError) as err:
                await mw.all_lists()
    assert err.value.status == status and sleeps == []     # never retried


async def test_v1_signature_accepted_and_wrong_one_refused(sleeps: Sleeps, monkeypatch) -> None:
    async with FakeMailWizz(api_key="pub-1", private_key="priv-1", api_version=1) as fake:
        async with MailWizzClient(fake.base_url, "pub-1", "priv-1", api_version=1, sleep=sleeps) as mw:
            list_uid = await new_list(mw)                                   # POST, nested form
            await mw.ensure_fields(list_uid)
            push = await mw.create_subscriber(list_uid, SubscriberIn(
                email="ha+x@shop.example", fields={"LANGUAGE": "zh", "TAGS": "a b~c&d"}))
            assert push.outcome is PushOutcome.CREATED
            assert (await mw.find_subscriber(list_uid, "ha+x@shop.example")).uid == push.uid   # GET + query
            await mw.unsubscribe(list_uid, push.uid)                         # PUT, empty body
            assert len(await mw.all_lists(per_page=10)) == 1
        async with MailWizzClient(fake.base_url, "pub-1", "not-the-key", api_version=1, sleep=sleeps) as bad:
            with pytest.raises(MailWizzAuthError) as err:
                await bad.get_list(list_uid)
        assert "signature" in err.value.message.lower()
        # A signature older than the server's 900 s window is refused even when it is right.
        monkeypatch.setattr(engine.mailwizz.client, "time", SimpleNamespace(time=lambda: time.time() - 1000))
        async with MailWizzClient(fake.base_url, "pub-1", "priv-1", api_version=1, sleep=sleeps) as late:
            with pytest.raises(MailWizzAuthError) as err:
                await late.get_list(list_uid)
        assert "timestamp" in err.value.message.lower()
    with pytest.raises(ValueError):
        MailWizzClient("http://127.0.0.1:1/api", "pub-1", api_version=1)
