"""The rendered overlays of k8s/ (``kubectl kustomize``), shared by the manifest checks.

Without kubectl the checks are skipped with a reason that says so, except under CI
(``CI=true``), where a missing kubectl fails the run.
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
import k8s_render  # noqa: E402

NAMESPACE = "mall"
SERVICES = {"members": 50051, "points": 50052, "orders": 50053, "community": 50054}
APPS = [*SERVICES, "gateway"]


@dataclass
class Rendered:
    """One overlay's objects, with helpers to find what selects what."""

    name: str
    objects: list[dict]
    by_kind: dict[str, dict[str, dict]] = field(default_factory=dict)

    def __post_init__(self):
        for obj in self.objects:
            self.by_kind.setdefault(obj["kind"], {})[obj["metadata"]["name"]] = obj

    def kind(self, kind: str) -> dict[str, dict]:
        return self.by_kind.get(kind, {})

    def workloads(self) -> dict[str, dict]:
        """name -> Deployment, StatefulSet or Job."""
        return {**self.kind("Deployment"), **self.kind("StatefulSet"), **self.kind("Job")}

    def pod_templates(self) -> list[tuple[str, dict]]:
        """(workload name, pod template) of every workload."""
        return [(n, w["spec"]["template"]) for n, w in self.workloads().items()]

    def pods_selected(self, selector: dict | None) -> list[str]:
        """Workloads whose pods a label selector (matchLabels/matchExpressions) selects."""
        return [n for n, t in self.pod_templates() if matches(selector, t["metadata"].get("labels", {}))]

    def config_data(self, kind: str, name: str) -> dict:
        obj = self.kind(kind).get(name)
        return {} if obj is None else {**obj.get("data", {}), **obj.get("stringData", {})}

    def environment(self, container: dict) -> dict[str, str | None]:
        """Every variable a container gets: envFrom ConfigMaps and Secrets, then env."""
        env: dict[str, str | None] = {}
        for source in container.get("envFrom", []):
            if "configMapRef" in source:
                env.update(self.config_data("ConfigMap", source["configMapRef"]["name"]))
            if "secretRef" in source:
                env.update({k: "(secret)" for k in self.config_data("Secret", source["secretRef"]["name"])})
        for var in container.get("env", []):
            env[var["name"]] = var.get("value", "(from)")
        return env


def matches(selector: dict | None, labels: dict) -> bool:
    if selector is None:
        return False
    if "matchLabels" not in selector and "matchExpressions" not in selector:
        selector = {"matchLabels": selector}  # a Service's plain map
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


@pytest.fixture(scope="session")
def rendered(tmp_path_factory) -> dict[str, Rendered]:
    if shutil.which("kubectl") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true but kubectl is not installed: the manifests cannot be rendered")
        pytest.skip("kubectl is not installed: cannot render k8s/ (CI fails instead)")
    out = tmp_path_factory.mktemp("k8s")
    result = {}
    for name, path in k8s_render.render_all(out).items():
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
        result[name] = Rendered(name, docs)
    assert set(result) == {"dev", "prod"}, sorted(result)
    return result
