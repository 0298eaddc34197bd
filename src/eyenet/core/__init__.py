"""The model, with no service around it: data and features, the detector families behind one
contract, calibration, the ensemble, alarms, stream scoring, NAB evaluation and presets.

Imports nothing from the layers above (lifecycle, monitoring, serving, cli) and needs no Ray.
"""
