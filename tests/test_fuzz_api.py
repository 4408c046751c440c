"""Every operation of the OpenAPI document, fuzzed over a real socket with the admin key and a tenant key.

schemathesis generates inputs from the document itself (valid ones and ones that break it), so an operation
added later is fuzzed without touching this file. Each answer must be no 5xx, conform to the document (status
code, content type, body schema), and every error must be the README's `{"status_code", "detail", "field"}`.
A stateful run then follows the document's links (create, then read, change, act on and delete what was
created) with the admin key, under the same checks and two more: what was just created can be read, and what
was deleted is gone.
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
from schemathesis.core.failures import Failure, FailureGroup
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ensure_resource_availability,
    response_schema_conformance,
    status_code_conformance,
    use_after_free,
)

from api.inputs import CONTROL
from tests.conftest import ADMIN_KEY
from tests.live_api import serve, tenant_key

# Examples per operation, per generation mode and per key: 81 operations x 2 modes x 2 keys x 12 stay within
# about two minutes on two loaded cores. EMAIL_ENGINE_FUZZ_EXAMPLES raises it for a longer hunt.
EXAMPLES = int(os.environ.get("EMAIL_ENGINE_FUZZ_EXAMPLES", "12"))
SEED = 18
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
# Scenarios of the stateful run, each a chain of up to STEPS calls along the document's links: 200 take about
# 20 s on two loaded cores. EMAIL_ENGINE_FUZZ_SCENARIOS raises it.
SCENARIOS = int(os.environ.get("EMAIL_ENGINE_FUZZ_SCENARIOS", "200"))
STEPS = 12
# Along links, also: what was just created can be read (no 404), and what was deleted is gone.
STATEFUL_CHECKS = [*CHECKS, ensure_resource_availability, use_after_free]
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


def problems_of(case, response, checks: list, recorder=None) -> list[str]:
    """What is wrong with one answer: the schemathesis checks, and the error body's shape under /api/."""
    problems = []
    try:
        case.validate_response(response, checks=checks, recorder=recorder)
    except FailureGroup as group:  # schemathesis groups every failed check in one
        problems.extend(" ".join(str(exc).split())[:300] for exc in group.exceptions)
    except Failure as exc:  # a single failed check
        problems.append(" ".join(str(exc).split())[:300])
    if case.operation.path.startswith("/api/") and (shape := error_shape(response)):
        problems.append(shape)
    content_type = next((v[0] for k, v in response.headers.items() if k.lower() == "content-type"), "")
    if content_type.startswith(SECOND_MEDIA_TYPE.get(case.operation.label, "-")):
        problems = [p for p in problems if not p.startswith("Undocumented Content-Type")]
    return problems


def note(failures: list[str], seen: set[str], case, response, where: str, problems: list[str]) -> None:
    """Each distinct failure once, with the curl command that reproduces it."""
    for problem in problems:
        line = f"{case.operation.label} [{where}] {response.status_code}: {problem}"
        if line not in seen:
            seen.add(line)
            failures.append(f"{line}\n    {case.as_curl_command()[:400]}")


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
        note(failures, seen, case, response, f"{key_name}, {mode.value}", problems_of(case, response, CHECKS))

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


def without_controls(value):
    """The value with each control character the API refuses in any text (api.inputs.CONTROL) replaced by
    `_`, so that lengths stay within the document's bounds."""
    if isinstance(value, str):
        return CONTROL.sub("_", value)
    if isinstance(value, dict):
        return {CONTROL.sub("_", key): without_controls(item) for key, item in value.items()}
    if isinstance(value, list):
        return [without_controls(item) for item in value]
    return value


def walk_links(base: str, key: str) -> tuple[int, Counter, list[str]]:
    """SCENARIOS chains of calls along the document's links, each answer checked as in `fuzz` and by
    STATEFUL_CHECKS; returns the chains run, how each link's target answered (link, status class) and the
    failures found."""
    schema = schemathesis.openapi.from_url(f"{base}/schema/openapi.json")
    schema.config.phases.stateful.inference.algorithms = []  # the document's links only, not guessed ones
    # Every call carries the key; valid inputs only, so that chains go deeper (the stateless run sends the
    # invalid ones, and control characters, which the API refuses in any text).
    schema.config.generation.update(with_security_parameters=False, modes=[GenerationMode.POSITIVE])

    @schema.hook
    def map_case(context, case):
        case.body = without_controls(case.body)
        for name in ("query", "path_parameters"):
            if isinstance(getattr(case, name), dict):
                setattr(case, name, without_controls(getattr(case, name)))
        return case

    followed: Counter = Counter()
    failures: list[str] = []
    seen: set[str] = set()
    done = [0]

    class Walk(schema.as_state_machine()):
        def get_call_kwargs(self, case) -> dict:
            return {"base_url": base, "headers": {"Authorization": f"Bearer {key}"}, "timeout": 60}

        def validate_response(self, response, case, **kwargs) -> None:
            problems = problems_of(case, response, STATEFUL_CHECKS, recorder=self.recorder)
            note(failures, seen, case, response, "admin, stateful", problems)

        def step(self, input):
            output = super().step(input)
            if input.transition is not None and input.is_applied:
                followed[input.transition.id, f"{output.response.status_code // 100}xx"] += 1
            return output

        def teardown(self) -> None:
            done[0] += 1
            super().teardown()

    # A chain's data depends on what the server holds, which Hypothesis cannot replay: when it notices
    # (Flaky), the walk goes on with another seed until SCENARIOS chains ran.
    for attempt in range(10):
        settings = hypothesis.settings(max_examples=SCENARIOS - done[0], stateful_step_count=STEPS, deadline=None,
                                       database=None, phases=[Phase.generate], suppress_health_check=list(HealthCheck))
        try:
            hypothesis.seed(SEED + attempt)(Walk).run(settings=settings)
            break
        except hypothesis.errors.Flaky:
            if done[0] >= SCENARIOS:
                break
    return done[0], followed, failures


@pytest.mark.slow
async def test_links_lead_from_what_is_created_to_what_reads_it(seeded, settings):
    with serve(settings) as base:
        chains, followed, failures = await asyncio.to_thread(walk_links, base, ADMIN_KEY)
    answered = sorted(link for (link, status), n in followed.items() if status == "2xx")
    print(f"\n{chains} chains followed {len(followed)} links {sum(followed.values())} times; "
          f"{len(answered)} answered 2xx")
    assert not failures, f"{len(failures)} failures:\n" + "\n".join(failures[:80])
    assert chains >= SCENARIOS, chains
    assert len(answered) >= 15, followed  # chains do reach what was created
