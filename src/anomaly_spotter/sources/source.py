"""What every data source declares: its ``data.source`` name, its categories and how to fetch one.

Each dataset module ends with ``SOURCE = Source(...)``; :data:`anomaly_spotter.sources.fetch.SOURCES`
collects them, so a source's facts (name, category list, fetch function) are written once, in
the module that knows the dataset.

Example:
    >>> Source("demo", ("a", "b"), fetch=lambda category, dest, config: None).categories
    ('a', 'b')
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from anomaly_spotter.config import DataConfig


@dataclass(frozen=True)
class Source:
    """One ``data.source``."""

    name: str
    categories: tuple[str, ...] | None  # None: whatever sub-folders the user has (checked when fetching)
    fetch: Callable[[str, Path, DataConfig], None]  # (category, dest, params.data) -> dest in MVTec AD layout
