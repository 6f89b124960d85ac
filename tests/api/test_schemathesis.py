"""Schemathesis against the app's own OpenAPI document, in-process (SPEC §3, issue 3).

Every operation is called with generated requests (valid and invalid): no answer may be a 5xx,
and every documented answer must match its documented schema. Valid generated batches are
really accepted (and settled if a worker runs); that is harmless on the test Redis.
"""

from __future__ import annotations

import os
import uuid

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from payouts_api import create_app

app = create_app({"TESTING": True})  # schemathesis calls the WSGI app itself, with AUTH below
schema = schemathesis.openapi.from_wsgi("/openapi.json", app)
CHECKS = [not_a_server_error, response_schema_conformance]
# The suite's API key when the app requires one (schemathesis calls the WSGI app directly).
API_KEY = os.environ.get("PAYOUTS_API_KEY")
AUTH = {"Authorization": f"Bearer {API_KEY}"} if API_KEY else {}


RUN = f"st{uuid.uuid4().hex[:6]}-"


def isolate_ids(case) -> None:
    """Valid generated batches are really accepted: prefix their ids per run, so the documented
    examples (the seed's `2025-10-05-A`, `u1-001`) never meet the batches other tests submit.
    Only non-empty ids with room for the prefix change, so a valid id stays valid, an invalid one
    invalid."""
    body = case.body
    if not isinstance(body, dict):
        return
    items = body["items"] if isinstance(body.get("items"), list) else []
    targets = [(body, "batch_id")] + [(item, "external_id") for item in items if isinstance(item, dict)]
    for owner, name in targets:
        value = owner.get(name)
        if isinstance(value, str) and value and len(RUN + value) <= 64:
            owner[name] = RUN + value


# Endpoints registered here would receive the `tests` client's events from the e2e worker:
# tests/api/test_webhooks.py fuzzes registration under a client of its own.
@schema.exclude(path_regex="^/api/webhooks", method="POST").parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
def test_api_matches_its_openapi_document(case):
    isolate_ids(case)
    response = case.call_and_validate(checks=CHECKS, headers=AUTH)
    assert response.status_code != 401, "the generated requests must get past authentication"
ONE_KEY_OF_EACH_TYPE = ["123.456.789-09", "12.ABC.345/01DE-35", "+55 11 91234-5678", "U1@Email.com",
                        "550E8400-E29B-41D4-A716-446655440000"]


def test_accepted_batch_and_its_report_match_the_document(uid):
    """Generated data rarely makes a valid batch of every key type: submit one, then read it."""
    batch_id = f"st-{uid}"
    items = [{"external_id": f"st-{uid}-{i}", "user_id": "u", "amount_cents": 100 + i, "pix_key": key}
             for i, key in enumerate(ONE_KEY_OF_EACH_TYPE)]
    submit = schema["/api/payouts"]["POST"].Case(body={"batch_id": batch_id, "items": items},
                                                 media_type="application/json")
    for expected in (202, 200):
        response = submit.call_and_validate(checks=CHECKS, headers=AUTH)
        assert response.status_code == expected

    read = schema["/api/payouts/{batch_id}"]["GET"].Case(path_parameters={"batch_id": batch_id})
    report = read.call_and_validate(checks=CHECKS, headers=AUTH).json()
    assert [d["pix_key_type"] for d in report["details"]] == ["cpf", "cnpj", "phone", "email", "evp"]
