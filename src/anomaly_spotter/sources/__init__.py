"""Where raw images come from: one module per data source, each ending with its ``SOURCE``.

What lives here: the ``fetch`` stage's registry and entry point (:mod:`.fetch`), downloads and
archives (:mod:`.download`, :mod:`.archives`), one module per dataset (MVTec AD, LOCO, 3D-AD,
AD 2, VisA), the local folder and the built-in synthetic set. Every source writes one category
in MVTec AD layout to ``data/raw/<category>``.

It may import ``dataset`` (layout checks, image decoding) and the top-level shared modules,
never ``detectors``, ``training``, ``evaluation`` or ``deploy``.
"""
