"""Settings of the orders service (``ORDERS_*``)."""

from __future__ import annotations

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from mallkit import wechatpay_devkeys as devkeys
from mallkit.settings import DEV_ONLY, ServiceSettings


class OrdersSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="ORDERS_", extra="ignore")

    port: int = Field(50053, description="gRPC port")
    database_url: str = Field("sqlite+aiosqlite:///var/orders.db", description="SQLAlchemy URL")
    # --- WeChat Pay v3 (the local simulator and dev keys by default) ---
    wechatpay_base_url: str = Field("http://127.0.0.1:9200", description="WeChat Pay API base URL (simulator by default)")
    wechatpay_mchid: str = Field(devkeys.MCHID, description="Merchant id (mchid)", json_schema_extra=DEV_ONLY)
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
    wechatpay_notify_url: str = Field("http://127.0.0.1:8080/v1/wechatpay/notifications",
                                      description="Public URL WeChat Pay posts payment notifications to")
    wechatpay_window_seconds: int = Field(300, description="Accepted age of a notification's timestamp")
    wechatpay_timeout_seconds: float = Field(5.0, description="Timeout of calls to WeChat Pay")
    # --- orders ---
    pay_timeout_seconds: int = Field(1800, description="Unpaid orders are cancelled after this")
    pay_reminder_seconds: int = Field(900, description="Unpaid orders get a reminder after this")
    catalog_cache_seconds: float = Field(10.0, ge=0, le=60, description=(
        "How long a replica may answer a member's GetProduct from memory (0: never). Committed product and "
        "SKU writes (stock included) drop it on every replica at once (core NATS); this bounds staleness "
        "should a broadcast be lost"))
    flash_soldout_ttl_seconds: float = Field(
        1.0, ge=0.05, le=10.0,
        description="A flash sale seen sold out is refused from memory for this long, then one attempt looks again")
    after_sales_days: float = Field(7, description="After-sales window after shipping, in days")
    care_after_days: float = Field(3, description="Care message this many days after payment")
    jobs_enabled: bool = Field(True, description="Run the scheduled jobs in this process")
    jobs_interval_seconds: float = Field(5.0, description="Interval of the scheduled jobs")
    campaign_page_size: int = Field(1000, ge=1, le=1000,
                                    description="Members per page (and per transaction) of a coupon campaign")
    campaign_lease_seconds: float = Field(120.0, gt=0,
                                          description="Lease of a runner on a coupon campaign, renewed every page")
    reach_template_ids: dict[str, str] = Field(
        default_factory=lambda: {"payment_success": "tmpl-pay-ok", "care": "tmpl-care", "window_closed": "tmpl-window",
                                 "repurchase": "tmpl-repurchase", "pay_reminder": "tmpl-pay-reminder"},
        description="Journey step -> subscribe-message template id",
    )

    @model_validator(mode="after")
    def _apiv3_key_length(self) -> OrdersSettings:
        # The development keys are refused outside development by ServiceSettings (DEV_ONLY fields).
        if len(self.wechatpay_apiv3_key.get_secret_value().encode()) != 32:
            raise ValueError("ORDERS_WECHATPAY_APIV3_KEY must be 32 bytes")
        return self
