"""Using a trained model outside the pipeline: the ONNX export and ``predict`` on new images.

What lives here: the ``export`` stage (:mod:`.export`: ONNX graph checked against PyTorch) and
``predict`` (:mod:`.predict`: verdicts, overlays, JSONL; ``anomaly-spotter predict``).

It may import ``evaluation`` (thresholds), ``detectors``, ``dataset``, ``scoring`` and the
top-level shared modules, never ``training``.
"""
