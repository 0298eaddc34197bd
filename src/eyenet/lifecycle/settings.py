"""Typed settings of the lifecycle layer (pydantic): automated retraining."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class RetrainSettings(BaseModel):
    """Automated retraining by the model controller (see eyenet.lifecycle.retrain)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="retrain a served model on drift, poor precision or a schedule")
    auto_promote: bool = Field(False, description="put a retrained model through the gate and promote it if it passes; false: it waits as the challenger for an operator (feedback and live data can be steered by clients)")
    features: list[str] = Field(default_factory=lambda: ["value"],
                                description="drift of which features triggers it (value, calibrated, score)")
    drift_for_s: float = Field(300.0, ge=0, description="how long drift must persist before retraining")
    precision_below: float | None = Field(0.5, ge=0, le=1, description="retrain when operator-feedback precision "
                                          "falls below this (None: never)")
    every_s: float | None = Field(None, gt=0, description="also retrain on this schedule (None: never)")
    cooldown_s: float = Field(3600.0, ge=0, description="least time between two retrainings of a model")
    rows: int = Field(1000, ge=400, description="recent points of the busiest live series to learn from "
                      "(60 % to fit, 40 % held out for the gate)")
    check_s: float = Field(5.0, gt=0, description="how often the triggers are checked")
    num_cpus: float = Field(1.0, gt=0, description="CPUs of the Ray task that trains")
    root: str | None = Field(None, description="where the recent data is written (default .eyenet/retrain)")
