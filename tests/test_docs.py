"""The README stays true: every setting is documented, and the two commands exist."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_readme_configuration_table_is_complete():
    readme = (ROOT / "README.md").read_text()
    table = subprocess.run([sys.executable, str(ROOT / "scripts" / "settings_table.py")], capture_output=True,
                           text=True, check=True).stdout
    missing = [line.split("`")[1] for line in table.splitlines() if line.startswith("| `") and line.split("`")[1] not in readme]
    assert not missing, f"README lacks settings {missing}: run `python scripts/settings_table.py --write`"


def test_readme_leads_with_the_two_commands_and_make_help_lists_them():
    readme = (ROOT / "README.md").read_text()
    assert readme.index("make run") < readme.index("## Calling the API")
    assert "make test" in readme[: readme.index("## Try it")]
    targets = subprocess.run(["make", "-s", "help"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    for target in ("run", "test", "lint", "protos", "bench", "migrate"):
        assert f" {target} " in targets or f"{target} " in targets


def test_the_dependencies_page_requirements_point_to_exists_and_names_every_pin():
    import re

    for req in ("requirements.txt", "requirements-dev.txt"):
        text = (ROOT / req).read_text()
        for ref in re.findall(r"docs/[\w.-]+\.md", text):
            assert (ROOT / ref).exists(), f"{req} points to {ref}, which does not exist"
    page = (ROOT / "docs" / "dependencies.md").read_text().lower()
    pins = [line.split("==")[0].split("[")[0].strip() for req in ("requirements.txt", "requirements-dev.txt")
            for line in (ROOT / req).read_text().splitlines() if "==" in line and not line.startswith("#")]
    prefixes = ("opentelemetry-", "grpcio-")  # families are named once, by their common prefix
    missing = [p for p in pins if p.lower() not in page and not any(p.startswith(x) and x in page for x in prefixes)]
    assert not missing, f"docs/dependencies.md does not mention {missing}"
