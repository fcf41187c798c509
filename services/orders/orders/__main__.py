"""``python -m orders [serve|migrate|seed]``."""

from __future__ import annotations

from mallkit.cli import main

from .app import SERVICE_DIR, build
from .config import OrdersSettings
from .seed import seed_demo

if __name__ == "__main__":
    main(name="orders", settings_cls=OrdersSettings, build=build, service_dir=SERVICE_DIR,
         seed=seed_demo)
