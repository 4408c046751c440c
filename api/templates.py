"""Templates: create, list, read, edit (new version), delete, select by the fallback chain, render, preview."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import MediaType, Response, delete, get, post, put
from litestar.params import JSONBody, QueryParameter

from api.deps import Caller, Config, Db, RedisClient, TenantId, id_param
from engine import checks, templates
from engine.checks import TemplateCheck
from engine.languages import direction
from engine.layout import Layout
from engine.settings import Settings
from engine.templates import (
    PAGE_MAX,
    LibraryGroup,
    RenderedTemplate,
    SelectedTemplate,
    Template,
    TemplateCreate,
    TemplatePage,
    TemplateStep,
    TemplateUpdate,
    TemplateVersion,
)

TemplateId = id_param("template")
PositiveId = Annotated[int, msgspec.Meta(gt=0, le=2**62)]


class SelectRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    tenant_id: Annotated[int, msgspec.Meta(gt=0, examples=[1])]
    language: Annotated[str, msgspec.Meta(max_length=35, examples=["fr"],
                                          description="any tag; one outside the nine falls back to en")] | None = None
    category: Annotated[str, msgspec.Meta(max_length=100, examples=["avocat"])] | None = None


class RenderRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Render for explicit variables, for one of the tenant's contacts, or both (variables win)."""

    tenant_id: Annotated[int, msgspec.Meta(gt=0, examples=[1])]
    template_id: PositiveId
    variables: Annotated[dict[str, Any], msgspec.Meta(examples=[{"firstName": "Zoé", "company": "Cabinet Martin"}])] = {}
    contact_id: PositiveId | None = None
    version: Annotated[int, msgspec.Meta(gt=0, description="default: the current version")] | None = None


def preview_unsubscribe(settings: Settings) -> str:
    """Renders outside a campaign carry a placeholder link; real tokens are minted per send."""
    return settings.public_url.rstrip("/") + "/u/preview"


@post("/templates", operation_id="createTemplate", summary="Create a template", tags=["templates"],
      description="Jinja2 (sandboxed, strict) or the seed's `{firstName}` placeholders. Names need not be unique: "
                  "on one selection rung the newest template wins. Injection attempts and syntax errors answer 422 "
                  "naming the field; a subject with CR/LF 400; an oversized body 413. `body_text` absent: derived "
                  "from the HTML. `variables` absent: the variables the template uses.")
async def create_template(data: JSONBody[TemplateCreate], db: Db, caller: Caller) -> Template:
    caller.scope(data.tenant_id)
    return await templates.create_template(db, data)


@get("/templates/{tenant_id:int}", operation_id="listTemplates", summary="List templates", tags=["templates"],
     description="Keyset pages in id order: pass `next_cursor` back as `cursor`. Deleted templates are not listed.")
async def list_templates(
    tenant_id: TenantId, db: Db, caller: Caller,
    language: Annotated[str | None, QueryParameter(max_length=35)] = None,
    category: Annotated[str | None, QueryParameter(max_length=100)] = None,
    active: Annotated[bool | None, QueryParameter()] = None,
    cursor: Annotated[str | None, QueryParameter(max_length=20)] = None,
    limit: Annotated[int, QueryParameter(ge=1, le=PAGE_MAX)] = 50,
    step: Annotated[TemplateStep | None, QueryParameter(description="opening, follow_up_1 or follow_up_2")] = None,
) -> TemplatePage:
    return await templates.list_templates(db, caller.scope(tenant_id), language=language, category=category,
                                          active=active, cursor=cursor, limit=limit, step=step)


@get("/templates/{tenant_id:int}/library", operation_id="listTemplateLibrary", summary="The template library",
     tags=["templates"],
     description="The tenant's templates grouped by category, then step role (opening, follow_up_1, "
                 "follow_up_2), each group with its languages; general templates and one-off messages come last.")
async def list_library(tenant_id: TenantId, db: Db, caller: Caller,
                       category: Annotated[str | None, QueryParameter(max_length=100)] = None) -> list[LibraryGroup]:
    return await templates.list_library(db, caller.scope(tenant_id), category)


@get("/templates/{tenant_id:int}/{template_id:int}", operation_id="getTemplate", summary="Get a template",
     tags=["templates"], description="The current version; `body_text` null means derived from the HTML.")
async def get_template(tenant_id: TenantId, template_id: TemplateId, db: Db, caller: Caller) -> Template:
    return await templates.get_template(db, caller.scope(tenant_id), template_id)


@put("/templates/{tenant_id:int}/{template_id:int}", operation_id="updateTemplate", summary="Change a template",
     tags=["templates"],
     description="Absent fields are kept. A change to language, subject, bodies or variables makes a new version "
                 "(the previous stays readable under /versions, and sends name the version they used); name, "
                 "category and active change in place. Every process stops using the old version at once.")
async def update_template(tenant_id: TenantId, template_id: TemplateId, data: JSONBody[TemplateUpdate], db: Db,
                          caller: Caller, redis: RedisClient, settings: Config) -> Template:
    updated = await templates.update_template(db, caller.scope(tenant_id), template_id, data)
    await templates.publish_invalidation(redis, settings.redis_namespace, template_id)
    return updated


@delete("/templates/{tenant_id:int}/{template_id:int}", operation_id="deleteTemplate", summary="Delete a template",
        tags=["templates"],
        description="Gone from listings and selection; its versions stay for the sends that used them.")
async def delete_template(tenant_id: TenantId, template_id: TemplateId, db: Db, caller: Caller,
                          redis: RedisClient, settings: Config) -> None:
    await templates.delete_template(db, caller.scope(tenant_id), template_id)
    await templates.publish_invalidation(redis, settings.redis_namespace, template_id)


@get("/templates/{tenant_id:int}/{template_id:int}/versions", operation_id="listTemplateVersions",
     summary="A template's versions", tags=["templates"], description="Every version, newest (current) first.")
async def list_versions(tenant_id: TenantId, template_id: TemplateId, db: Db, caller: Caller) -> list[TemplateVersion]:
    return await templates.list_versions(db, caller.scope(tenant_id), template_id)


@post("/templates/select", operation_id="selectTemplate", summary="Choose a template", tags=["templates"],
      status_code=200,
      description="The fallback chain: language+category, language general, en+category, en general. `matched` "
                  "names the rung. 404 says what was looked for when no rung matches.")
async def select_template(data: JSONBody[SelectRequest], db: Db, caller: Caller) -> SelectedTemplate:
    found, _ = await templates.select_template(db, caller.scope(data.tenant_id), data.language, data.category)
    return found


@post("/templates/render", operation_id="renderTemplate", summary="Render a template", tags=["templates"],
      status_code=200,
      description="Subject, HTML (inside the layout) and text part, as a campaign would send them. A variable the "
                  "template uses and the input lacks answers 422 naming it, never an empty string.")
async def render_template(data: JSONBody[RenderRequest], db: Db, caller: Caller, settings: Config) -> RenderedTemplate:
    return await templates.render_template(db, caller.scope(data.tenant_id), data.template_id,
                                           unsubscribe_url=preview_unsubscribe(settings), variables=data.variables,
                                           contact_id=data.contact_id, version=data.version)


@get("/templates/{tenant_id:int}/{template_id:int}/preview", operation_id="previewTemplate",
     summary="Preview a template", tags=["templates"], media_type=MediaType.HTML,
     description="The rendered HTML as a page: for one of the tenant's contacts, or sample values without one.")
async def preview_template(
    tenant_id: TenantId, template_id: TemplateId, db: Db, caller: Caller, settings: Config,
    contact_id: Annotated[int | None, QueryParameter(gt=0, le=2**62)] = None,
) -> Response[str]:
    rendered = await templates.render_template(db, caller.scope(tenant_id), template_id,
                                               unsubscribe_url=preview_unsubscribe(settings),
                                               contact_id=contact_id, sample=contact_id is None)
    return Response(rendered.html, media_type=MediaType.HTML,
                    headers={"Content-Language": rendered.language, "X-Text-Direction": direction(rendered.language),
                             "X-Template-Version": str(rendered.version),
                             # the page is the email: no scripts, no requests except its images
                             "Content-Security-Policy": "default-src 'none'; img-src * data:; style-src 'unsafe-inline'"})


@post("/templates/{tenant_id:int}/{template_id:int}/check", operation_id="checkTemplate",
      summary="Check a template against mail clients and a spam filter", tags=["templates"], status_code=200,
      description="The current version built as a campaign sends it (a sample contact, the tenant's sender "
                  "identity, the template's layout or `layout`), then checked as the library's own templates "
                  "are: HTML and CSS against the caniemail data for Gmail, Outlook, Apple Mail and Yahoo (features "
                  "the layout itself uses are covered by its named fallbacks), SpamAssassin's local rules (the "
                  "limit is 2.0; the report comes back when it is reached), Gmail's 102 KB clipping, absolute "
                  "links and documented variables. `error` findings fail the check. A tool that is not "
                  "installed on this server gives a `not run` warning instead.")
async def check_template(
    tenant_id: TenantId, template_id: TemplateId, db: Db, caller: Caller,
    layout: Annotated[Layout | None, QueryParameter(description="personal or branded; default: the template's")] = None,
) -> TemplateCheck:
    return await checks.check_template(db, caller.scope(tenant_id), template_id, layout=layout)


ROUTES = [create_template, list_templates, list_library, get_template, update_template, delete_template, list_versions,
          select_template, render_template, preview_template, check_template]
