"""Stage ``fetch``: bring one category into ``data/raw/<category>`` from the configured source.

Sources (``data.source``):

* ``synthetic`` – generate the built-in dataset (:mod:`anomaly_spotter.synthetic_dataset`);
* ``folder`` – copy ``<data.root>/<category>`` after checking its layout and images
  (:mod:`anomaly_spotter.local_folder`);
* ``mvtec`` – download (or read ``data.archive``) and extract MVTec AD (:mod:`anomaly_spotter.mvtec`);
* ``mvtec_loco``, ``mvtec_3d``, ``mvtec_ad2``, ``visa`` – the whole dataset's archive is downloaded
  once into ``data.cache_dir`` (or read from ``data.archive``) and the category is read from its
  native layout (:mod:`anomaly_spotter.archives` and one module per dataset).

Every source writes the category atomically: a failed fetch leaves the previous folder (or
none) in place. DVC then records the folder's content hash in ``dvc.lock``.

Example:
    >>> fetch_category("weave", "data/raw/weave", load_params().data)  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from anomaly_spotter.config import DataConfig
from anomaly_spotter.errors import UserError

if TYPE_CHECKING:
    from anomaly_spotter.archives import Dataset

# data.source values read from a whole-dataset archive by anomaly_spotter.archives.
ARCHIVE_SOURCES = ("mvtec_loco", "mvtec_3d", "mvtec_ad2", "visa")


def archive_dataset(source: str) -> Dataset:
    """The :class:`~anomaly_spotter.archives.Dataset` of an archive source (imported only when used)."""
    if source == "mvtec_loco":
        from anomaly_spotter.mvtec_loco import DATASET
    elif source == "mvtec_3d":
        from anomaly_spotter.mvtec_3d import DATASET
    elif source == "mvtec_ad2":
        from anomaly_spotter.mvtec_ad2 import DATASET
    elif source == "visa":
        from anomaly_spotter.visa import DATASET
    else:
        raise UserError(f"data.source: {source!r} is not one of {', '.join(ARCHIVE_SOURCES)}")
    return DATASET


def fetch_category(category: str, dest: str | Path, config: DataConfig) -> None:
    """Write ``category`` to ``dest`` from ``config.source``."""
    dest = Path(dest)
    if config.source == "synthetic":
        from anomaly_spotter.synthetic_dataset import generate_category  # category names: checked by config

        generate_category(category, dest, config.synthetic)
    elif config.source == "folder":
        from anomaly_spotter.local_folder import import_folder_category

        if not config.root:
            raise UserError("data.source is 'folder' but data.root is empty; set it to the folder holding <category>/ sub-folders")
        root = Path(config.root) / category
        import_folder_category(root, dest, min_train_images=config.min_train_images, masks=config.masks)
    elif config.source == "mvtec":
        from anomaly_spotter.mvtec import fetch_mvtec_category

        fetch_mvtec_category(
            category,
            dest,
            mirror=config.mirror or None,
            archive=Path(config.archive) if config.archive else None,
            cache_dir=Path(config.cache_dir),
            min_train_images=config.min_train_images,
        )
    elif config.source in ARCHIVE_SOURCES:
        from anomaly_spotter.archives import fetch_dataset_category

        fetch_dataset_category(
            archive_dataset(config.source),
            category,
            dest,
            archive=Path(config.archive) if config.archive else None,
            mirror=config.mirror or None,
            cache_dir=Path(config.cache_dir),
            min_train_images=config.min_train_images,
        )
    else:  # config validation makes this unreachable
        raise UserError(f"data.source: unknown source {config.source!r}")
