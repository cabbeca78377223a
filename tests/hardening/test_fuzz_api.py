"""Schemathesis fuzzes every operation of /api/schema/: no input makes a 500 or an off-schema answer.

Bounded for CI (a few examples per operation, valid and invalid inputs). For a longer run:
SCOPE_FUZZ_EXAMPLES=200 pytest tests/hardening/test_fuzz_api.py
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from django.core import signals
from django.db import close_old_connections
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from schemathesis import checks

from tests.factories import make_policy

EXAMPLES = int(os.environ.get("SCOPE_FUZZ_EXAMPLES", "5"))
# What the API promises for any input: no 5xx, only documented status codes, and bodies, headers
# and content types as documented; plus schema-invalid input is refused with a 4xx. (Schemathesis'
# positive_data_acceptance is left out: a schema cannot state rules such as "exactly one of score
# or thumbs" or "this decision id exists", so schema-valid bodies may rightly get a 400/404.)
CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_headers_conformance,
    checks.response_schema_conformance,
    checks.negative_data_rejection,
]


from scope_site.wsgi import application  # noqa: E402

# the schema as served (no database needed to build it); every operation in it is fuzzed
schema = schemathesis.openapi.from_wsgi("/api/schema/?format=json", application)


@pytest.fixture(autouse=True)
def _keep_the_test_connection() -> Iterator[None]:
    """As Django's test client does: requests must not close the test's transaction connection."""
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    yield
    signals.request_started.connect(close_old_connections)
    signals.request_finished.connect(close_old_connections)


@pytest.fixture(autouse=True)
def _fast_catalog(catalog: Any, settings: Any) -> None:
    settings.SCOPE_SIMULATED_SPEEDUP = 1000.0  # simulated providers answer at once
    make_policy("cheap", strategy="pre_inference", alpha=0.1)


@schema.parametrize()
@hypothesis_settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
    ],
)
@pytest.mark.django_db
def test_no_input_makes_a_500_or_an_answer_outside_the_schema(case: Any, api_key: str) -> None:
    case.call_and_validate(headers={"Authorization": f"Bearer {api_key}"}, checks=CHECKS)
