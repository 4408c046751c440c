"""Every operation of the OpenAPI document, fuzzed over a real socket with the admin key and a tenant key.

schemathesis generates inputs from the document itself (valid ones and ones that break it), so an operation
added later is fuzzed without touching this file. Each answer must be no 5xx, conform to the document (status
code, content type, body schema), and every error must be the README's `{"status_code", "detail", "field"}`.
"""

from __future__ import annotations

import asyncio
import os
from collections import Counter

import hypothesis
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import ADMIN_KEY
from tests.live_api import serve, tenant_key

# Examples per operation, per generation mode and per key: 81 operations x 2 modes x 2 keys x 12 stay within
# about two minutes on two loaded cores. EMAIL_ENGINE_FUZZ_EXAMPLES raises it for a longer hunt.
EXAMPLES = int(os.environ.get("EMAIL_ENGINE_FUZZ_EXAMPLES", "12"))
SEED = 18
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
# Answers the document cannot describe, each with why. Litestar documents one media type per status code.
SECOND_MEDIA_TYPE = {"GET /api/v2/dns/records/{tenant_id}": "text/plain"}  # ?format=bind: a BIND zone fragment
ERROR_FIELDS = {"status_code", "detail", "field", "extra"}


def error_shape(response) -> str | None:
    """What is wrong with an error body, if anything: the README's shape, its status matching the answer's."""
    if response.status_code < 400:
        return None
    try:
        body = response.json()
    except ValueError:
        return f"error body is not JSON: {response.text[:200]!r}"
    if not isinstance(body, dict) or set(body) - ERROR_FIELDS:
        return f"error body has other keys: {body!r:.200}"
    if body.get("status_code") != response.status_code or not isinstance(body.get("detail"), str):
        return f"error body does not carry its status and a detail: {body!r:.200}"
    if "field" in body and not isinstance(body["field"], str):
        return f"error field is not a name: {body!r:.200}"
    return None


def fuzz_one(base: str, operation, key_name: str, key: str, mode: GenerationMode, sent: Counter,
             failures: list[str]) -> None:
    """EXAMPLES generated cases of one operation, one key and one mode; each distinct failure noted once."""
    seen: set[str] = set()

    @hypothesis.settings(max_examples=EXAMPLES, deadline=None, database=None,
                         phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @hypothesis.seed(SEED)
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case) -> None:
        sent[operation.label] += 1
        response = case.call(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=60)
        problems = []
        try:
            case.validate_response(response, checks=CHECKS)
        except FailureGroup as group:  # schemathesis groups every failed check in one
            problems.extend(" ".join(str(exc).split())[:300] for exc in group.exceptions)
        if operation.path.startswith("/api/") and (shape := error_shape(response)):
            problems.append(shape)
        content_type = next((v[0] for k, v in response.headers.items() if k.lower() == "content-type"), "")
        if content_type.startswith(SECOND_MEDIA_TYPE.get(operation.label, "-")):
            problems = [p for p in problems if not p.startswith("Undocumented Content-Type")]
        for problem in problems:
            line = f"{operation.label} [{key_name}, {mode.value}] {response.status_code}: {problem}"
            if line not in seen:
                seen.add(line)
                failures.append(f"{line}\n    {case.as_curl_command()[:400]}")

    try:
        run()
    except hypothesis.errors.Unsatisfiable:
        pass  # nothing to break: an operation without parameters or body has no negative cases


def fuzz(base: str, keys: dict[str, str]) -> tuple[Counter, list[str]]:
    """Run every operation of the document; returns the examples sent per operation and the failures found."""
    schema = schemathesis.openapi.from_url(f"{base}/schema/openapi.json")
    sent: Counter = Counter()
    failures: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        for key_name, key in keys.items():
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                fuzz_one(base, operation, key_name, key, mode, sent, failures)
    return sent, failures


@pytest.mark.slow
async def test_every_operation_answers_by_its_document_under_fuzzing(seeded, settings):
    with serve(settings) as base:
        keys = {"admin": ADMIN_KEY, "tenant": await asyncio.to_thread(tenant_key, base, seeded[0])}
        sent, failures = await asyncio.to_thread(fuzz, base, keys)
    print(f"\nfuzzed {len(sent)} operations with {sum(sent.values())} examples")
    assert len(sent) >= 60, sorted(sent)
    assert not failures, f"{len(failures)} failures:\n" + "\n".join(failures[:80])
