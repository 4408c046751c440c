"""What the OpenAPI document says beyond what Litestar derives from the handlers.

- Links, from an operation that creates something to those that use what it made: a client (or a fuzzer
  following links) reads the new id from the answer and calls the next operation with it. Each entry names the
  status whose body carries the ids, the target's parameters filled from it (runtime expressions of OpenAPI 3.1)
  and, for operations that take the tenant in their body, the part of the body filled from it.
- `additionalProperties: false` on the bodies that refuse unknown fields, so a client knows before it sends one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec
from litestar import Litestar
from litestar._openapi.schema_generation.plugins import StructSchemaPlugin
from litestar.openapi.spec import Link, Operation, Schema
from litestar.routes import HTTPRoute
from litestar.typing import FieldDefinition

if TYPE_CHECKING:
    from litestar._openapi.schema_generation import SchemaCreator


@dataclass(frozen=True)
class Follow:
    """Targets that take the same values from one answer."""

    status: str
    targets: tuple[str, ...]
    parameters: dict[str, str] = field(default_factory=dict)  # target parameter -> runtime expression
    body: dict[str, Any] | None = None  # merged into the target's body


def _ids(noun: str, at: str = "") -> dict[str, str]:
    return {"tenant_id": f"$response.body#{at}/tenant_id", f"{noun}_id": f"$response.body#{at}/id"}


NEW_TENANT = "$response.body#/id"

# A new campaign has no sequence (getCampaignSequence answers 404 until one is set), so it links to setting one.
# Operations that reach outside the engine (an IMAP server, a webhook URL, DNS resolvers) are left out: a link
# would make each run depend on the network.
LINKS: dict[str, tuple[Follow, ...]] = {
    "createTenant": (
        Follow("201", ("getTenant", "listApiKeys", "createApiKey", "getSendingPolicy", "patchSendingPolicy",
                       "getTenantSender", "putTenantSender", "listContacts", "listCampaigns", "listTemplates",
                       "listIps", "listDomains", "listSuppressions", "listDataSources", "createDataSource",
                       "listEventEndpoints", "createEventEndpoint", "listAudit", "importContacts"),
               {"tenant_id": NEW_TENANT}),
        Follow("201", ("createCampaign", "createTemplate", "createIp", "createDomain", "addSuppressions"),
               body={"tenant_id": NEW_TENANT}),
        Follow("201", ("ingestContacts",), body={"contacts": [{"tenant_id": NEW_TENANT}]}),
    ),
    "createApiKey": (Follow("201", ("revokeApiKey",), {"tenant_id": "$response.body#/tenant_id",
                                                       "key_id": "$response.body#/id"}),),
    "ingestContacts": (
        Follow("200", ("getContact", "patchContact", "listContactEvents", "eraseContact"),
               {"tenant_id": "$request.body#/contacts/0/tenant_id", "contact_id": "$response.body#/results/0/id"}),
        Follow("200", ("listContacts",), {"tenant_id": "$request.body#/contacts/0/tenant_id"}),
    ),
    "importContacts": (Follow("202", ("getImport",), {"import_id": "$response.body#/id"}),),
    "createCampaign": (
        Follow("201", ("getCampaign", "updateCampaign", "deleteCampaign", "startCampaign", "pauseCampaign",
                       "resumeCampaign", "cancelCampaign", "campaignAudienceCount", "campaignStats",
                       "listCampaignSends", "getCampaignHealth", "setCampaignSequence",
                       "campaignVariants", "listCampaignReplies", "getCampaignSender", "putCampaignSender"),
               _ids("campaign")),
        Follow("201", ("listCampaigns",), {"tenant_id": "$response.body#/tenant_id"}),
    ),
    "createTemplate": (
        Follow("201", ("getTemplate", "updateTemplate", "deleteTemplate", "listTemplateVersions", "previewTemplate",
                       "checkTemplate"), _ids("template")),
        Follow("201", ("listTemplates",), {"tenant_id": "$response.body#/tenant_id"}),
    ),
    "createIp": (
        Follow("201", ("getIp", "updateIp", "pauseIp", "resumeIp", "retireIp", "getIpHealth", "getWarmupPlan"),
               _ids("ip")),
        Follow("201", ("listIps", "listWarmupPlans"), {"tenant_id": "$response.body#/tenant_id"}),
    ),
    "createDomain": (
        Follow("201", ("getDomain", "updateDomain", "deleteDomain", "rotateDomainDkim", "getDomainHealth",
                       "setDomainReturnPath"), _ids("domain")),
        Follow("201", ("listDomains", "listDnsRecords"), {"tenant_id": "$response.body#/tenant_id"}),
    ),
    "addSuppressions": (
        Follow("200", ("removeSuppression", "checkSuppression"),
               {"tenant_id": "$request.body#/tenant_id", "email": "$request.body#/emails/0"}),
        Follow("200", ("listSuppressions",), {"tenant_id": "$request.body#/tenant_id"}),
    ),
    "createDataSource": (
        Follow("201", ("rotateDataSourceSecret", "setDataSourceMapping"), _ids("source", "/source")),
        Follow("201", ("receiveWebhook",), {"source_id": "$response.body#/source/id"}),
    ),
    "createEventEndpoint": (
        Follow("201", ("getEventEndpoint", "updateEventEndpoint", "deleteEventEndpoint", "listEventDeliveries"),
               _ids("endpoint", "/endpoint")),
    ),
}


@dataclass
class LinkedOperation(Operation):
    """An operation whose answers carry the links of LINKS."""

    def __post_init__(self) -> None:
        for follow in LINKS.get(self.operation_id or "", ()):
            response = (self.responses or {})[follow.status]
            links = response.links = response.links or {}
            for target in follow.targets:
                links[target] = Link(operation_id=target, parameters=follow.parameters or None,
                                     request_body=follow.body)


def document_links(app: Litestar) -> None:
    """Give each operation named in LINKS its links; a name that is no operation is a mistake of this table."""
    handlers = {handler.operation_id: handler for route in app.routes if isinstance(route, HTTPRoute)
                for handler in route.route_handlers}
    named = {target for follows in LINKS.values() for follow in follows for target in follow.targets}
    if missing := sorted((named | set(LINKS)) - set(handlers)):
        raise ValueError(f"links name operations that do not exist: {missing}")
    for operation_id in LINKS:
        handlers[operation_id].operation_class = LinkedOperation


class ClosedStructSchemaPlugin(StructSchemaPlugin):
    """Litestar's schema of a msgspec Struct, closed (`additionalProperties: false`) when the Struct is
    `forbid_unknown_fields`: the document then refuses what the decoder refuses."""

    def to_openapi_schema(self, field_definition: FieldDefinition, schema_creator: SchemaCreator) -> Schema:
        schema = super().to_openapi_schema(field_definition, schema_creator)
        if msgspec.inspect.type_info(field_definition.type_).forbid_unknown_fields:
            schema.additional_properties = False
        return schema
