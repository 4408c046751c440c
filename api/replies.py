"""Replies: a tenant's reply mailboxes (IMAP, passwords write-only) and the replies of a campaign."""

from __future__ import annotations

from typing import Annotated

import msgspec
from litestar import Request, delete, get, post
from litestar.params import JSONBody, QueryParameter

from api.deps import Caller, Db, TenantId, id_param
from engine import campaigns, mailboxes, replies
from engine.errors import Invalid, NotFound
from engine.mailboxes import Mailbox, MailboxDraft
from engine.replies import Reply, ReplyKind

CampaignId = id_param("campaign")
MailboxId = id_param("mailbox")
Limit = Annotated[int, QueryParameter(ge=1, le=1000, description="page size")]


class ReplyPage(msgspec.Struct, frozen=True, kw_only=True):
    items: list[Reply]
    next_cursor: int | None


class ReadResult(msgspec.Struct, frozen=True, kw_only=True):
    read: int
    stored: dict[str, int]
    error: str | None


@post("/replies/{tenant_id:int}/mailboxes", operation_id="saveReplyMailbox", summary="Add a reply mailbox",
      tags=["replies"],
      description="An IMAP mailbox the worker reads for replies (IDLE where offered, polled otherwise). The "
                  "password is stored encrypted and never returned. With `plus_addressing` and `address`, every "
                  "message's Reply-To is `local+TOKEN@domain`, which names its send row.")
async def save_mailbox(tenant_id: TenantId, data: JSONBody[MailboxDraft], db: Db, caller: Caller,
                       request: Request) -> Mailbox:
    return await mailboxes.save_mailbox(db, request.app.state.secret_key, caller.scope(tenant_id), data)


@get("/replies/{tenant_id:int}/mailboxes", operation_id="listReplyMailboxes", summary="The reply mailboxes",
     tags=["replies"], description="Without passwords; `last_error` says why the last read failed.")
async def list_mailboxes(tenant_id: TenantId, db: Db, caller: Caller) -> list[Mailbox]:
    return await mailboxes.list_mailboxes(db, caller.scope(tenant_id))


@delete("/replies/{tenant_id:int}/mailboxes/{mailbox_id:int}", operation_id="deleteReplyMailbox",
        summary="Remove a reply mailbox", tags=["replies"], description="Its replies stay.")
async def delete_mailbox(tenant_id: TenantId, mailbox_id: MailboxId, db: Db, caller: Caller) -> None:
    await mailboxes.delete_mailbox(db, caller.scope(tenant_id), mailbox_id)


@post("/replies/{tenant_id:int}/mailboxes/{mailbox_id:int}/read", operation_id="readReplyMailbox",
      summary="Read a reply mailbox now", tags=["replies"], status_code=200,
      description="One pass over what arrived since the last read; the worker does this by itself.")
async def read_mailbox(tenant_id: TenantId, mailbox_id: MailboxId, db: Db, caller: Caller,
                       request: Request) -> ReadResult:
    caller.scope(tenant_id)
    box = next((b for b in await mailboxes.stored_mailboxes(db) if b.id == mailbox_id and b.tenant_id == tenant_id),
               None)
    if box is None:
        raise NotFound(f"mailbox {mailbox_id} not found")
    result = await mailboxes.read_once(request.app.state.pool, box, request.app.state.secret_key)
    return ReadResult(read=result.read, stored=result.stored, error=result.error)


@get("/campaigns/{tenant_id:int}/{campaign_id:int}/replies", operation_id="listCampaignReplies",
     summary="A campaign's replies", tags=["replies"],
     description="Human replies, auto-replies (with the return date they name) and bounces that came back as "
                 "mail, oldest first, with the send row and step each answers and how it was matched; "
                 "`contact_id` narrows to one contact, `kind` to one kind; `next_cursor` as `after` pages on.")
async def campaign_replies(tenant_id: TenantId, campaign_id: CampaignId, db: Db, caller: Caller,
                           contact_id: Annotated[int | None, QueryParameter(gt=0)] = None,
                           kind: Annotated[str | None, QueryParameter()] = None,
                           after: Annotated[int, QueryParameter(ge=0)] = 0, limit: Limit = 100) -> ReplyPage:
    campaign = await campaigns.get_campaign(db, caller.scope(tenant_id), campaign_id)
    if kind is not None and kind not in {k.value for k in ReplyKind}:
        raise Invalid(f"kind: expected one of {[k.value for k in ReplyKind]}", field="kind")
    items = await replies.list_replies(db, tenant_id, campaign.id, contact_id=contact_id, kind=kind, after=after,
                                       limit=limit)
    return ReplyPage(items=items, next_cursor=items[-1].id if len(items) == limit else None)


ROUTES = [save_mailbox, list_mailboxes, delete_mailbox, read_mailbox, campaign_replies]
