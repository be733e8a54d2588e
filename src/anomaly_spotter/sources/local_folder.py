"""Importing a category from a local folder in MVTec AD layout (``data.source: folder``).

The folder is validated first (every problem listed at once, see :mod:`anomaly_spotter.dataset.layout`),
then its images and masks are copied byte for byte: no re-encoding, so a PNG, JPEG, BMP or
TIFF keeps its exact bytes and DVC records the same hashes as the source. Hidden files and
OS clutter are not copied. The copy is built beside ``dest`` and swapped in at the end, so a
failure or Ctrl-C never leaves a half-copied category.

Example:
    >>> import_folder_category(  # doctest: +SKIP
    ...     Path("/data/my_parts/bracket"), Path("data/raw/bracket"), min_train_images=4
    ... )
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from anomaly_spotter.dataset.layout import list_category, validate_category
from anomaly_spotter.errors import UserError
from anomaly_spotter.fileio import staging_dir
from anomaly_spotter.sources.source import Source

if TYPE_CHECKING:
    from anomaly_spotter.config import DataConfig


def import_folder_category(
    source_dir: str | Path, dest: str | Path, *, min_train_images: int, masks: str = "pixel"
) -> None:
    """Validate ``source_dir`` and copy its ``train/``, ``test/`` and ``ground_truth/`` images to ``dest``.

    ``masks`` is ``data.masks`` (``none``: image labels only, no ``ground_truth/``; see
    :mod:`anomaly_spotter.dataset.layout`).

    Raises :class:`~anomaly_spotter.errors.DataError` listing every problem of the source
    (``dest`` is then left as it was).
    """
    source_dir, dest = Path(source_dir), Path(dest)
    validate_category(source_dir, min_train_images=min_train_images, masks=masks)
    listing = list_category(source_dir, masks=masks)
    with staging_dir(dest) as staging:
        for path in listing.files():
            target = staging / path.relative_to(source_dir)
            target.parent.mkdir(parents=True, exist_ok=True)
            # copyfile, not copy2: only the bytes matter to DVC, and copying the source's
            # permissions could make the output read-only.
            shutil.copyfile(path, target)


def _fetch(category: str, dest: Path, config: DataConfig) -> None:
    if not config.root:
        raise UserError(
            "data.source is 'folder' but data.root is empty; set it to the folder holding <category>/ sub-folders"
        )
    import_folder_category(
        Path(config.root) / category, dest, min_train_images=config.min_train_images, masks=config.masks
    )


SOURCE = Source("folder", None, _fetch)
