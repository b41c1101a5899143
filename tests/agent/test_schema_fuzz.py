"""schemathesis against the daemon's own OpenAPI schema, in process, with a real model:
no 5xx, every status documented, every response matching its schema."""

from __future__ import annotations

from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from tests.agent.conftest import running_daemon
from tests.conftest import MODEL_CACHE, free_port


@pytest.fixture(scope="module")
def fuzz_url(smollm_gguf: Path, tmp_path_factory: pytest.TempPathFactory):
    """A daemon in this process (uvicorn in a thread) with a tiny max_tokens cap, so that
    the valid requests hypothesis finds stay fast."""
    from agent.settings import Settings

    tmp = tmp_path_factory.mktemp("fuzz")
    s = Settings(
        paths={"data_dir": tmp / "d", "cache_dir": MODEL_CACHE, "config_dir": tmp / "c"},
        server={"port": free_port(), "max_tokens_cap": 4, "default_max_tokens": 4},
        local_experts=[{"name": "smol", "model": str(smollm_gguf), "n_threads": 1,
                        "n_ctx": 512}],
        router={"bundle": "none"},
    )
    with running_daemon(s) as url:
        yield url


def test_no_5xx_and_responses_match_schema(fuzz_url: str) -> None:
    """Every operation, driven by hypothesis from the schema (schemathesis' pytest plugin
    does not run under pytest 9, so the strategies are driven directly)."""
    schema = schemathesis.openapi.from_url(f"{fuzz_url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/predict", "/v1/chat/completions", "/health"}
    for op in operations:

        @given(case=op.as_strategy())
        @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck),
                  derandomize=True)
        def run(case) -> None:
            case.call_and_validate(
                base_url=fuzz_url,
                checks=[not_a_server_error, status_code_conformance,
                        content_type_conformance, response_schema_conformance],
            )

        run()
