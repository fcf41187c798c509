"""Gateway settings (``GATEWAY_*``) and the registry of the services it exposes.

Exposing one more service is one line in :data:`SERVICES` plus its name in
``GATEWAY_SERVICES``; its routes, access rules and documentation all come from
the service's proto.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Annotated

from google.protobuf.descriptor import ServiceDescriptor
from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from mallkit.settings import PlatformSettings


@dataclass(frozen=True)
class ServiceEntry:
    """Where the generated code of a service lives."""

    module: str  # "mall.members.v1.members_service_pb2"
    service: str  # "MembersService"

    def descriptor(self) -> ServiceDescriptor:
        return importlib.import_module(self.module).DESCRIPTOR.services_by_name[self.service]


#: Services the gateway knows how to expose, by the name used in settings and in
#: ``PlatformSettings.addr_of`` (``MALL_<NAME>_ADDR``).
SERVICES: dict[str, ServiceEntry] = {
    "members": ServiceEntry("mall.members.v1.members_service_pb2", "MembersService"),
    "points": ServiceEntry("mall.points.v1.points_service_pb2", "PointsService"),
    "orders": ServiceEntry("mall.orders.v1.orders_service_pb2", "OrdersService"),
    "community": ServiceEntry("mall.community.v1.community_service_pb2", "CommunityService"),
}


class GatewaySettings(BaseSettings):
    """Settings of the HTTP gateway, ``GATEWAY_*`` (shared ones are ``MALL_*``)."""

    model_config = SettingsConfigDict(env_prefix="GATEWAY_", extra="ignore", hide_input_in_errors=True)

    host: str = Field("127.0.0.1", description="Interface the HTTP server binds")
    port: int = Field(8080, description="HTTP port (0: any free port)")
    services: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["members", "points", "orders", "community"],
        description='Services to expose, comma-separated ("members,points") or a JSON list',
    )
    max_body_bytes: int = Field(65536, ge=0, description="Largest request body accepted (413 above)")
    rate_per_ip: float = Field(20.0, ge=0, description="Requests per second per client IP (0: no limit)")
    burst_per_ip: int = Field(40, ge=1, description="Burst allowed per client IP")
    rate_per_member: float = Field(
        10.0, ge=0, description="Requests per second per signed-in caller (0: no limit)"
    )
    burst_per_member: int = Field(20, ge=1, description="Burst allowed per signed-in caller")
    rate_limit_max_keys: int = Field(
        100_000, ge=1, description="Most clients tracked per limiter (idle ones are evicted first)"
    )
    call_timeout_seconds: float = Field(10.0, gt=0, description="Deadline of each upstream call")
    health_timeout_seconds: float = Field(1.0, gt=0, description="Deadline of each upstream health check")
    forwarded_allow_ips: str = Field(
        "127.0.0.1",
        description="Proxies trusted to set X-Forwarded-For (uvicorn's forwarded_allow_ips)",
    )
    grace_seconds: int = Field(10, ge=0, description="Time given to requests in flight on SIGTERM")
    access_log: bool = Field(
        False, description="One JSON log line per request (method, route, status, duration, request id; about "
        "60 us of gateway CPU each); off: the metrics count every request and failed upstream calls are logged")
    workers: int = Field(1, ge=1, le=64, description="uvicorn worker processes sharing the HTTP port")
    platform: PlatformSettings = Field(default_factory=PlatformSettings)

    @field_validator("services", mode="before")
    @classmethod
    def _split_services(cls, value: object) -> object:
        if isinstance(value, str):
            value = value.strip()
            if value.startswith("["):
                import json

                return json.loads(value)
            return [s.strip() for s in value.split(",") if s.strip()]
        return value

    @field_validator("services")
    @classmethod
    def _known_services(cls, value: list[str]) -> list[str]:
        unknown = [s for s in value if s not in SERVICES]
        if unknown:
            raise ValueError(f"unknown services {unknown}; known: {sorted(SERVICES)}")
        if len(set(value)) != len(value):
            raise ValueError("services are listed more than once")
        return value

    def upstream_addr(self, service: str) -> str:
        return self.platform.addr_of(service)
