"""The OpenAPI document: served, agreeing with the README, and checked by schemathesis (stateful too).

Under ``CI=true`` hypothesis is derandomized so a CI run is reproducible; examples are bounded
either way, since submitted jobs start real kernels.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.core.parameters import ParameterLocation
from schemathesis.specs.openapi.checks import positive_data_acceptance

from analysis.runner.server.openapi import openapi_document

pytestmark = pytest.mark.slow

schema = schemathesis.openapi.from_dict(openapi_document())
_CI = os.environ.get("CI", "").lower() == "true"
_SETTINGS = settings(
    max_examples=15, deadline=None, database=None, derandomize=_CI, suppress_health_check=list(HealthCheck)
)
README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_served_document_is_the_one_tested(module_server: Any) -> None:
    assert httpx.get(f"{module_server.url}/openapi.json").json() == openapi_document()


def test_the_readme_lists_exactly_the_documented_routes() -> None:
    section = README.read_text().split("## `analysis serve`", 1)[1].split("\n## ", 1)[0]
    in_readme = set(re.findall(r"^\| `(GET|POST|PUT|DELETE) (/[^`]*)`", section, re.MULTILINE))
    documented = {
        (method.upper(), path) for path, item in openapi_document()["paths"].items() for method in item
    }
    documented.add(("GET", "/openapi.json"))
    assert in_readme == documented


#: Uploads and schedules are checked beyond their schema (the source must be a valid analysis, the
#: cron expression and time zone must parse): a schema-valid body may rightly get a 422.
_SEMANTIC = (
    "PUT /v1/projects/{project_id}/analyses/{analysis_id}",
    "POST /v1/projects/{project_id}/schedules",
)


@schema.parametrize()
@_SETTINGS
def test_every_operation_conforms(case: Any, module_server: Any) -> None:
    excluded = [positive_data_acceptance] if case.operation.label in _SEMANTIC else []
    case.call_and_validate(
        base_url=module_server.url, headers={"Authorization": f"Bearer {module_server.admin}"}, timeout=120,
        excluded_checks=excluded,
    )  # fmt: skip


def _negated(case: Any, location: ParameterLocation) -> bool:
    """Whether schemathesis generated this part of the case as invalid on purpose.

    Such a part must reach the server as generated: filling in the token, or a real project id,
    turned a request that must be refused into a valid one, which the server rightly accepted,
    and schemathesis reported "Schema-violating request accepted" (ST201).
    """
    component = case.meta.components.get(location) if case.meta is not None else None
    return component is not None and component.mode.is_negative


def test_stateful_sequences_conform(module_server: Any) -> None:
    base = schema.as_state_machine()

    class Workflow(base):  # type: ignore[misc, valid-type]
        def before_call(self, case: Any) -> None:
            # Point ids at what exists so that links reach real jobs, versions and schedules.
            if "project_id" in (case.path_parameters or {}) and not _negated(case, ParameterLocation.PATH):
                case.path_parameters["project_id"] = "alpha"
            if case.operation.label == "POST /v1/projects/{project_id}/jobs" and isinstance(case.body, dict):
                case.body["analysis_id"] = "hello"
                case.body.pop("version", None)

        def validate_response(
            self, response: Any, case: Any, additional_checks: Any = None, **kwargs: Any
        ) -> None:
            case.validate_response(
                response, additional_checks=additional_checks, transport_kwargs=kwargs or None,
                recorder=self.recorder,
                excluded_checks=[positive_data_acceptance] if case.operation.label in _SEMANTIC else [],
            )  # fmt: skip

        def get_call_kwargs(self, case: Any) -> dict[str, Any]:
            negated = _negated(case, ParameterLocation.HEADER)
            headers = {} if negated else {"Authorization": f"Bearer {module_server.admin}"}
            return {"base_url": module_server.url, "headers": headers, "timeout": 120}

    Workflow.run(
        settings=settings(
            max_examples=10, stateful_step_count=6, deadline=None, database=None, derandomize=_CI,
            suppress_health_check=list(HealthCheck),
        )
    )  # fmt: skip
