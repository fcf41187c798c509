"""Render every kustomize overlay of k8s/ for the offline checks.

    python scripts/k8s_render.py [OUT_DIR]      # default gen/k8s: OUT_DIR/<overlay>.yaml

The Secrets of an overlay are generated from git-ignored files (k8s/overlays/*/secrets/);
for the checks, k8s/ is copied to a scratch folder where each missing file is the
``.example`` beside it, so the real secrets are never read and nothing is written
into k8s/. Needs ``kubectl`` (its built-in kustomize).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "k8s"


def overlays() -> list[str]:
    return sorted(p.parent.name for p in (K8S / "overlays").glob("*/kustomization.yaml"))


def _real_secrets(folder: str, names: list[str]) -> list[str]:
    """Never copy the real secret files (only their examples)."""
    return [n for n in names if Path(folder).name == "secrets" and not n.endswith(".example")]


def render_all(out: Path) -> dict[str, Path]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        raise SystemExit("kubectl is needed to render the overlays (kubectl kustomize)")
    out.mkdir(parents=True, exist_ok=True)
    rendered = {}
    with tempfile.TemporaryDirectory(prefix="mall-k8s-") as tmp:
        copy = Path(tmp) / "k8s"
        shutil.copytree(K8S, copy, ignore=_real_secrets)
        for example in copy.glob("overlays/*/secrets/*.example"):
            example.with_suffix("").write_bytes(example.read_bytes())
        for name in overlays():
            proc = subprocess.run([kubectl, "kustomize", str(copy / "overlays" / name)], capture_output=True, text=True)
            if proc.returncode != 0:
                raise SystemExit(f"kubectl kustomize k8s/overlays/{name} failed:\n{proc.stderr}")
            target = out / f"{name}.yaml"
            target.write_text(proc.stdout)
            rendered[name] = target
    return rendered


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "gen" / "k8s"
    for name, path in render_all(out).items():
        print(f"rendered k8s/overlays/{name} -> {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")


if __name__ == "__main__":
    main()
