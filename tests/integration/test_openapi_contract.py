"""Schema-driven tests: schemathesis generates requests from the service's own OpenAPI
document and checks every response against it (status codes, content types, bodies), and
that data which does not fit the schema is rejected with a 4xx.

(schemathesis's pytest plugin does not run under pytest 9, so its strategies are used
directly with hypothesis.)"""

from __future__ import annotations

import httpx
import pytest
import schemathesis
from hypothesis import given
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from tests.support.fuzzing import fuzz_settings


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_api_conforms_to_its_openapi_document(fuzz_url, mode):
    schema = schemathesis.openapi.from_url(fuzz_url + "/openapi.json")

    @fuzz_settings(100)
    @given(case=schema.as_strategy(generation_mode=mode))
    def check(case):
        # A schema can say "a base64 string" but not "of a decodable image", so
        # schema-valid bodies may rightly get a 400: positive_data_acceptance does not apply.
        case.call_and_validate(base_url=fuzz_url, excluded_checks=[positive_data_acceptance])

    check()


def test_the_openapi_document_lists_every_route(fuzz_url):
    paths = httpx.get(fuzz_url + "/openapi.json").json()["paths"]
    assert {"/vectors", "/.well-known/live", "/.well-known/ready", "/meta"} <= set(paths)
