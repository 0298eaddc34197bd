"""Ray Train wiring: the TorchTrainer backend, Ray tasks across series, Ray Data input.

Installed as ``eyenet.train``; the logic it runs lives in :mod:`eyenet.lifecycle.training`.
"""
