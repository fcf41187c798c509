"""Settings of the members service (``MEMBERS_*``)."""

from __future__ import annotations

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from mallkit.settings import ServiceSettings

DEV_WECHAT_SECRET = "dev-wechat-secret"


class MembersSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="MEMBERS_", extra="ignore")

    port: int = Field(50051, description="gRPC port")
    database_url: str = Field("sqlite+aiosqlite:///var/members.db", description="SQLAlchemy URL")
    wechat_base_url: str = Field("http://127.0.0.1:9100", description="WeChat API base URL (fake by default)")
    wechat_appid: str = Field("wx0000000000demo", description="Mini-program appid")
    wechat_secret: SecretStr = Field(SecretStr(DEV_WECHAT_SECRET), description="Mini-program app secret")
    wechat_timeout_seconds: float = Field(5.0, description="Timeout of calls to WeChat")
    reach_daily_cap: int = Field(3, description="Subscribe messages a member gets per brand day at most")
    behaviour_max_age_days: int = Field(7, ge=1, description="Client behaviour events older than this are refused")
    behaviour_clock_skew_seconds: int = Field(
        300, ge=0, description="How far in the future a client behaviour event's time may be (device clocks)")

    @model_validator(mode="after")
    def _refuse_default_secrets(self) -> MembersSettings:
        if not self.platform.is_development and self.wechat_secret.get_secret_value() == DEV_WECHAT_SECRET:
            raise ValueError("MEMBERS_WECHAT_SECRET must be set outside development")
        return self
