"""Settings of the community service (``COMMUNITY_*``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from mallkit.settings import ServiceSettings


class CommunitySettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="COMMUNITY_", extra="ignore")

    port: int = Field(50054, description="gRPC port")
    database_url: str = Field("sqlite+aiosqlite:///var/community.db", description="SQLAlchemy URL")
    default_capacity: int = Field(500, ge=2, le=2000, description="Capacity of a group created without one")
    broadcast_daily_cap: int = Field(1, ge=1, le=20, description="Broadcasts a member gets per brand day at most")
    activity_window_days: int = Field(30, ge=1, le=366, description="Default window of 'active in community'")
    publish_interval_seconds: float = Field(5.0, gt=0, description="How often scheduled posts are published")
    close_interval_seconds: float = Field(30.0, gt=0, description="How often ended flash groups are closed")
    broadcast_interval_seconds: float = Field(5.0, gt=0, description="How often due segment broadcast rounds are run")
    broadcast_page_size: int = Field(500, ge=1, le=1000,
                                     description="Members per page (and per transaction) of a segment broadcast round")
    broadcast_lease_seconds: float = Field(120.0, gt=0,
                                           description="Lease of a runner on a broadcast round, renewed every page")
    broadcast_reach_concurrency: int = Field(16, ge=1, le=200,
                                             description="Subscribe messages of a round sent through reach at once")
    view_batch_rows: int = Field(500, ge=1, le=5000, description="Views written in one multi-row INSERT at most")
    view_batch_delay_seconds: float = Field(
        0.005, ge=0, le=60, description="How long a batch of views waits to fill before it is written")
    view_queue_size: int = Field(
        10_000, ge=1, le=1_000_000, description="Views accepted and not yet written at most (then ViewPost waits)")
    view_ack: Literal["commit", "accept"] = Field(
        "commit", description="ViewPost answers once its batch committed (commit) or once it is queued (accept)")
    view_cache_seconds: float = Field(
        30.0, ge=0, le=3600, description="How long ViewPost serves a published post (and a share) from memory")
