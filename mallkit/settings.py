"""Settings from the environment, validated at start.

``PlatformSettings`` holds what every process shares (``MALL_*``): the
environment name, the token secret, where the other services listen. Each
service adds its own ``<SERVICE>_*`` settings in its ``config.py`` by
subclassing :class:`ServiceSettings`.

Outside development the processes refuse to start with the default secrets.
"""

from __future__ import annotations

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEV_TOKEN_SECRET = "dev-only-token-secret-change-me-please"


class PlatformSettings(BaseSettings):
    """Shared settings, ``MALL_*``."""

    model_config = SettingsConfigDict(env_prefix="MALL_", extra="ignore")

    env: str = Field("production", description="development | test | production (anything but development/test is production)")
    token_secret: SecretStr = Field(
        SecretStr(DEV_TOKEN_SECRET), description="HMAC key of session, service and page tokens"
    )
    brand_timezone: str = Field("Asia/Shanghai", description="Time zone of calendar days")
    members_addr: str = Field("127.0.0.1:50051", description="host:port of the members service")
    points_addr: str = Field("127.0.0.1:50052", description="host:port of the points service")
    orders_addr: str = Field("127.0.0.1:50053", description="host:port of the orders service")
    community_addr: str = Field("127.0.0.1:50054", description="host:port of the community service")
    nats_url: str = Field("nats://127.0.0.1:4222", description="NATS server(s) of the event streams (comma-separated URLs)")
    call_timeout_seconds: float = Field(5.0, description="Deadline of service-to-service calls")
    principal_cache_seconds: float = Field(
        30.0, ge=0, le=60,
        description="How long a member/staff account seen active (or, 5 s at most, missing) is remembered; "
                    "a disabled account's tokens stop working within this",
    )
    log_level: str = Field("INFO", description="Log level")
    log_format: str = Field("json", description="json | text")

    @property
    def is_development(self) -> bool:
        return self.env in ("development", "test")

    @model_validator(mode="after")
    def _refuse_default_secrets(self) -> PlatformSettings:
        if not self.is_development and self.token_secret.get_secret_value() == DEV_TOKEN_SECRET:
            raise ValueError("MALL_TOKEN_SECRET must be set outside development")
        if len(self.token_secret.get_secret_value()) < 32:
            raise ValueError("MALL_TOKEN_SECRET must be at least 32 characters")
        return self

    def addr_of(self, service: str) -> str:
        return getattr(self, f"{service}_addr")


class ServiceSettings(BaseSettings):
    """Base of a service's own settings; subclasses set ``env_prefix``."""

    model_config = SettingsConfigDict(extra="ignore")

    host: str = Field("127.0.0.1", description="Interface the gRPC server binds")
    port: int = Field(0, description="gRPC port (0: the default of the service)")
    database_url: str = Field("", description="SQLAlchemy URL (sqlite+aiosqlite or mysql+aiomysql)")
    db_pool_size: int = Field(10, description="Database connection pool size")
    metrics_port: int = Field(0, description="Prometheus /metrics port (0: off)")
    drain_seconds: float = Field(3.0, description="On SIGTERM, time answering NOT_SERVING before the listener closes")
    grace_seconds: float = Field(10.0, description="Then, time given to calls in flight")
    outbox_poll_seconds: float = Field(0.5, description="Outbox relay poll interval")
    outbox_max_backoff_seconds: float = Field(300.0, description="Longest wait between two delivery attempts")
    platform: PlatformSettings = Field(default_factory=lambda: PlatformSettings())
