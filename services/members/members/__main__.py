"""``python -m members [serve|migrate|seed|create-admin|disable-staff|enable-staff]``."""

from __future__ import annotations

import os
import sys

from mallkit.cli import Command, main

from .app import SERVICE_DIR, build
from .config import MembersSettings
from .seed import ensure_admin, seed_demo, set_staff_disabled


def _admin_arguments(parser) -> None:
    parser.add_argument("--username", default="admin")
    parser.add_argument("--password", default=os.environ.get("MEMBERS_ADMIN_PASSWORD", ""),
                        help="default: $MEMBERS_ADMIN_PASSWORD")


async def _create_admin(settings, args, engine) -> int:
    if len(args.password) < 10:
        print("create-admin: a password of at least 10 characters is required (--password or MEMBERS_ADMIN_PASSWORD)",
              file=sys.stderr)
        return 2
    created = await ensure_admin(engine, args.username, args.password, settings)
    print(f"admin {args.username!r} {'created' if created else 'already exists'}")
    return 0


def _username_argument(parser) -> None:
    parser.add_argument("--username", required=True)


def _set_disabled(disabled: bool):
    async def run(settings, args, engine) -> int:
        if not await set_staff_disabled(engine, args.username, disabled):
            print(f"no staff account {args.username!r}", file=sys.stderr)
            return 1
        print(f"staff {args.username!r} {'disabled' if disabled else 'enabled'} "
              f"(its tokens stop working within {settings.platform.principal_cache_seconds:.0f}s)")
        return 0

    return run


if __name__ == "__main__":
    main(
        name="members",
        settings_cls=MembersSettings,
        build=build,
        service_dir=SERVICE_DIR,
        seed=seed_demo,
        commands={
            "create-admin": Command("create the first admin staff account", _create_admin, _admin_arguments),
            "disable-staff": Command("disable a staff account (login and tokens refused)", _set_disabled(True),
                                     _username_argument),
            "enable-staff": Command("enable a disabled staff account again", _set_disabled(False), _username_argument),
        },
    )
