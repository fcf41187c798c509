"""Settings from the environment, validated at start.

``PlatformSettings`` holds what every process shares (``MALL_*``): the
environment name, the token secret, where the other services listen. Each
service adds its own ``<SERVICE>_*`` settings in its ``config.py`` by
subclassing :class:`ServiceSettings`.

Outside development (``MALL_ENV`` other than development/test; production is the
default) the processes refuse to start while any setting marked :data:`DEV_ONLY`
(secrets, keys, serials, demo ids) still holds its development value.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEV_TOKEN_SECRET = "dev-only-token-secret-change-me-please"

#: ``json_schema_extra`` of a field whose default is for development only: outside
#: development the process refuses to start until the environment sets it.
DEV_ONLY: dict[str, Any] = {"dev_only": True}
DEVELOPMENT_ENVS = ("development", "test")


def _plain(value: object) -> object:
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if isinstance(value, str):
        return "".join(value.split())  # the same PEM with other line breaks is the same key
    return value


def refuse_development_values(settings: BaseSettings, env: str) -> None:
    """Outside development, raise naming every DEV_ONLY setting still at its development value
    (names only: a value never reaches an error message or a log)."""
    if env in DEVELOPMENT_ENVS:
        return
    prefix = settings.model_config.get("env_prefix", "")
    left = [
        f"{prefix}{name.upper()}"
        for name, field in type(settings).model_fields.items()
        if isinstance(field.json_schema_extra, dict) and field.json_schema_extra.get("dev_only")
        and _plain(getattr(settings, name)) == _plain(field.get_default(call_default_factory=True))
    ]
    if left:
        raise ValueError(f"MALL_ENV={env}: development values are refused, set {', '.join(left)}")


class PlatformSettings(BaseSettings):
    """Shared settings, ``MALL_*``."""

    # hide_input_in_errors: a refused configuration names the variable, never echoes its (secret) value.
    model_config = SettingsConfigDict(env_prefix="MALL_", extra="ignore", hide_input_in_errors=True)

    env: str = Field("production", description="development | test | production (anything but development/test is production)")
    token_secret: SecretStr = Field(
        SecretStr(DEV_TOKEN_SECRET), description="HMAC key of session, service and page tokens",
        json_schema_extra=DEV_ONLY,
    )
    brand_timezone: str = Field("Asia/Shanghai", description="Time zone of calendar days")
    members_addr: str = Field("127.0.0.1:50051", description="host:port of the members service")
    points_addr: str = Field("127.0.0.1:50052", description="host:port of the points service")
    orders_addr: str = Field("127.0.0.1:50053", description="host:port of the orders service")
    community_addr: str = Field("127.0.0.1:50054", description="host:port of the community service")
    nats_url: str = Field("nats://127.0.0.1:4222", description="NATS server(s) of the event streams (comma-separated URLs)")
    event_namespace: str = Field("mall", pattern=r"^[a-z][a-z0-9_]{0,30}$",
                                 description="Prefix of every stream and subject (several systems on one NATS)")
    event_max_deliveries: int = Field(5, ge=1, description="Deliveries of a failing event before it is dead-lettered")
    event_ack_wait_seconds: float = Field(30.0, gt=0, description="Redelivery of an event not acknowledged within this")
    event_retention_days: float = Field(30.0, ge=0, description="How long the streams keep events for replay (0: for ever)")
    event_duplicate_window_seconds: float = Field(1800.0, gt=0, description="Window in which the server drops a republished event id")
    event_stream_replicas: int = Field(1, ge=1, le=5, description="Replicas of each stream (JetStream cluster)")
    members_cache_seconds: float = Field(60.0, ge=0, description="How long tiers read from members are cached")
    call_timeout_seconds: float = Field(5.0, description="Deadline of service-to-service calls")
    principal_cache_seconds: float = Field(
        30.0, ge=0, le=60,
        description="How long a member/staff account seen active (or, 5 s at most, missing) is remembered; "
                    "a disabled account's tokens stop working within this",
    )
    log_level: str = Field("INFO", description="Log level")
    log_format: str = Field("json", description="json | text")
    trace_sql: bool = Field(True, description="A span per SQL statement in sampled traces (false: none, the RPC span stays)")

    @property
    def is_development(self) -> bool:
        return self.env in DEVELOPMENT_ENVS

    @model_validator(mode="after")
    def _refuse_default_secrets(self) -> PlatformSettings:
        refuse_development_values(self, self.env)
        if len(self.token_secret.get_secret_value()) < 32:
            raise ValueError("MALL_TOKEN_SECRET must be at least 32 characters")
        return self

    def addr_of(self, service: str) -> str:
        return getattr(self, f"{service}_addr")


class ServiceSettings(BaseSettings):
    """Base of a service's own settings; subclasses set ``env_prefix``."""

    model_config = SettingsConfigDict(extra="ignore", hide_input_in_errors=True)

    host: str = Field("127.0.0.1", description="Interface the gRPC server binds")
    port: int = Field(0, description="gRPC port (0: the default of the service)")
    database_url: str = Field("", description="SQLAlchemy URL (sqlite+aiosqlite or mysql+aiomysql)")
    db_pool_size: int = Field(10, description="Database connection pool size")
    workers: int = Field(1, ge=1, le=64, description="Server processes sharing the gRPC port (SO_REUSEPORT); each has its own pool")
    metrics_port: int = Field(0, description="Prometheus /metrics port (0: off)")
    drain_seconds: float = Field(3.0, description="On SIGTERM, time answering NOT_SERVING before the listener closes")
    grace_seconds: float = Field(10.0, description="Then, time given to calls in flight")
    max_connection_age_seconds: float = Field(
        300.0, ge=0, description="Callers' connections are closed (gracefully) after this, so they resolve new pods (0: never)")
    relay_enabled: bool = Field(True, description="Run the outbox relay (publisher to NATS) in this process")
    outbox_poll_seconds: float = Field(0.2, description="Outbox relay poll interval when idle")
    outbox_max_backoff_seconds: float = Field(300.0, description="Longest wait between two delivery attempts")
    platform: PlatformSettings = Field(default_factory=lambda: PlatformSettings())

    @model_validator(mode="after")
    def _refuse_development_values(self) -> ServiceSettings:
        refuse_development_values(self, self.platform.env)
        return self
