"""EyeNet: anomaly detection for operational metrics, served on Ray."""

__version__ = "0.1.0"
