"""Typed settings of the monitoring layer (pydantic): the app-wide monitor."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class MonitorSettings(BaseModel):
    """The app-wide monitor: drift windows, feedback, merged metrics (see eyenet.monitoring.monitor)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="feed drift, alarm-rate and retraining data from the serving path")
    drift_window: int = Field(1000, ge=10, description="recent points per model and feature the drift tests use")
    drift_min_points: int = Field(200, ge=10, description="fewer points than this: drift not ready")
    drift_thresholds: dict[str, float] = Field(default_factory=dict,
                                               description="eyenet.monitoring.drift.Thresholds fields (psi 0.3 by default)")
    feedback_path: str | None = Field(None, description="append-only feedback log (default .eyenet/feedback.jsonl)")
    recent_points: int = Field(4096, ge=400, description="points kept per live series for retraining")
    push_s: float = Field(1.0, gt=0, description="how often a router replica sends what it scored")
