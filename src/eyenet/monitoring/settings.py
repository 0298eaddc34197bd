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
    max_series: int = Field(10_000, ge=1, description="live series kept (recent values, scored points), all models; "
                            "the least recently pushed dropped beyond this (counted)")
    max_recent_points: int = Field(2_000_000, ge=1, description="recent values kept in all, all series; the least "
                                   "recently pushed series dropped beyond this (counted)")
    history_points: int = Field(10_000, ge=100, description="scored points kept per live series for the console "
                                "(time, value, score, alarm, severity, expected value and band, member scores)")
    max_history_points: int = Field(1_000_000, ge=100, description="those points in all, all series; the least "
                                    "recently pushed series dropped beyond this (counted)")
    recent_alerts: int = Field(1000, ge=1, description="alert transitions (fired, resolved) kept for the console")
    max_models: int = Field(1000, ge=1, description="models watched (drift windows); the least recently pushed "
                            "dropped beyond this (counted)")
    scored_ranges: int = Field(64, ge=1, description="runs of scored stream positions kept per series (feedback "
                               "by index may name only these)")
    scored_timestamps: int = Field(1024, ge=1, description="timestamps of scored points kept per series (feedback "
                                   "by timestamp may name only these)")
    feedback_wait_s: float = Field(3.0, ge=0, description="how long feedback naming points not seen scored yet waits "
                                   "for the routers' next push before it is refused")
