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
