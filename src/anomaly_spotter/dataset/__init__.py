"""One category on disk: its MVTec AD layout, its images and masks, and the processed format.

What lives here: checking and listing a category folder (:mod:`.layout`), decoding images and
masks with errors that name the file (:mod:`.images`), LOCO's per-region ground truth
(:mod:`.regions`), the ``preprocess`` stage (:mod:`.preprocessing`) and the processed-data format
every later stage reads (:mod:`.processed`).

It may import only the top-level shared modules (``config``, ``errors``, ``fileio``).
"""
