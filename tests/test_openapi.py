"""The API answers as openapi.yaml says, for inputs schemathesis makes up."""

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import checks

from tests.azurite import ROOT
from tests.served import ServedApp

schema = schemathesis.openapi.from_path(ROOT / "openapi.yaml")
# Valid and invalid inputs alike: an invalid one must get a 4xx in the error shape, never a 5xx.
schema.config.generation.update(modes=list(schemathesis.GenerationMode), max_examples=30)
CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
    checks.response_headers_conformance,
]


@schema.parametrize()
@settings(deadline=None, suppress_health_check=list(HealthCheck))
def test_every_answer_fits_the_schema_and_none_is_a_5xx(case, served_app: ServedApp):
    case.call_and_validate(base_url=served_app.url, checks=CHECKS, timeout=30)
