"""Judging a fitted detector: metrics, thresholds, the ``evaluate`` and ``report`` stages, figures.

What lives here: the MVTec protocol's metrics (:mod:`.metrics`), thresholds from normal
validation scores (:mod:`.thresholds`), the ``evaluate`` stage (:mod:`.evaluate`), its figures
(:mod:`.visualize`), the ``report`` stage (:mod:`.report`), the README's results table
(:mod:`.readme_table`) and the offline ``dvc plots`` page (:mod:`.plots_template`).

It may import ``detectors``, ``dataset``, ``scoring`` and the top-level shared modules, never
``training`` (evaluating must not load the training stack) nor ``deploy``.
"""
