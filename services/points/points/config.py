"""Settings of the points service (``POINTS_*``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from mallkit.settings import ServiceSettings


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
