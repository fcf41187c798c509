"""docs/runbook.md stays true: every kubectl and make command in it names what exists.

The objects a kubectl command names (``deploy/orders``, ``job orders-migrate``, a label
selector, an overlay folder) exist in the rendered overlays; the make targets exist in
the Makefile; ``python -m <svc> <command>`` names a real service and command. Every
alert of k8s/alerts/mall-alerts.yaml has its section, and uses metrics the code exports.
"""

from __future__ import annotations

import re
import shlex

import yaml

from tests.k8s.conftest import NAMESPACE, ROOT, Rendered

RUNBOOK = ROOT / "docs" / "runbook.md"
KINDS = {
    "deploy": "Deployment", "deployment": "Deployment", "statefulset": "StatefulSet", "sts": "StatefulSet",
    "job": "Job", "svc": "Service", "service": "Service", "hpa": "HorizontalPodAutoscaler",
    "pdb": "PodDisruptionBudget", "secret": "Secret", "configmap": "ConfigMap", "networkpolicy": "NetworkPolicy",
}
VERBS = {"get", "describe", "logs", "exec", "apply", "delete", "wait", "rollout", "patch", "scale", "cordon",
         "drain", "uncordon", "top", "config", "kustomize"}


def commands() -> list[str]:
    """Every kubectl / make command of the runbook: lines of its code blocks and inline code."""
    text = RUNBOOK.read_text()
    out = []
    for block in re.findall(r"```sh\n(.*?)```", text, re.S):
        out += [line.strip() for line in block.splitlines() if line.strip() and not line.strip().startswith("#")]
    for span in re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S)):
        if span.startswith(("kubectl ", "make ")):
            out.append(span)
    return out


def segments(command: str) -> list[list[str]]:
    parts = []
    for seg in command.split(" | "):
        seg = re.split(r" [<>] ", seg)[0]  # redirections to / from local files
        parts.append(shlex.split(seg))
    return parts


def makefile_targets() -> set[str]:
    return set(re.findall(r"^([a-zA-Z0-9_-]+):", (ROOT / "Makefile").read_text(), re.M))


def exists(rendered: dict[str, Rendered], kind: str, name: str) -> bool:
    return any(name in ov.kind(kind) for ov in rendered.values())


def selects(rendered: dict[str, Rendered], selector: str) -> bool:
    pairs = dict(p.split("=", 1) for p in selector.split(","))
    for ov in rendered.values():
        labelled = [o["metadata"].get("labels", {}) for o in ov.objects]
        labelled += [t["metadata"].get("labels", {}) for _, t in ov.pod_templates()]
        if any(all(labels.get(k) == v for k, v in pairs.items()) for labels in labelled):
            return True
    return False


def subcommands(path) -> set[str]:
    text = (ROOT / path).read_text()
    return set(re.findall(r"""add_parser\(\s*["']([\w-]+)["']""", text)) | set(re.findall(r"""["']([\w-]+)["']:\s*Command\(""", text))


def check_python_command(tokens: list[str]) -> list[str]:
    """``python -m <svc> <command>`` (mallkit/cli.py and the service's own commands) or
    ``python -m mallkit.dlq <command>``."""
    if "python" not in tokens:
        return []
    rest = tokens[tokens.index("python"):]
    assert rest[1] == "-m", rest
    module, cmd = rest[2], (rest[3] if len(rest) > 3 else "serve")
    if module == "mallkit.dlq":
        return [] if cmd in subcommands("mallkit/dlq.py") else [f"python -m mallkit.dlq has no command {cmd}"]
    main = ROOT / "services" / module / module / "__main__.py"
    if not main.exists():
        return [f"no service {module}"]
    if cmd not in subcommands("mallkit/cli.py") | subcommands(main):
        return [f"python -m {module} has no command {cmd}"]
    if cmd == "dlq" and rest[4] not in {"list", "replay"}:
        return [f"python -m {module} dlq {rest[4]}?"]
    return []


def check_kubectl(tokens: list[str], rendered) -> list[str]:
    problems = []
    if "-n" in tokens and tokens[tokens.index("-n") + 1] != NAMESPACE:
        problems.append("namespace is not mall")
    words = [t for t in tokens[1:] if not t.startswith("-")]
    if words[0] == "-n" or (tokens[1] == "-n"):
        words = [t for t in tokens[3:] if not t.startswith("-")]
    if not words or words[0] not in VERBS:
        return problems + [f"unknown verb in {tokens}"]
    for i, tok in enumerate(tokens):
        m = re.fullmatch(r"([a-z]+)/([a-z0-9-]+)", tok)
        if m and m.group(1) in KINDS and not exists(rendered, KINDS[m.group(1)], m.group(2)):
            problems.append(f"no {tok} in any overlay")
        if tok in KINDS and i + 1 < len(tokens) and re.fullmatch(r"[a-z0-9-]+", tokens[i + 1]) \
                and tokens[i - 1] in {"get", "describe", "patch", "delete"}:
            if not exists(rendered, KINDS[tok], tokens[i + 1]):
                problems.append(f"no {tok} {tokens[i + 1]} in any overlay")
        if tok in ("-l", "--selector") and not selects(rendered, tokens[i + 1]):
            problems.append(f"selector {tokens[i + 1]} selects nothing")
        if tok in ("-k", "kustomize") and i + 1 < len(tokens) and not (ROOT / tokens[i + 1]).is_dir():
            problems.append(f"no folder {tokens[i + 1]}")
    if words[0] == "rollout":
        if words[1] not in {"status", "history", "undo", "restart"}:
            problems.append(f"kubectl rollout {words[1]}?")
    return problems + check_python_command(tokens)


def check_make(tokens: list[str]) -> list[str]:
    problems = []
    targets = makefile_targets()
    for tok in tokens[1:]:
        if "=" in tok:
            var, value = tok.split("=", 1)
            if var == "OVERLAY" and not (ROOT / "k8s" / "overlays" / value / "kustomization.yaml").exists():
                problems.append(f"no overlay {value}")
        elif tok not in targets:
            problems.append(f"no make target {tok}")
    return problems


def test_the_runbook_covers_every_task_of_the_issue():
    text = RUNBOOK.read_text()
    for section in ("Deploy", "Migrate", "Roll back", "Scale", "Rotate a secret", "Read a trace for a failed order",
                    "Find and replay a dead-lettered event", "Drain a node", "Restore a database", "Alerts"):
        assert f"\n## {section}\n" in text, section


def test_every_command_of_the_runbook_names_real_objects_targets_and_commands(rendered):
    cmds = commands()
    assert sum(c.startswith("kubectl") for c in cmds) >= 30 and sum(c.startswith("make") for c in cmds) >= 3
    problems = []
    for command in cmds:
        for tokens in segments(command):
            if tokens[0] == "kubectl":
                problems += [f"{command}: {p}" for p in check_kubectl(tokens, rendered)]
            elif tokens[0] == "make":
                problems += [f"{command}: {p}" for p in check_make(tokens)]
            elif tokens[0] not in {"grep"} and command.startswith(("kubectl", "make")):
                problems.append(f"{command}: {tokens[0]} is neither kubectl nor make")
    for command in cmds:
        assert command.split()[0] in {"kubectl", "make"}, f"not a kubectl or make command: {command}"
    assert not problems, "\n".join(problems)


def test_the_checker_catches_a_wrong_name(rendered):
    assert check_kubectl(shlex.split("kubectl -n mall rollout undo deploy/order"), rendered)
    assert check_kubectl(shlex.split("kubectl -n mall delete job order-migrate"), rendered)
    assert check_kubectl(shlex.split("kubectl -n mall get pods -l app.kubernetes.io/name=nobody"), rendered)
    assert check_kubectl(shlex.split("kubectl -n mall exec deploy/orders -- python -m orders frobnicate"), rendered)
    assert check_make(["make", "k8s-deploy", "OVERLAY=staging"]) and check_make(["make", "deploy-all"])
    assert not check_kubectl(shlex.split("kubectl -n mall rollout undo deploy/orders"), rendered)


def test_every_alert_has_its_runbook_section_and_real_metrics():
    rules = yaml.safe_load((ROOT / "k8s" / "alerts" / "mall-alerts.yaml").read_text())
    text = RUNBOOK.read_text()
    exported = (ROOT / "mallkit" / "telemetry.py").read_text() + (ROOT / "gateway" / "gateway" / "metrics.py").read_text()
    alerts = [r for g in rules["groups"] for r in g["rules"]]
    assert len(alerts) >= 6
    for rule in alerts:
        name = rule["alert"]
        assert f"\n### {name}\n" in text, f"runbook has no section for {name}"
        assert rule["annotations"]["runbook_url"] == f"docs/runbook.md#{name.lower()}"
        assert rule["labels"]["severity"] in {"page", "ticket"}
        for metric in re.findall(r"\b(mall_[a-z_]+)", rule["expr"]):
            base = re.sub(r"_(bucket|count|sum)$", "", metric)
            assert f'"{base}"' in exported, f"{name} uses {metric}, which nothing exports"
