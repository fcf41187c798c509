"""Fuzzing against our own OpenAPI document (schemathesis, pinned in requirements-dev.txt).

The real gateway over real HTTP (uvicorn) in front of the four real services,
rate limits off; schemathesis reads ``/openapi.json`` and runs every operation
once with a member token and once with a staff token, in positive and negative
mode, with these checks: no 5xx, responses match their schema and content type,
requests the document forbids are refused, undocumented methods are 405 with a
true ``Allow``, and protected routes refuse a missing token.

Bounded for ``make test`` (``MALL_FUZZ_EXAMPLES``, default 4 per operation);
``make fuzz-nightly`` runs a longer profile.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest

from gateway.app import create_app
from gateway.config import GatewaySettings
from mallkit.settings import PlatformSettings
from mallkit.testing import HttpServer
from tests.fixtures.system import new_member

EXAMPLES = int(os.environ.get("MALL_FUZZ_EXAMPLES", "4"))
PHASES = os.environ.get("MALL_FUZZ_PHASES", "examples,coverage,fuzzing")
SEED = os.environ.get("MALL_FUZZ_SEED", "8")
#: Generous: the run's bound is its examples; this only stops a hung run.
TIMEOUT = float(os.environ.get("MALL_FUZZ_TIMEOUT_SECONDS", "1500"))
CHECKS = ",".join([
    "not_a_server_error", "status_code_conformance", "content_type_conformance", "response_headers_conformance",
    "response_schema_conformance", "negative_data_rejection", "unsupported_method", "allow_header_conformance",
    "ignored_auth",
])


@pytest.fixture(scope="module")
async def fuzz_url(members, points, orders, community):
    settings = GatewaySettings(
        services=["members", "points", "orders", "community"], rate_per_ip=0, rate_per_member=0,
        platform=PlatformSettings(env="test", members_addr=members.addr, points_addr=points.addr,
                                  orders_addr=orders.addr, community_addr=community.addr),
    )
    server = HttpServer(create_app(settings))
    await server.start()
    yield server.url
    await server.stop()


async def _run(url: str, token: str, report: Path) -> dict:
    st = Path(sys.executable).with_name("st")
    proc = await asyncio.create_subprocess_exec(
        str(st), "run", f"{url}/openapi.json", "--url", url, "-H", f"Authorization: Bearer {token}",
        "--checks", CHECKS, "--mode", "all", "--phases", PHASES, "--max-examples", str(EXAMPLES),
        "--seed", SEED, "--workers", "1", "--request-timeout", "30", "--no-color",
        "--suppress-health-check", "all", "--report", "ndjson", "--report-ndjson-path", str(report),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), TIMEOUT)
    text = out.decode(errors="replace")
    return {"exit": proc.returncode, "output": text, "events": _events(report)}


def _events(report: Path) -> list[dict]:
    return [json.loads(line) for line in report.read_text().splitlines() if line.strip()] if report.exists() else []


@pytest.mark.parametrize("who", ["member", "staff"])
async def test_fuzz_every_operation(who, fuzz_url, members, staff_caller, tmp_path):
    caller = await new_member(members) if who == "member" else staff_caller
    result = await _run(fuzz_url, caller.token, tmp_path / f"fuzz-{who}.ndjson")
    print(result["output"][-6000:])
    assert result["exit"] == 0, result["output"][-20000:]
