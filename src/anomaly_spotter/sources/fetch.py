"""Stage ``fetch``: bring one category into ``data/raw/<category>`` from the configured source.

:data:`SOURCES` is the one registry of ``data.source`` values, built from the module that
defines each dataset (its ``SOURCE``):

* ``synthetic`` – generate the built-in dataset (:mod:`anomaly_spotter.sources.synthetic`);
* ``folder`` – copy ``<data.root>/<category>`` after checking its layout and images
  (:mod:`anomaly_spotter.sources.local_folder`);
* ``mvtec`` – download (or read ``data.archive``) and extract MVTec AD (:mod:`anomaly_spotter.sources.mvtec`);
* ``mvtec_loco``, ``mvtec_3d``, ``mvtec_ad2``, ``visa`` – the whole dataset's archive is downloaded
  once into ``data.cache_dir`` (or read from ``data.archive``) and the category is read from its
  native layout (:mod:`anomaly_spotter.sources.archives` and one module per dataset).

Every source writes the category atomically: a failed fetch leaves the previous folder (or
none) in place. DVC then records the folder's content hash in ``dvc.lock``.

Example:
    >>> sorted(SOURCES)
    ['folder', 'mvtec', 'mvtec_3d', 'mvtec_ad2', 'mvtec_loco', 'synthetic', 'visa']
    >>> fetch_category("weave", "data/raw/weave", load_params().data)  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from anomaly_spotter.errors import ConfigError, did_you_mean
from anomaly_spotter.sources import local_folder, mvtec, mvtec_3d, mvtec_ad2, mvtec_loco, synthetic, visa
from anomaly_spotter.sources.source import Source

if TYPE_CHECKING:
    from anomaly_spotter.config import DataConfig
    from anomaly_spotter.sources.archives import Dataset

SOURCES: dict[str, Source] = {
    source.name: source
    for source in (
        synthetic.SOURCE,
        local_folder.SOURCE,
        mvtec.SOURCE,
        mvtec_loco.SOURCE,
        mvtec_3d.SOURCE,
        mvtec_ad2.SOURCE,
        visa.SOURCE,
    )
}

# The benchmarks published as one whole-dataset archive, read by anomaly_spotter.sources.archives.
ARCHIVE_DATASETS: dict[str, Dataset] = {
    module.DATASET.source: module.DATASET for module in (mvtec_loco, mvtec_3d, mvtec_ad2, visa)
}


def data_problems(config: DataConfig) -> list[str]:
    """What is wrong with ``data.source`` and ``data.categories`` for the registered sources (empty: nothing)."""
    source = SOURCES.get(config.source)
    if source is None:
        return [
            f"data.source: {config.source!r} is not one of "
            f"{', '.join(SOURCES)}{did_you_mean(config.source, tuple(SOURCES))}"
        ]
    known = source.categories
    if known is None:
        return []  # the folder source: its categories are checked when fetching
    return [
        (
            f"data.categories: {name!r} is not a {config.source} category{did_you_mean(name, known)}; "
            f"valid: {', '.join(known)}"
        )
        for name in config.categories
        if name not in known
    ]


def check_data(config: DataConfig, where: str = "params.yaml") -> None:
    """Raise :class:`~anomaly_spotter.errors.ConfigError` listing :func:`data_problems`, if any."""
    problems = data_problems(config)
    if problems:
        raise ConfigError(problems, where)


def fetch_category(category: str, dest: str | Path, config: DataConfig) -> None:
    """Write ``category`` to ``dest`` from ``config.source``."""
    check_data(config)
    SOURCES[config.source].fetch(category, Path(dest), config)
