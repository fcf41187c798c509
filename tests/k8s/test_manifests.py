"""What no schema sees in the rendered overlays: selectors, ports, references, policies, settings.

Each test runs over every overlay (dev and prod) rendered by ``kubectl kustomize``.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest
from pydantic import SecretStr

from tests.k8s.conftest import APPS, NAMESPACE, ROOT, SERVICES, Rendered, matches

OVERLAYS = ["dev", "prod"]


@pytest.fixture(params=OVERLAYS)
def ov(request, rendered) -> Rendered:
    return rendered[request.param]


def containers(template: dict) -> list[dict]:
    return template["spec"].get("containers", []) + template["spec"].get("initContainers", [])


def port_names_and_numbers(template: dict) -> tuple[set[str], set[int]]:
    names, numbers = set(), set()
    for c in containers(template):
        for p in c.get("ports", []):
            numbers.add(p["containerPort"])
            if "name" in p:
                names.add(p["name"])
    return names, numbers


def resolves(port, template: dict) -> bool:
    names, numbers = port_names_and_numbers(template)
    return port in names if isinstance(port, str) else port in numbers


# ---------------------------------------------------------------- selectors and targets


def test_workload_selectors_match_their_own_pod_labels(ov):
    for name, w in ov.workloads().items():
        if w["kind"] == "Job":
            continue
        assert matches(w["spec"]["selector"], w["spec"]["template"]["metadata"]["labels"]), name
    for name, d in ov.kind("Deployment").items():  # no Deployment adopts another workload's pods
        assert ov.pods_selected(d["spec"]["selector"]) == [name], name


def test_services_select_pods_of_one_app_and_their_ports_exist_in_those_pods(ov):
    templates = dict(ov.pod_templates())
    for name, svc in ov.kind("Service").items():
        selected = ov.pods_selected(svc["spec"]["selector"])
        assert len(selected) == 1, f"Service {name} selects {selected}"
        for port in svc["spec"]["ports"]:
            assert resolves(port.get("targetPort", port["port"]), templates[selected[0]]), (name, port)


def test_grpc_services_are_headless_so_callers_balance_over_every_pod(ov):
    for name in SERVICES:
        assert ov.kind("Service")[name]["spec"].get("clusterIP") == "None", name


def test_hpa_and_pdb_targets_exist(ov):
    for name, hpa in ov.kind("HorizontalPodAutoscaler").items():
        ref = hpa["spec"]["scaleTargetRef"]
        assert ref["name"] in ov.kind(ref["kind"]), name
    for name, pdb in ov.kind("PodDisruptionBudget").items():
        assert ov.pods_selected(pdb["spec"]["selector"]) == [name], name
        assert ("minAvailable" in pdb["spec"]) != ("maxUnavailable" in pdb["spec"]), name
    for app in APPS:
        assert app in ov.kind("PodDisruptionBudget"), app


def test_every_configmap_and_secret_referenced_is_generated(ov):
    missing = []
    for wname, t in ov.pod_templates():
        refs = []
        for c in containers(t):
            for src in c.get("envFrom", []):
                refs += [("ConfigMap", src["configMapRef"]["name"])] if "configMapRef" in src else []
                refs += [("Secret", src["secretRef"]["name"])] if "secretRef" in src else []
            for var in c.get("env", []):
                vf = var.get("valueFrom", {})
                if "configMapKeyRef" in vf:
                    refs.append(("ConfigMap", vf["configMapKeyRef"]["name"], vf["configMapKeyRef"]["key"]))
                if "secretKeyRef" in vf:
                    refs.append(("Secret", vf["secretKeyRef"]["name"], vf["secretKeyRef"]["key"]))
        for vol in t["spec"].get("volumes", []):
            refs += [("ConfigMap", vol["configMap"]["name"])] if "configMap" in vol else []
            refs += [("Secret", vol["secret"]["secretName"])] if "secret" in vol else []
        for ref in refs:
            if ref[1] not in ov.kind(ref[0]):
                missing.append((wname, *ref))
            elif len(ref) == 3 and ref[2] not in ov.config_data(ref[0], ref[1]):
                missing.append((wname, *ref))
    assert not missing, missing


def test_every_object_is_in_the_namespace_and_deploy_phases_cover_every_workload(ov):
    for obj in ov.objects:
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") == NAMESPACE, (obj["kind"], obj["metadata"]["name"])
    # make k8s-deploy applies by app.kubernetes.io/component: Jobs are the migrations,
    # the five apps are the servers, and nothing else carries those two values.
    for name, job in ov.kind("Job").items():
        assert job["metadata"]["labels"]["app.kubernetes.io/component"] == "migration", name
    for app in APPS:
        assert ov.kind("Deployment")[app]["metadata"]["labels"]["app.kubernetes.io/component"] == "server"
    for obj in ov.objects:
        comp = obj["metadata"].get("labels", {}).get("app.kubernetes.io/component")
        if comp == "server":
            assert obj["kind"] == "Deployment" and obj["metadata"]["name"] in APPS, obj["metadata"]["name"]
    assert sorted(ov.kind("Job")) == sorted(f"{s}-migrate" for s in SERVICES)


# ---------------------------------------------------------------- probes and shutdown


def grpc_service_names() -> set[str]:
    names = {""}
    for svc in SERVICES:
        module = importlib.import_module(f"mall.{svc}.v1.{svc}_service_pb2")
        names |= {s.full_name for s in module.DESCRIPTOR.services_by_name.values()}
    return names


def test_probes_point_at_real_ports_and_real_health_services(ov):
    known = grpc_service_names()
    for wname, t in ov.pod_templates():
        for c in containers(t):
            for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
                probe = c.get(kind)
                if probe is None:
                    continue
                for handler in ("grpc", "httpGet", "tcpSocket"):
                    if handler in probe:
                        assert resolves(probe[handler]["port"], t), (wname, kind, probe)
                if "grpc" in probe:
                    assert probe["grpc"].get("service", "") in known, (wname, kind, probe)
    for app in SERVICES:
        c = ov.kind("Deployment")[app]["spec"]["template"]["spec"]["containers"][0]
        assert "grpc" in c["readinessProbe"] and "grpc" in c["livenessProbe"] and "grpc" in c["startupProbe"]
        # readiness asks for the service itself (it follows the database and the drain)
        assert c["readinessProbe"]["grpc"]["service"].endswith("Service"), app
    gw = ov.kind("Deployment")["gateway"]["spec"]["template"]["spec"]["containers"][0]
    assert gw["readinessProbe"]["httpGet"]["path"] == "/healthz"


def setting_default(app: str, field: str):
    cls = settings_class(app)
    return cls.model_fields[field].default


def test_termination_grace_covers_prestop_drain_and_grace(ov):
    for app in APPS:
        t = ov.kind("Deployment")[app]["spec"]["template"]
        c = t["spec"]["containers"][0]
        env = ov.environment(c)
        prestop = c["lifecycle"]["preStop"]["sleep"]["seconds"]
        prefix = app.upper()
        drain = float(env.get(f"{prefix}_DRAIN_SECONDS") or (0 if app == "gateway" else setting_default(app, "drain_seconds")))
        grace = float(env.get(f"{prefix}_GRACE_SECONDS") or setting_default(app, "grace_seconds"))
        assert t["spec"]["terminationGracePeriodSeconds"] > prestop + drain + grace, (app, prestop, drain, grace)


def test_pods_are_hardened_and_bounded(ov):
    for wname, t in ov.pod_templates():
        spec = t["spec"]
        pod_sc = spec.get("securityContext", {})
        assert pod_sc.get("runAsNonRoot") is True and pod_sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", wname
        assert spec.get("automountServiceAccountToken") is False, wname
        for c in containers(t):
            sc = c.get("securityContext", {})
            assert sc.get("allowPrivilegeEscalation") is False, wname
            assert sc.get("readOnlyRootFilesystem") is True, wname
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], wname
            assert {"cpu", "memory"} <= set(c["resources"]["requests"]) and {"cpu", "memory"} <= set(c["resources"]["limits"]), wname
            if "/mall/mall:" in c["image"]:  # our image: /tmp is an emptyDir on the read-only root
                mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
                vols = {v["name"]: v for v in spec.get("volumes", [])}
                assert "emptyDir" in vols[mounts["/tmp"]], wname
    for app in APPS:
        spread = ov.kind("Deployment")[app]["spec"]["template"]["spec"]["topologySpreadConstraints"]
        assert {s["topologyKey"] for s in spread} >= {"kubernetes.io/hostname"}, app
        ann = ov.kind("Deployment")[app]["spec"]["template"]["metadata"]["annotations"]
        assert ann["prometheus.io/scrape"] == "true"
        assert resolves(int(ann["prometheus.io/port"]), ov.kind("Deployment")[app]["spec"]["template"]), app


def test_replicas_per_overlay(rendered):
    dev, prod = rendered["dev"], rendered["prod"]
    for app in APPS:
        assert dev.kind("Deployment")[app]["spec"]["replicas"] == 1
        assert app not in dev.kind("HorizontalPodAutoscaler")
        assert "replicas" not in prod.kind("Deployment")[app]["spec"], "the HPA owns replicas in prod"
        hpa = prod.kind("HorizontalPodAutoscaler")[app]
        assert hpa["apiVersion"] == "autoscaling/v2" and hpa["spec"]["minReplicas"] >= 2
        assert any(m["type"] == "Resource" and m["resource"]["name"] == "cpu" for m in hpa["spec"]["metrics"])
        assert prod.kind("PodDisruptionBudget")[app]["spec"]["minAvailable"] >= 1
    assert any(m["type"] == "Pods" for m in prod.kind("HorizontalPodAutoscaler")["gateway"]["spec"]["metrics"])
    # dev runs its data in the cluster; prod refers to external ones
    for svc in SERVICES:
        assert f"{svc}-db" in dev.kind("StatefulSet") and f"{svc}-db" not in prod.kind("StatefulSet")
    assert "nats" in dev.kind("StatefulSet") and "nats" not in prod.kind("StatefulSet")
    nats = dev.kind("StatefulSet")["nats"]["spec"]["template"]["spec"]["containers"][0]
    assert "-js" in nats["args"] and dev.kind("StatefulSet")["nats"]["spec"]["volumeClaimTemplates"]
    for ov in (dev, prod):
        assert "otel-collector" in ov.kind("Deployment")


# ---------------------------------------------------------------- settings


def settings_class(app: str):
    module, name = {
        "gateway": ("gateway.config", "GatewaySettings"),
        "members": ("members.config", "MembersSettings"),
        "points": ("points.config", "PointsSettings"),
        "orders": ("orders.config", "OrdersSettings"),
        "community": ("community.config", "CommunitySettings"),
    }[app]
    return getattr(importlib.import_module(module), name)


def settings_read_by(app: str) -> set[str]:
    from mallkit.settings import PlatformSettings

    names = {f"MALL_{f.upper()}" for f in PlatformSettings.model_fields}
    cls = settings_class(app)
    prefix = cls.model_config["env_prefix"]
    names |= {f"{prefix}{f.upper()}" for f in cls.model_fields if f != "platform"}
    # The standard OTEL_* the SDK reads in mallkit.telemetry.setup_tracing (the sampler: docs/performance.md).
    return names | {"OTEL_SERVICE_NAME", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_TRACES_SAMPLER", "OTEL_TRACES_SAMPLER_ARG"}


def secret_settings(app: str) -> set[str]:
    from mallkit.settings import PlatformSettings

    out = {f"MALL_{f.upper()}" for f, fi in PlatformSettings.model_fields.items() if fi.annotation is SecretStr}
    cls = settings_class(app)
    prefix = cls.model_config["env_prefix"]
    return out | {f"{prefix}{f.upper()}" for f, fi in cls.model_fields.items() if fi.annotation is SecretStr}


def app_containers(ov: Rendered, app: str) -> list[tuple[str, dict]]:
    """The containers running ``app``'s code: its Deployment and (services) its migration Job."""
    out = [(app, ov.kind("Deployment")[app]["spec"]["template"]["spec"]["containers"][0])]
    if app in SERVICES:
        out.append((f"{app}-migrate", ov.kind("Job")[f"{app}-migrate"]["spec"]["template"]["spec"]["containers"][0]))
    return out


def test_settings_given_are_settings_the_code_reads(ov):
    for app in APPS:
        known = settings_read_by(app)
        for wname, c in app_containers(ov, app):
            env = ov.environment(c)
            helpers = {v["name"] for v in c.get("env", []) if any(f"$({v['name']})" in (o.get("value") or "")
                                                                   for o in c.get("env", []))}
            unknown = sorted(set(env) - known - helpers)
            assert not unknown, f"{ov.name} {wname}: not settings of {app}: {unknown}"
    assert not any("EVENT_ROUTES" in k or k == "ORDERS_RELAY_ENABLED" for cm in ov.kind("ConfigMap").values()
                   for k in cm.get("data", {})), "settings being removed (events go through NATS)"


def test_every_required_setting_is_provided(ov):
    for app in APPS:
        for wname, c in app_containers(ov, app):
            env = ov.environment(c)
            required = {"MALL_ENV", "MALL_TOKEN_SECRET", "MALL_NATS_URL", "OTEL_EXPORTER_OTLP_ENDPOINT"}
            required |= {f"MALL_{s.upper()}_ADDR" for s in SERVICES}
            if app in SERVICES:
                required |= {f"{app.upper()}_DATABASE_URL", f"{app.upper()}_HOST", f"{app.upper()}_PORT"}
            else:
                required |= {"GATEWAY_HOST", "GATEWAY_PORT"}
            if env.get("MALL_ENV") == "production":
                required |= secret_settings(app)
                if app == "orders":
                    required |= {"ORDERS_WECHATPAY_PLATFORM_PUBLIC_KEY", "ORDERS_WECHATPAY_NOTIFY_URL",
                                 "ORDERS_WECHATPAY_MCHID", "ORDERS_WECHATPAY_APPID"}
                if app == "members":
                    required |= {"MEMBERS_WECHAT_APPID"}
            missing = sorted(required - set(env))
            assert not missing, f"{ov.name} {wname} lacks {missing}"
            assert env["MALL_ENV"] == {"dev": "development", "prod": "production"}[ov.name]
    for svc, port in SERVICES.items():
        env = ov.environment(ov.kind("Deployment")[svc]["spec"]["template"]["spec"]["containers"][0])
        assert env[f"{svc.upper()}_HOST"] == "0.0.0.0" and int(env[f"{svc.upper()}_PORT"]) == port
        assert int(env[f"{svc.upper()}_METRICS_PORT"]) == 9464
    gw = ov.environment(ov.kind("Deployment")["gateway"]["spec"]["template"]["spec"]["containers"][0])
    assert gw["GATEWAY_HOST"] == "0.0.0.0" and resolves(int(gw["GATEWAY_PORT"]), ov.kind("Deployment")["gateway"]["spec"]["template"])
    assert set(gw["GATEWAY_SERVICES"].split(",")) == set(SERVICES)


def test_addresses_in_settings_name_real_services_and_ports(ov):
    env = ov.environment(ov.kind("Deployment")["gateway"]["spec"]["template"]["spec"]["containers"][0])
    for svc, port in SERVICES.items():
        addr = env[f"MALL_{svc.upper()}_ADDR"]
        m = re.fullmatch(r"dns:///([a-z0-9-]+)\.([a-z0-9-]+)\.svc\.cluster\.local:(\d+)", addr)
        assert m, addr
        assert m.group(1) in ov.kind("Service") and m.group(2) == NAMESPACE
        assert int(m.group(3)) in {p["port"] for p in ov.kind("Service")[m.group(1)]["spec"]["ports"]}
    endpoint = re.fullmatch(r"http://([a-z0-9-]+)\.mall\.svc\.cluster\.local:(\d+)", env["OTEL_EXPORTER_OTLP_ENDPOINT"])
    assert endpoint and endpoint.group(1) in ov.kind("Service")
    if ov.name == "dev":
        nats = re.fullmatch(r"nats://([a-z0-9-]+)\.mall\.svc\.cluster\.local:(\d+)", env["MALL_NATS_URL"])
        assert nats and nats.group(1) in ov.kind("Service")


# ---------------------------------------------------------------- network policies


def policies_selecting(ov: Rendered, workload: str, kind: str) -> list[dict]:
    template = ov.workloads()[workload]["spec"]["template"]
    labels = template["metadata"]["labels"]
    return [p for p in ov.kind("NetworkPolicy").values()
            if kind in p["spec"].get("policyTypes", []) and matches(p["spec"]["podSelector"] or {"matchLabels": {}}, labels)]


def peers_in_namespace(ov: Rendered, peers: list[dict]) -> set[str] | None:
    """Workloads of this namespace a rule's peers allow; None when the rule admits anything."""
    if not peers:
        return None
    out: set[str] = set()
    for peer in peers:
        if "podSelector" in peer and "namespaceSelector" not in peer:
            out |= set(ov.pods_selected(peer["podSelector"] or {"matchLabels": {}}))
    return out


def allowed_in(ov: Rendered, workload: str, port: int) -> set[str] | None:
    allowed: set[str] = set()
    for p in policies_selecting(ov, workload, "Ingress"):
        for rule in p["spec"].get("ingress", []):
            if rule.get("ports") and port not in {x.get("port") for x in rule["ports"]}:
                continue
            peers = peers_in_namespace(ov, rule.get("from", []))
            if peers is None:
                return None
            allowed |= peers
    return allowed


def allowed_out(ov: Rendered, workload: str, target: str, port: int) -> bool:
    for p in policies_selecting(ov, workload, "Egress"):
        for rule in p["spec"].get("egress", []):
            if rule.get("ports") and port not in {x.get("port") for x in rule["ports"]}:
                continue
            peers = peers_in_namespace(ov, rule.get("to", []))
            if peers is None or target in peers:
                return True
    return False


def test_default_deny_and_dns_for_everyone(ov):
    deny = ov.kind("NetworkPolicy")["default-deny"]["spec"]
    assert deny["podSelector"] == {} and set(deny["policyTypes"]) == {"Ingress", "Egress"}
    assert "ingress" not in deny and "egress" not in deny
    dns = ov.kind("NetworkPolicy")["allow-dns"]["spec"]
    assert dns["podSelector"] == {} and {p["port"] for p in dns["egress"][0]["ports"]} == {53}


def test_network_policy_selectors_select_real_pods(ov):
    for name, p in ov.kind("NetworkPolicy").items():
        if p["spec"]["podSelector"]:
            assert ov.pods_selected(p["spec"]["podSelector"]), f"{name} selects no pod"
        for rule in p["spec"].get("ingress", []) + p["spec"].get("egress", []):
            for peer in rule.get("from", []) + rule.get("to", []):
                if "podSelector" in peer and "namespaceSelector" not in peer:
                    assert ov.pods_selected(peer["podSelector"]), f"{name}: peer {peer} selects no pod"


def callers_in_code() -> dict[str, set[str]]:
    """Which service calls which, read from the services' code: a peer channel opened by
    name (``peers.channel("points")``), or a call through the one members client
    (mallkit.members.MembersClient, ``...members.tier(...)``)."""
    members_calls = re.compile(r"members\.(member|tiers|tier|member_tier|ensure_exists|identity|send_reach|stub)\(")
    callers: dict[str, set[str]] = {s: set() for s in SERVICES}
    for caller in SERVICES:
        for path in (ROOT / "services" / caller / caller).rglob("*.py"):
            text = path.read_text()
            for callee in re.findall(r"""channel\(\s*["'](\w+)["']\s*\)""", text):
                if callee in SERVICES and callee != caller:
                    callers[callee].add(caller)
            if caller != "members" and members_calls.search(text):
                callers["members"].add(caller)
    return callers


def test_services_are_reachable_only_from_the_gateway_and_the_peers_that_call_them(ov):
    callers = callers_in_code()
    assert callers["members"] >= {"points", "orders", "community"}  # the reader still reads the code
    for svc, port in SERVICES.items():
        allowed = allowed_in(ov, svc, port)
        assert allowed == {"gateway", *callers[svc]}, f"{ov.name}: {svc} reachable from {allowed}"
        for caller in {"gateway", *callers[svc]}:
            assert allowed_out(ov, caller, svc, port), f"{ov.name}: {caller} cannot call {svc}"
        for other in set(SERVICES) - {svc} - callers[svc]:
            assert not allowed_out(ov, other, svc, port), f"{ov.name}: {other} may call {svc}"


def test_each_database_is_reachable_only_from_its_own_service_and_migration(rendered):
    dev = rendered["dev"]
    everyone = set(dev.workloads())
    for svc in SERVICES:
        own = {svc, f"{svc}-migrate"}
        assert allowed_in(dev, f"{svc}-db", 3306) == own, svc
        reaching = {w for w in everyone if allowed_out(dev, w, f"{svc}-db", 3306)}
        assert reaching == own, f"dev: {svc}-db reachable from {reaching}"
        env = dev.environment(dev.kind("Deployment")[svc]["spec"]["template"]["spec"]["containers"][0])
        assert f"@{svc}-db.mall.svc.cluster.local:3306/{svc}" in env[f"{svc.upper()}_DATABASE_URL"]
    prod = rendered["prod"]
    cidrs = {}
    for name, p in prod.kind("NetworkPolicy").items():
        for rule in p["spec"].get("egress", []):
            if 3306 in {x.get("port") for x in rule.get("ports", [])}:
                for peer in rule["to"]:
                    assert "ipBlock" in peer, f"{name}: the databases are external in prod"
                    pods = set(prod.pods_selected(p["spec"]["podSelector"]))
                    cidrs.setdefault(peer["ipBlock"]["cidr"], set()).update(pods)
    owners = sorted(tuple(sorted(v)) for v in cidrs.values())
    assert owners == sorted(tuple(sorted({s, f"{s}-migrate"})) for s in SERVICES), cidrs
    for w in prod.workloads():  # and no other policy opens 3306 to anything wider
        for p in policies_selecting(prod, w, "Egress"):
            for rule in p["spec"].get("egress", []):
                assert rule.get("ports") or rule.get("to"), f"{p['metadata']['name']} allows all egress"


def test_egress_to_events_traces_and_wechat(ov):
    for app in APPS:
        pols = policies_selecting(ov, app, "Egress")
        ports = {x.get("port") for p in pols for r in p["spec"].get("egress", []) for x in r.get("ports", [])}
        assert {53, 4222, 4317} <= ports, (ov.name, app, ports)
        wechat = any(peer.get("ipBlock", {}).get("cidr") == "0.0.0.0/0" for p in pols
                     for r in p["spec"].get("egress", []) for peer in r.get("to", []))
        assert wechat == (app in ("members", "orders", "points")), (ov.name, app)  # points: its own WeChat Pay merchant
    for job in ov.kind("Job"):
        pols = policies_selecting(ov, job, "Egress")
        ports = {x.get("port") for p in pols for r in p["spec"].get("egress", []) for x in r.get("ports", [])}
        assert ports == {53, 3306}, (job, ports)


# ---------------------------------------------------------------- secrets are never committed


def test_no_secret_file_is_committed_only_examples():
    import subprocess

    tracked = subprocess.run(["git", "ls-files", "k8s"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    for path in tracked.splitlines():
        if "/secrets/" in path:
            assert path.endswith(".example"), f"{path} is committed"
    ignored = subprocess.run(["git", "check-ignore", "-q", "k8s/overlays/prod/secrets/platform.env"], cwd=ROOT)
    assert ignored.returncode == 0, "k8s/overlays/*/secrets/ must be git-ignored"
    for overlay in OVERLAYS:
        kust = (ROOT / "k8s" / "overlays" / overlay / "kustomization.yaml").read_text()
        for ref in re.findall(r"secrets/[\w.-]+", kust):
            assert (ROOT / "k8s" / "overlays" / overlay / f"{ref}.example").exists(), f"{overlay}: {ref} has no example"


def test_dockerfile_runs_as_non_root_from_a_pinned_base():
    text = (Path(ROOT) / "Dockerfile").read_text()
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11\.\d+-slim-\w+$", text, re.M)
    final = text.split("\nFROM ")[-1]
    assert "USER 10001" in final and "HEALTHCHECK" in final and 'ENTRYPOINT ["python", "-m"]' in final
    assert "--no-cache-dir" in text and "pip uninstall --yes grpcio-tools" in text
