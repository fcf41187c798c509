"""``python -m points [serve|migrate|seed|check]``."""

from __future__ import annotations

from mallkit.cli import Command, main

from .app import SERVICE_DIR, build
from .config import PointsSettings
from .seed import seed_demo


async def _check(settings, args, engine) -> int:
    from .checker import check_ledger

    report = await check_ledger(engine)
    for problem in report.problems:
        print(problem)
    print(f"points ledger: {report.accounts} accounts, {report.entries} entries, "
          f"{'OK' if report.ok else f'{len(report.problems)} problems'}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    main(
        name="points",
        settings_cls=PointsSettings,
        build=build,
        service_dir=SERVICE_DIR,
        seed=seed_demo,
        commands={"check": Command("verify every account equals its ledger and lots (exit 1 if not)", _check)},
    )
