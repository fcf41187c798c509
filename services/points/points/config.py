"""Settings of the points service (``POINTS_*``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from mallkit import wechatpay_devkeys as devkeys
from mallkit.settings import DEV_ONLY, ServiceSettings


class PointsSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="POINTS_", extra="ignore")

    port: int = Field(50052, description="gRPC port")
    database_url: str = Field("sqlite+aiosqlite:///var/points.db", description="SQLAlchemy URL")
    purchase_points_per_yuan: int = Field(
        1, ge=0, le=1000, description="Purchase points per yuan paid, before the tier multiplier"
    )
    check_in_points: int = Field(5, ge=0, le=100_000, description="Points of one daily check-in")
    check_in_streak_bonuses: dict[int, int] = Field(
        default_factory=lambda: {3: 10, 7: 30},
        description="Bonus points on day N of a streak cycle (JSON, e.g. {\"3\": 10, \"7\": 30})",
    )
    check_in_streak_cycle: int = Field(
        7, ge=0, description="Streak days after which the bonus cycle starts again (0: never)"
    )
    expiry_policy: Literal["days", "end_of_next_year"] = Field(
        "end_of_next_year", description="When earned points expire: N days after earning, or end of the following year"
    )
    expiry_days: int = Field(365, ge=1, description="N of the 'days' expiry policy")
    expiry_reminder_days: int = Field(
        30, ge=0, description="Days before expiry when the member is reminded (also the expiring-soon horizon)"
    )
    expiry_job_seconds: float = Field(300.0, gt=0, description="Interval of the expiry and reminder jobs")
    reach_job_seconds: float = Field(2.0, gt=0, description="Interval of the job sending queued reaches")
    reach_template_available: str = Field("points_available", description="Template of 'your points are available'")
    reach_template_expiring: str = Field("points_expiring", description="Template of 'your points expire soon'")
    reach_template_redemption_failed: str = Field(
        "redemption_failed", description="Template of 'your redemption failed, the points are back'"
    )
    # --- points + cash: the points mall's own WeChat Pay merchant (the simulator and dev keys by default) ---
    wechatpay_base_url: str = Field("http://127.0.0.1:9200", description="WeChat Pay API base URL (simulator by default)")
    wechatpay_mchid: str = Field(devkeys.MCHID, description="Merchant id (mchid) of the points mall",
                                 json_schema_extra=DEV_ONLY)
    wechatpay_appid: str = Field(devkeys.APPID, description="Mini-program appid paying", json_schema_extra=DEV_ONLY)
    wechatpay_merchant_private_key: SecretStr = Field(SecretStr(devkeys.MERCHANT_PRIVATE_KEY),
                                                      description="Merchant API private key (PEM)",
                                                      json_schema_extra=DEV_ONLY)
    wechatpay_merchant_serial: str = Field(devkeys.MERCHANT_SERIAL, description="Serial of the merchant API certificate",
                                           json_schema_extra=DEV_ONLY)
    wechatpay_apiv3_key: SecretStr = Field(SecretStr(devkeys.APIV3_KEY), description="APIv3 key (32 bytes)",
                                           json_schema_extra=DEV_ONLY)
    wechatpay_platform_public_key: str = Field(devkeys.PLATFORM_PUBLIC_KEY,
                                               description="WeChat Pay platform public key (PEM) verifying notifications",
                                               json_schema_extra=DEV_ONLY)
    wechatpay_platform_serial: str = Field(devkeys.PLATFORM_SERIAL, description="Serial (public key id) of that key",
                                           json_schema_extra=DEV_ONLY)
    wechatpay_notify_url: str = Field("http://127.0.0.1:8080/v1/wechatpay/points/notifications",
                                      description="Public URL WeChat Pay posts the points mall's notifications to")
    wechatpay_window_seconds: int = Field(300, description="Accepted age of a notification's timestamp")
    wechatpay_timeout_seconds: float = Field(5.0, description="Timeout of calls to WeChat Pay")
    cash_pay_timeout_seconds: int = Field(900, ge=60, description="Unpaid points + cash redemptions expire after this")
    cash_job_seconds: float = Field(5.0, gt=0, description="Interval of the job expiring unpaid redemptions and refunding late payments")

    @model_validator(mode="after")
    def _apiv3_key_length(self) -> PointsSettings:
        # The development keys are refused outside development by ServiceSettings (DEV_ONLY fields).
        if len(self.wechatpay_apiv3_key.get_secret_value().encode()) != 32:
            raise ValueError("POINTS_WECHATPAY_APIV3_KEY must be 32 bytes")
        return self
