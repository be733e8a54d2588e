"""Anomaly Spotter: reproducible anomaly-detection experiments for MVTec AD-style data.

The package is the library behind the DVC stages in ``stages/``; every stage script only
parses its arguments, loads ``params.yaml`` through :mod:`anomaly_spotter.config` and calls
into the modules here.
"""

__version__ = "0.1.0"
