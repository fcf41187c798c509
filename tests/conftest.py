"""Fixtures shared by every test: database backend, traces, fake WeChat.

The database backend is MariaDB when one answers (MALL_TEST_MYSQL_URL, default
root@127.0.0.1:3306), else SQLite: tests marked ``mariadb`` are then skipped
and the summary says so plainly. Under CI (``CI=true``) a missing MariaDB
fails the run instead.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from pathlib import Path

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from fakes.wechat import FakeWechat
from mallkit.testing import HttpServer, NatsServer, mysql_available

#: Fixtures of the running services (real servers on real databases): one
#: module per service in tests/fixtures/, all loaded here.
pytest_plugins = sorted(
    f"tests.fixtures.{p.stem}" for p in (Path(__file__).parent / "fixtures").glob("*.py") if not p.stem.startswith("_")
)

SPANS = InMemorySpanExporter()
_provider = TracerProvider()
_provider.add_span_processor(SimpleSpanProcessor(SPANS))
trace.set_tracer_provider(_provider)

_STATE = {"backend": None, "skipped": []}


def _backend() -> str:
    if _STATE["backend"] is None:
        ok = asyncio.run(mysql_available())
        if not ok and os.environ.get("CI") == "true":
            pytest.exit("CI=true but no MariaDB/MySQL answers at MALL_TEST_MYSQL_URL: refusing to skip database tests",
                        returncode=3)
        _STATE["backend"] = "mariadb" if ok else "sqlite"
    return _STATE["backend"]


def pytest_collection_modifyitems(config, items):
    if _backend() == "mariadb":
        return
    skip = pytest.mark.skip(reason="needs MariaDB/MySQL (none answered); ran on SQLite otherwise")
    for item in items:
        if "mariadb" in item.keywords:
            item.add_marker(skip)
            _STATE["skipped"].append(item.nodeid)


def pytest_terminal_summary(terminalreporter):
    if _STATE["backend"] == "mariadb":
        terminalreporter.write_line("database tests ran on MariaDB (one database per service)")
    elif _STATE["backend"] == "sqlite":
        terminalreporter.write_line(
            f"NO MariaDB: database tests ran on SQLite; {len(_STATE['skipped'])} MariaDB-only tests SKIPPED:", yellow=True
        )
        for nodeid in _STATE["skipped"]:
            terminalreporter.write_line(f"  skipped (no MariaDB): {nodeid}", yellow=True)


@pytest.fixture(scope="session")
def backend() -> str:
    return _backend()


@pytest.fixture(scope="session")
def tmp_root():
    with tempfile.TemporaryDirectory(prefix="mall-tests-") as d:
        yield Path(d)


@pytest.fixture(scope="session", autouse=True)
async def nats(tmp_root):
    """The tests' own nats-server with JetStream (free port, store in the run's temp dir).

    Every service under test finds it through ``MALL_NATS_URL``."""
    server = NatsServer(tmp_root / "nats")
    await server.start()
    previous = os.environ.get("MALL_NATS_URL")
    os.environ["MALL_NATS_URL"] = server.url
    yield server
    if previous is None:
        os.environ.pop("MALL_NATS_URL", None)
    else:
        os.environ["MALL_NATS_URL"] = previous
    await server.stop()


@pytest.fixture
def spans():
    SPANS.clear()
    return SPANS


@pytest.fixture(scope="session")
async def fake_wechat():
    fake = FakeWechat()
    server = HttpServer(fake.app())
    await server.start()
    fake.url = server.url
    yield fake
    await server.stop()
