"""A model's life in the MLflow registry: training and tuning objectives, the registry, the audit
log, held-out data, the deployment gate, promotion and rollback, retraining.

Builds on :mod:`eyenet.core` only.
"""
