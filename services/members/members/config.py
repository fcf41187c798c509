"""Settings of the members service (``MEMBERS_*``)."""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from mallkit.settings import DEV_ONLY, ServiceSettings

DEV_WECHAT_SECRET = "dev-wechat-secret"


class MembersSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="MEMBERS_", extra="ignore")

    port: int = Field(50051, description="gRPC port")
    database_url: str = Field("sqlite+aiosqlite:///var/members.db", description="SQLAlchemy URL")
    wechat_base_url: str = Field("http://127.0.0.1:9100", description="WeChat API base URL (fake by default)")
    wechat_appid: str = Field("wx0000000000demo", description="Mini-program appid", json_schema_extra=DEV_ONLY)
    wechat_secret: SecretStr = Field(SecretStr(DEV_WECHAT_SECRET), description="Mini-program app secret",
                                     json_schema_extra=DEV_ONLY)
    wechat_timeout_seconds: float = Field(5.0, description="Timeout of calls to WeChat")
    reach_daily_cap: int = Field(3, description="Subscribe messages a member gets per brand day at most")
