"""What the served models do in production: drift against the training reference, operator
feedback, Prometheus metrics, and the app-wide monitor that merges every replica's view.

Builds on :mod:`eyenet.core` and :mod:`eyenet.lifecycle`.
"""
