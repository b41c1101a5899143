"""Fixtures for bridge tests: the anyio backend and a fault proxy in front of the real
OpenAI-compatible server (``cloud_server`` from the shared conftest)."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

from tests.cloud_bridge.faultproxy import FaultProxy


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def fault_proxy(cloud_server: str) -> Iterator[FaultProxy]:
    port = urlsplit(cloud_server).port
    assert port is not None
    with FaultProxy(port) as proxy:
        yield proxy
