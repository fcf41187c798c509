"""Settings of the members service (``MEMBERS_*``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
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
    member_cache_seconds: float = Field(10.0, ge=0, le=60, description=(
        "How long a replica may answer GetMember from memory (0: never). Committed writes drop the "
        "member on every replica at once (core NATS); this bounds staleness should a broadcast be lost"))
    reach_daily_cap: int = Field(3, description="Subscribe messages a member gets per brand day at most")
    behaviour_max_age_days: int = Field(7, ge=1, description="Client behaviour events older than this are refused")
    behaviour_clock_skew_seconds: int = Field(
        300, ge=0, description="How far in the future a client behaviour event's time may be (device clocks)")

    rfm_method: Literal["thresholds", "quintiles"] = Field(
        "thresholds", description="RFM scores 1-5 by the thresholds below, or by quintiles of the scored members")
    rfm_window_days: int = Field(365, ge=1, description="RFM window: F and M count paid orders of the last N days")
    rfm_recency_days: list[int] = Field(
        default_factory=lambda: [30, 60, 90, 180],
        description="R thresholds (JSON): days since the last paid order at most these for R = 5, 4, 3, 2; else 1")
    rfm_frequency_orders: list[int] = Field(
        default_factory=lambda: [2, 3, 5, 8],
        description="F thresholds (JSON): paid orders at least these for F = 2, 3, 4, 5; else 1")
    rfm_monetary_fen: list[int] = Field(
        default_factory=lambda: [10_000, 50_000, 100_000, 300_000],
        description="M thresholds (JSON, fen): amount paid at least these for M = 2, 3, 4, 5; else 1")
    rfm_high_score: int = Field(3, ge=2, le=5, description="A score at least this is 'high' in the eight segments")
    rfm_interval_seconds: float = Field(3600.0, gt=0, description="How often the RFM job recomputes the model")
    rfm_work_mem_mb: int = Field(512, ge=16, le=65536, description=(
        "MariaDB/MySQL: tmp_table_size of the RFM recompute's session (MB), so its per-member aggregate and "
        "quintile sorts stay in memory (at 1M members the 16 MB default spills them to disk: 3.5x slower)"))
    member360_peer_timeout_seconds: float = Field(
        1.0, gt=0, description="Deadline of each peer call (points, community) of Member 360")
    attribution_window_days: int = Field(
        7, ge=1, le=90, description="A registration is credited to an arrival (channel code scan, content share) "
                                    "of the same visitor at most this many days before it")
    auto_tag_interval_seconds: float = Field(600.0, gt=0, description="How often the job applies auto-tag rules")
    guide_task_interval_seconds: float = Field(
        60.0, gt=0, description="How often the jobs create due rounds of recurring guide tasks and send reminders")

    @field_validator("rfm_recency_days", "rfm_frequency_orders", "rfm_monetary_fen")
    @classmethod
    def _four_ascending(cls, v: list[int]) -> list[int]:
        if len(v) != 4 or any(b <= a for a, b in zip(v, v[1:], strict=False)) or v[0] < 0:
            raise ValueError("must be four ascending non-negative numbers")
        return v

    @model_validator(mode="after")
    def _refuse_default_secrets(self) -> MembersSettings:
        if not self.platform.is_development and self.wechat_secret.get_secret_value() == DEV_WECHAT_SECRET:
            raise ValueError("MEMBERS_WECHAT_SECRET must be set outside development")
        return self
