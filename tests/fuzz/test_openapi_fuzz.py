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

import httpx
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
        cwd=report.parent,  # schemathesis keeps its cache (.schemathesis/) in the working directory
    )
    out, _ = await asyncio.wait_for(proc.communicate(), TIMEOUT)
    text = out.decode(errors="replace")
    return {"exit": proc.returncode, "output": text, "events": _events(report)}


def _events(report: Path) -> list[dict]:
    return [json.loads(line) for line in report.read_text().splitlines() if line.strip()] if report.exists() else []


def figures(events: list[dict]) -> dict[str, int]:
    """Operations, requests, 5xx, response schema violations and accepted forbidden requests of a run."""
    ops, out = set(), {"requests": 0, "5xx": 0, "schema_violations": 0, "forbidden_accepted": 0, "failed_checks": 0}
    for event in events:
        done = event.get("ScenarioFinished")
        if not done or not done.get("recorder"):
            continue
        recorder = done["recorder"]
        if recorder.get("interactions"):
            ops.add(recorder["label"])
        for interaction in recorder.get("interactions", {}).values():
            out["requests"] += 1
            if (interaction.get("response") or {}).get("status_code", 0) >= 500:
                out["5xx"] += 1
        for checks in recorder.get("checks", {}).values():
            for check in checks:
                if check["status"] != "failure":
                    continue
                out["failed_checks"] += 1
                if check["name"] == "response_schema_conformance":
                    out["schema_violations"] += 1
                if check["name"] == "negative_data_rejection":
                    out["forbidden_accepted"] += 1
    return {"operations": len(ops), **out}


@pytest.mark.parametrize("who", ["member", "staff"])
async def test_fuzz_every_operation(who, fuzz_url, members, staff_caller, tmp_path):
    caller = await new_member(members) if who == "member" else staff_caller
    result = await _run(fuzz_url, caller.token, tmp_path / f"fuzz-{who}.ndjson")
    numbers = figures(result["events"])
    print(f"fuzz[{who}]:", " ".join(f"{k}={v}" for k, v in numbers.items()))
    assert result["exit"] == 0, result["output"][-20000:]
    async with httpx.AsyncClient(base_url=fuzz_url) as http:
        documented = sum(len(ops) for ops in (await http.get("/openapi.json")).json()["paths"].values())
    assert numbers["operations"] == documented, numbers  # every operation was called
    assert numbers["5xx"] == numbers["schema_violations"] == numbers["forbidden_accepted"] == 0, numbers
    assert numbers["requests"] > 5 * documented, numbers
