"""Fail closed on configuration: production is the default, and no development secret or key starts there."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from community.config import CommunitySettings
from gateway.config import GatewaySettings
from mallkit import wechatpay_devkeys as devkeys
from mallkit.settings import DEV_TOKEN_SECRET, PlatformSettings
from members.config import DEV_WECHAT_SECRET, MembersSettings
from orders.config import OrdersSettings
from points.config import PointsSettings

ROOT = Path(__file__).resolve().parents[2]

#: Every development-only value of every process, by variable.
DEV_VARS = {
    "MALL_TOKEN_SECRET": DEV_TOKEN_SECRET,
    "MEMBERS_WECHAT_APPID": "wx0000000000demo",
    "MEMBERS_WECHAT_SECRET": DEV_WECHAT_SECRET,
    "ORDERS_WECHATPAY_MCHID": devkeys.MCHID,
    "ORDERS_WECHATPAY_APPID": devkeys.APPID,
    "ORDERS_WECHATPAY_MERCHANT_PRIVATE_KEY": devkeys.MERCHANT_PRIVATE_KEY,
    "ORDERS_WECHATPAY_MERCHANT_SERIAL": devkeys.MERCHANT_SERIAL,
    "ORDERS_WECHATPAY_APIV3_KEY": devkeys.APIV3_KEY,
    "ORDERS_WECHATPAY_PLATFORM_PUBLIC_KEY": devkeys.PLATFORM_PUBLIC_KEY,
    "ORDERS_WECHATPAY_PLATFORM_SERIAL": devkeys.PLATFORM_SERIAL,
    **{f"POINTS_WECHATPAY_{k}": v for k, v in {
        "MCHID": devkeys.MCHID, "APPID": devkeys.APPID, "MERCHANT_PRIVATE_KEY": devkeys.MERCHANT_PRIVATE_KEY,
        "MERCHANT_SERIAL": devkeys.MERCHANT_SERIAL, "APIV3_KEY": devkeys.APIV3_KEY,
        "PLATFORM_PUBLIC_KEY": devkeys.PLATFORM_PUBLIC_KEY, "PLATFORM_SERIAL": devkeys.PLATFORM_SERIAL}.items()},
}
PRODUCTION_VALUES = {
    "MALL_TOKEN_SECRET": "prod-token-secret-0123456789-abcdefghij",
    "MEMBERS_WECHAT_APPID": "wx1234567890abcdef",
    "MEMBERS_WECHAT_SECRET": "prod-wechat-secret",
    "ORDERS_WECHATPAY_MCHID": "1230000109",
    "ORDERS_WECHATPAY_APPID": "wx1234567890abcdef",
    "ORDERS_WECHATPAY_MERCHANT_PRIVATE_KEY": "-----BEGIN PRIVATE KEY-----\nprod\n-----END PRIVATE KEY-----\n",
    "ORDERS_WECHATPAY_MERCHANT_SERIAL": "5157F09EFDC096DE15EBE81A47057A7232F1B8E1",
    "ORDERS_WECHATPAY_APIV3_KEY": "prod-apiv3-key-0123456789abcdefg",
    "ORDERS_WECHATPAY_PLATFORM_PUBLIC_KEY": "-----BEGIN PUBLIC KEY-----\nprod\n-----END PUBLIC KEY-----\n",
    "ORDERS_WECHATPAY_PLATFORM_SERIAL": "PUB_KEY_ID_0114232134912410000000000000",
}
PRODUCTION_VALUES.update({n.replace("ORDERS_", "POINTS_"): v for n, v in PRODUCTION_VALUES.items()
                          if n.startswith("ORDERS_")})
CLASSES = [GatewaySettings, MembersSettings, PointsSettings, OrdersSettings, CommunitySettings]


@pytest.fixture
def clean_env(monkeypatch):
    for name in list(os.environ):
        if name.startswith(("MALL_", "GATEWAY_", "MEMBERS_", "POINTS_", "ORDERS_", "COMMUNITY_")):
            monkeypatch.delenv(name)
    return monkeypatch


def test_production_is_the_default(clean_env):
    with pytest.raises(ValidationError, match="MALL_TOKEN_SECRET"):
        PlatformSettings()
    assert PlatformSettings(env="development").is_development


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_every_development_value_is_refused_in_production(clean_env, cls):
    for name, value in PRODUCTION_VALUES.items():
        clean_env.setenv(name, value)
    cls()  # every secret and key set: starts
    prefix = cls.model_config["env_prefix"]
    own = [n for n in DEV_VARS if n.startswith(("MALL_", prefix))]
    for name in own:  # any one left at its development value: refused, and named
        clean_env.setenv(name, DEV_VARS[name])
        with pytest.raises(ValidationError) as e:
            cls()
        assert name in str(e.value)
        assert DEV_VARS[name].strip().splitlines()[-1] not in str(e.value)  # names only, never the value
        clean_env.setenv(name, PRODUCTION_VALUES[name])


def test_the_same_dev_key_with_other_line_breaks_is_still_refused(clean_env):
    for name, value in PRODUCTION_VALUES.items():
        clean_env.setenv(name, value)
    clean_env.setenv("ORDERS_WECHATPAY_PLATFORM_PUBLIC_KEY", devkeys.PLATFORM_PUBLIC_KEY.replace("\n", "\r\n") + "\n")
    with pytest.raises(ValidationError, match="ORDERS_WECHATPAY_PLATFORM_PUBLIC_KEY"):
        OrdersSettings()


@pytest.mark.parametrize("module", ["gateway", "members", "points", "orders", "community"])
def test_processes_refuse_to_start_without_mall_env_and_secrets(module):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MALL_", "GATEWAY_", "MEMBERS_", "POINTS_", "ORDERS_", "COMMUNITY_"))}
    proc = subprocess.run([sys.executable, "-m", module], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode != 0
    assert "MALL_TOKEN_SECRET" in proc.stderr, proc.stderr[-2000:]
    assert DEV_TOKEN_SECRET not in proc.stderr + proc.stdout
