"""`make k8s-deploy` (scripts/k8s_deploy.sh) runs the migrations before the rollout, and stops on a failed one.

No cluster here: a stand-in ``kubectl`` first on PATH records every call, renders with
the real ``kubectl kustomize``, and answers the Jobs' conditions as the test says.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import textwrap

import pytest

from tests.k8s.conftest import ROOT, SERVICES

FAKE = textwrap.dedent("""\
    #!/usr/bin/env bash
    echo "$*" >> "$KUBECTL_LOG"
    case "$1 $2" in
      "config current-context") echo test-cluster; exit 0;;
      kustomize*) exec "$REAL_KUBECTL" "$@";;
    esac
    if [[ "$*" == *"get job"* ]]; then
      for s in members points orders community; do echo "job.batch/$s-migrate"; done; exit 0
    fi
    if [[ "$*" == *"wait --for=condition=complete job.batch/$FAILING"* ]]; then exec sleep 30; fi
    if [[ "$*" == *"wait --for=condition=failed job.batch/$FAILING"* ]]; then exit 0; fi
    if [[ "$*" == *"wait --for=condition=failed"* ]]; then exec sleep 30; fi
    exit 0
    """)


def run_deploy(tmp_path, failing: str = "none") -> tuple[subprocess.CompletedProcess, list[str]]:
    real = shutil.which("kubectl")
    if real is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true but kubectl is not installed")
        pytest.skip("kubectl is not installed (CI fails instead)")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "kubectl").write_text(FAKE)
    (bindir / "kubectl").chmod(0o755)
    log = tmp_path / "kubectl.log"
    # the overlay needs its secret files: deploy a scratch copy holding the examples
    copy = tmp_path / "repo"
    shutil.copytree(ROOT / "k8s", copy / "k8s")
    shutil.copytree(ROOT / "scripts", copy / "scripts")
    for example in (copy / "k8s").glob("overlays/*/secrets/*.example"):
        shutil.copy(example, example.with_suffix(""))
    env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}", "KUBECTL_LOG": str(log),
           "REAL_KUBECTL": real, "FAILING": failing}
    proc = subprocess.run(["bash", str(copy / "scripts" / "k8s_deploy.sh"), "prod"], env=env,
                          capture_output=True, text=True, timeout=120)
    return proc, log.read_text().splitlines()


def index(calls: list[str], fragment: str) -> int:
    found = [i for i, c in enumerate(calls) if fragment in c]
    assert found, f"no call with {fragment!r} in {calls}"
    return found[0]


def test_config_then_migrations_waited_for_then_the_rollout(tmp_path):
    proc, calls = run_deploy(tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert index(calls, "config current-context") < index(calls, "kustomize")
    delete = index(calls, "delete job -l app.kubernetes.io/component=migration")
    applies = [i for i, c in enumerate(calls) if c.startswith("apply -f")]
    assert len(applies) == 3
    assert "notin (server,migration)" in calls[applies[0]]
    assert calls[applies[1]].endswith("-l app.kubernetes.io/component=migration")
    assert calls[applies[2]].endswith("-l app.kubernetes.io/component=server")
    waits = [i for i, c in enumerate(calls) if "wait --for=condition=complete" in c]
    assert len(waits) == len(SERVICES)
    rollouts = [i for i, c in enumerate(calls) if c.startswith("-n mall rollout status")]
    assert len(rollouts) == 5
    assert applies[0] < delete < applies[1] < min(waits) and max(waits) < applies[2] < min(rollouts), calls


def test_a_failed_migration_stops_the_release_before_any_rollout(tmp_path):
    proc, calls = run_deploy(tmp_path, failing="orders-migrate")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "orders-migrate failed" in proc.stderr
    assert not any(c.endswith("-l app.kubernetes.io/component=server") for c in calls), calls
    assert not any("rollout status" in c for c in calls)
