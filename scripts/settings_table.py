"""Print (or write into README.md) the table of every setting, from the settings classes.

    python scripts/settings_table.py            # print the Markdown table
    python scripts/settings_table.py --write    # replace the table between the README markers
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

from pydantic import SecretStr

ROOT = Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- settings:begin -->", "<!-- settings:end -->"

#: (section title, settings class path) in README order.
SOURCES = [
    ("Shared by every process (`MALL_*`)", "mallkit.settings:PlatformSettings"),
    ("Gateway (`GATEWAY_*`)", "gateway.config:GatewaySettings"),
    ("Members service (`MEMBERS_*`)", "members.config:MembersSettings"),
    ("Points service (`POINTS_*`)", "points.config:PointsSettings"),
    ("Orders service (`ORDERS_*`)", "orders.config:OrdersSettings"),
    ("Community service (`COMMUNITY_*`)", "community.config:CommunitySettings"),
]


def _default(field) -> str:
    if field.default_factory is not None:
        try:
            value = field.default_factory()
        except TypeError:
            value = None
    else:
        value = field.default
    if isinstance(field.json_schema_extra, dict) and field.json_schema_extra.get("dev_only"):
        return "(dev value; required outside development)"
    if isinstance(value, SecretStr) or (isinstance(value, str) and "\n" in value):
        return "(secret)"
    if value is None or value == "":
        return ""
    return f"`{value}`".replace("|", "\\|")


def table() -> str:
    out = []
    for title, path in SOURCES:
        module, name = path.split(":")
        cls = getattr(importlib.import_module(module), name)  # a missing module fails loudly, never a silent gap
        prefix = cls.model_config.get("env_prefix", "")
        out += [f"**{title}**", "", "| variable | default | meaning |", "|---|---|---|"]
        for fname, field in cls.model_fields.items():
            if fname == "platform":
                continue
            meaning = (field.description or "").replace("|", "\\|")
            out.append(f"| `{prefix}{fname.upper()}` | {_default(field)} | {meaning} |")
        out.append("")
    return "\n".join(out)


def main() -> None:
    text = table()
    if "--write" not in sys.argv:
        print(text)
        return
    readme = ROOT / "README.md"
    content = readme.read_text()
    head, rest = content.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{BEGIN}\n{text}\n{END}{tail}")


if __name__ == "__main__":
    main()
