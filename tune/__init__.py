"""Ray Tune wiring: search spaces and the tuner. Installed as ``eyenet.tune``;
the objective and the space format live in :mod:`eyenet.lifecycle.tuning`."""
